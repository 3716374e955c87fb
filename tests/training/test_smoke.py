"""The training command runs end to end (a few steps of each stage) and exports a loadable model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_training_run_exports_a_pipeline_that_resumes_and_draws(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "model"
    command = [sys.executable, "-m", "training.train", "--quick", "--work", str(work), "--out", str(out)]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert {p.name for p in work.iterdir()} >= {"vae.pt", "text.pt", "transformer.pt", "tokenizer"}
    # --quick moves the switch to the drawn sizes to step 2, so its last step runs that way.
    assert "transformer: from step 2 on, at the drawn sizes" in first.stderr

    # A second run with more steps resumes each stage where it stopped instead of starting over.
    again = subprocess.run(
        [
            *command[:3],
            "--work",
            str(work),
            "--out",
            str(out),
            "--vae-steps",
            "3",
            "--decoder-steps",
            "3",
            "--text-steps",
            "4",
            "--steps",
            "4",
            "--bank",  # the --quick run's bank size, so its latent banks are reused
            "64",
            "--draw-side",  # a model that draws larger says so to the engine
            "224",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "transformer: resuming at step 3 of 4" in again.stderr
    # Text steps after a transformer has learnt the encoder's states keep those states close.
    assert "text: a transformer reads these states" in again.stderr
    serving = json.loads((out / "cogserve.json").read_text())
    assert serving["native_pixels"] == 224 * 224 and serving["prompt_tokens"] > 0  # how the engine serves it

    # A spent time budget: a stage with steps left stays where it stands (tests/training/test_stages.py
    # checks a budget that runs out mid-stage).
    budget = subprocess.run(
        [
            *command[:3],
            *("--work", str(work), "--out", str(out), "--vae-steps", "3", "--decoder-steps", "3"),
            *("--text-steps", "4", "--bank", "64", "--steps", "100", "--minutes", "0"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert budget.returncode == 0, budget.stderr[-3000:]
    assert "transformer: no time left; stays at step 4" in budget.stderr

    from diffusers import CogView4Pipeline

    pipe = CogView4Pipeline.from_pretrained(out)
    image = pipe("a red circle", width=256, height=256, num_inference_steps=2).images[0]
    assert image.size == (256, 256)


@pytest.mark.slow
def test_quick_adapter_training_run_exports_an_adapter_the_shapes_model_serves(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from cogserve.engine.builtin import SHAPES_PATH
    from cogserve.engine.lora import inspect_adapter, linear_shapes
    from cogserve.engine.lora_make import load_transformer

    out = tmp_path / "night"
    command = [sys.executable, "-m", "training.adapter", "--quick", "--work", str(tmp_path)]
    run = subprocess.run([*command, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    info = inspect_adapter("night", out, linear_shapes(load_transformer(SHAPES_PATH)), 256)
    assert info.format == "peft" and info.rank == 16
    # Its checkpoint is named after the base weights, so a retrained base starts a fresh adapter.
    from training.adapter import fingerprint

    base = fingerprint(SHAPES_PATH / "transformer" / "diffusion_pytorch_model.safetensors")
    assert (tmp_path / f"night-{base}.pt").is_file()
