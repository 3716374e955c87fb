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
            "--text-steps",
            "3",
            "--steps",
            "4",
            "--bank",  # the --quick run's bank size, so its latent banks are reused
            "64",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "transformer: resuming at step 3 of 4" in again.stderr
    assert json.loads((out / "cogserve.json").read_text())["native_pixels"] > 0

    # A time budget: the stage checkpoints where it stands and stops, and the next run goes on.
    budget = subprocess.run(
        [
            *command[:3],
            *("--work", str(work), "--out", str(out)),
            *("--vae-steps", "3", "--text-steps", "3", "--bank", "64", "--steps", "100", "--minutes", "0"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert budget.returncode == 0, budget.stderr[-3000:]
    assert "transformer: out of time at step 5" in budget.stderr

    from diffusers import CogView4Pipeline

    pipe = CogView4Pipeline.from_pretrained(out)
    image = pipe("a red circle", width=256, height=256, num_inference_steps=2).images[0]
    assert image.size == (256, 256)
