"""LoRA adapters on the real tiny CogView4 pipeline: made with peft, loaded by diffusers' PEFT backend.

Pictures are compared as pixel arrays; one image alone is deterministic, so "no leak" is equality.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from cogserve.engine.adapters import AdapterUnavailable
from cogserve.engine.builtin import SHAPES_LORAS
from cogserve.engine.lora import LoraRegistry, inspect_adapter
from cogserve.engine.runner import PipelineEngine
from cogserve.errors import ConfigError
from cogserve.settings import LoraSettings, ModelSettings, Settings
from tests.lora_helpers import differ, draw, make

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def adapters(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ink and wash in CogKit's PEFT layout; ink again in diffusers' layout, as a folder and a file."""
    root = tmp_path_factory.mktemp("adapters")
    folder = root / "loras"
    make(models_dir, folder / "ink", seed=1)
    make(models_dir, folder / "wash", seed=2, rank=8)
    make(models_dir, folder / "ink_diffusers", seed=1, layout="diffusers")
    single = make(models_dir, root / "single", seed=1, layout="diffusers")
    shutil.copy(single / "pytorch_lora_weights.safetensors", folder / "ink_file.safetensors")
    return folder


@pytest.fixture(scope="module")
def engine(models_dir: Path, adapters: Path) -> PipelineEngine:
    engine = PipelineEngine(ModelSettings(builtin_dir=models_dir, builtin="tiny-random"), models_dir)
    engine.attach_loras(LoraRegistry(adapters, max_loaded=8))
    engine.load()
    return engine


def test_a_cogkit_layout_adapter_is_found_checked_and_described(
    adapters: Path, engine: PipelineEngine
) -> None:
    config = json.loads((adapters / "ink" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 2
    assert sorted(config["target_modules"]) == ["to_k", "to_out.0", "to_q", "to_v"]
    registry = LoraRegistry(adapters)
    registry.bind(engine._shapes)
    ink = registry.get("ink")
    assert ink is not None and (ink.format, ink.rank, ink.alpha) == ("peft", 4, 2.0)
    assert ink.targets == ("attn1.to_k", "attn1.to_out.0", "attn1.to_q", "attn1.to_v")
    assert ink.size_bytes > 0
    assert registry.names() == ["ink", "ink_diffusers", "ink_file", "wash"]
    assert registry.refused() == {}


def test_an_adapter_changes_the_picture_and_leaves_nothing_behind(engine: PipelineEngine) -> None:
    base = draw(engine)
    inked = draw(engine, (("ink", 1.0),))
    assert differ(base, inked) > 20
    assert np.array_equal(draw(engine), base)  # LoRA off again: the base model exactly
    assert np.array_equal(draw(engine, (("ink", 1.0),)), inked)
    assert np.array_equal(draw(engine, (("ink", 0.0),)), base)  # scale 0 adds nothing
    assert differ(draw(engine, (("ink", 0.5),)), inked) > 0


def test_both_diffusers_layouts_give_the_peft_adapters_picture(engine: PipelineEngine) -> None:
    inked = draw(engine, (("ink", 1.0),))
    assert np.array_equal(draw(engine, (("ink_diffusers", 1.0),)), inked)
    assert np.array_equal(draw(engine, (("ink_file", 1.0),)), inked)


def test_adapters_combine_and_each_set_is_exact_whatever_came_before(engine: PipelineEngine) -> None:
    both = draw(engine, (("ink", 1.0), ("wash", 0.8)))
    wash = draw(engine, (("wash", 0.8),))
    assert differ(both, wash) > 0 and differ(both, draw(engine, (("ink", 1.0),))) > 0
    # The same set, reached from other states, gives the same picture.
    draw(engine, (("ink", 2.0),))
    assert np.array_equal(draw(engine, (("ink", 1.0), ("wash", 0.8))), both)
    assert np.array_equal(draw(engine, (("wash", 0.8),)), wash)


def test_least_recently_used_adapters_are_evicted_and_reload_the_same(
    models_dir: Path, adapters: Path, engine: PipelineEngine
) -> None:
    events: list[tuple[str, str]] = []
    registry = LoraRegistry(adapters, max_loaded=1)
    registry.listener = lambda event, name, seconds: events.append((event, name))
    engine.attach_loras(registry)
    try:
        inked = draw(engine, (("ink", 1.0),))
        draw(engine, (("wash", 1.0),))
        assert engine.loaded_loras == ["wash"]
        assert np.array_equal(draw(engine, (("ink", 1.0),)), inked)
        assert events == [
            ("load", "ink"),
            ("evict", "ink"),
            ("load", "wash"),
            ("evict", "wash"),
            ("load", "ink"),
        ]
        # One call needing more than the limit still gets all its adapters.
        draw(engine, (("ink", 1.0), ("wash", 1.0)))
        assert sorted(engine.loaded_loras) == ["ink", "wash"]
    finally:
        engine.attach_loras(LoraRegistry(adapters, max_loaded=8))


def test_new_changed_and_removed_adapters_take_effect_without_a_restart(
    models_dir: Path, adapters: Path, engine: PipelineEngine, tmp_path: Path
) -> None:
    folder = tmp_path / "live"
    folder.mkdir()
    registry = LoraRegistry(folder)
    engine.attach_loras(registry)
    try:
        assert registry.names() == []
        shutil.copytree(adapters / "ink", folder / "live")
        assert registry.names() == ["live"]
        first = draw(engine, (("live", 1.0),))
        # Replaced in place by another adapter: the next call loads the new weights.
        shutil.rmtree(folder / "live")
        make(models_dir, folder / "live", seed=9)
        assert differ(draw(engine, (("live", 1.0),)), first) > 0
        shutil.rmtree(folder / "live")
        assert registry.names() == []
        with pytest.raises(AdapterUnavailable, match="no longer available"):
            draw(engine, (("live", 1.0),))
    finally:
        engine.attach_loras(LoraRegistry(adapters, max_loaded=8))


def _write_peft(folder: Path, tensors: dict[str, object], config: dict[str, object] | None) -> Path:
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))  # type: ignore[arg-type]
    if config is not None:
        (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def test_bad_adapters_are_refused_with_a_reason_and_skipped(
    adapters: Path, engine: PipelineEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    folder = tmp_path / "mixed"
    shutil.copytree(adapters / "ink", folder / "good")
    good = load_file(str(adapters / "ink" / "adapter_model.safetensors"))
    config = json.loads((adapters / "ink" / "adapter_config.json").read_text())
    key_a = "base_model.model.transformer_blocks.0.attn1.to_q.lora_A.weight"
    key_b = key_a.replace("lora_A", "lora_B")
    in_features = good[key_a].shape[1]
    # Made for a wider model: the A matrix reads more features than the served layer has.
    wide = {**good, key_a: torch.zeros(4, in_features * 2)}
    _write_peft(folder / "wrong_shapes", wide, config)
    strange = {
        key_a.replace("to_q", "to_nowhere"): good[key_a],
        key_b.replace("to_q", "to_nowhere"): good[key_b],
    }
    _write_peft(folder / "wrong_targets", strange, config)
    _write_peft(folder / "no_config", good, None)
    shutil.copytree(adapters / "ink", folder / "truncated")
    weights = folder / "truncated" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _write_peft(folder / "rank_mismatch", good, {**config, "r": 16})
    _write_peft(folder / "dora", good, {**config, "use_dora": True})
    (folder / "not.an.identifier").mkdir()
    shutil.copy(
        adapters / "ink_file.safetensors", folder / "not.an.identifier" / "pytorch_lora_weights.safetensors"
    )

    registry = LoraRegistry(folder, max_rank=256)
    registry.bind(engine._shapes)
    assert registry.names() == ["good"]
    refused = registry.refused()
    wrong = f"adapter is {in_features * 2}->{in_features} but the served layer is {in_features}->"
    assert wrong in refused["wrong_shapes"]
    assert "to_nowhere is not a linear layer" in refused["wrong_targets"]
    assert "adapter_config.json is missing" in refused["no_config"]
    assert "not a readable safetensors file" in refused["truncated"]
    assert "r=16" in refused["rank_mismatch"]
    assert "use_dora" in refused["dora"]
    assert "not an identifier" in refused["not.an.identifier"]
    assert "skipped" in caplog.text
    # A rank limit refuses large adapters.
    small = LoraRegistry(folder, max_rank=2)
    assert small.names() == [] and "above the limit of 2" in small.refused()["good"]
    # Checked once: a second scan of unchanged files logs nothing new.
    caplog.clear()
    registry.names()
    assert "skipped" not in caplog.text


def test_an_adapter_folder_needs_peft_and_must_exist(tmp_path: Path) -> None:
    assert LoraRegistry.from_settings(Settings()) is None
    with pytest.raises(ConfigError, match="does not exist"):
        LoraRegistry.from_settings(Settings(lora=LoraSettings(dir=tmp_path / "missing")))
    registry = LoraRegistry.from_settings(Settings(lora=LoraSettings(dir=tmp_path, max_loaded=3)))
    assert registry is not None and registry.max_loaded == 3 and registry.shipped is None


def test_the_shapes_model_brings_its_own_adapters_and_the_operators_win_a_name(
    adapters: Path, tmp_path: Path
) -> None:
    shapes = ModelSettings(builtin="shapes")
    own = LoraRegistry.from_settings(Settings(model=shapes))
    assert own is not None and own.directory is None and own.shipped == SHAPES_LORAS
    assert own.names() == ["night"]

    folder = tmp_path / "mine"
    shutil.copytree(adapters / "ink", folder / "night")
    shutil.copytree(adapters / "ink", folder / "ink")
    both = LoraRegistry.from_settings(Settings(model=shapes, lora=LoraSettings(dir=folder)))
    assert both is not None and both.names() == ["ink", "night"]
    night = both.get("night")
    assert night is not None and night.weights.is_relative_to(folder)


def test_files_alone_are_checked_where_no_model_is_loaded(adapters: Path) -> None:
    info = inspect_adapter("ink", adapters / "ink", None, 256)
    assert info.rank == 4 and len(info.modules) == 8


def test_the_scheduler_batches_by_adapter_set_and_a_rare_adapter_waits_only_its_turn(
    engine: PipelineEngine,
) -> None:
    import asyncio
    import threading
    from collections.abc import Sequence

    from cogserve.engine import BatchItem, GenerationOutput, GenerationParams
    from cogserve.engine.scheduler import Scheduler
    from cogserve.settings import SchedulerSettings
    from tests.engine.test_scheduler import _until
    from tests.helpers import DelegatingEngine

    class Recorder(DelegatingEngine):
        def __init__(self) -> None:
            super().__init__(engine)
            self.calls: list[list[str]] = []
            self.gate = threading.Event()

        def generate_batch(self, items: Sequence[BatchItem]) -> list[GenerationOutput]:
            self.gate.wait(30)
            self.calls.append([item.params.prompt for item in items])
            return self.inner.generate_batch(items)

    recorder = Recorder()
    sets = {"i": (("ink", 1.0),), "h": (("ink", 0.5),), "w": (("wash", 1.0),), "n": ()}
    order = ["i1", "w1", "i2", "n1", "i3", "h1", "i4", "i5"]

    async def main() -> None:
        scheduler = Scheduler(
            recorder, SchedulerSettings(max_batch_size=3, max_batch_wait_ms=0), device="cpu"
        )
        scheduler.start()
        try:
            blocker = asyncio.create_task(
                scheduler.submit(GenerationParams("blocker", 256, 256, 2, 3.5, 0), "b")
            )
            await _until(lambda: scheduler.stats.running == 1)
            tasks = []
            for name in order:
                params = GenerationParams(name, 256, 256, 2, 3.5, 1, sets[name[0]])
                tasks.append(asyncio.create_task(scheduler.submit(params, name)))
                await asyncio.sleep(0.002)
            await _until(lambda: scheduler.stats.queued == len(order))
            recorder.gate.set()
            await asyncio.gather(blocker, *tasks)
        finally:
            await scheduler.stop()

    asyncio.run(main())
    # Same adapters and scales share a call; ink at 0.5 is another set; the oldest request goes next,
    # so wash, asked for once, runs second rather than after every ink request.
    assert recorder.calls == [["blocker"], ["i1", "i2", "i3"], ["w1"], ["n1"], ["h1"], ["i4", "i5"]]


def test_prefetched_weights_are_used_for_the_load(
    adapters: Path, engine: PipelineEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cogserve.engine.lora as lora_module

    registry = LoraRegistry(adapters)
    engine.attach_loras(registry)
    try:
        inked = draw(engine, (("ink", 1.0),))
        registry.prefetch(["ink", "wash"])  # ink is resident: only wash is read
        assert list(registry._staged) == ["wash"]

        def no_disk(info: object) -> None:
            raise AssertionError("read from disk at load time")

        monkeypatch.setattr(lora_module, "read_weights", no_disk)
        washed = draw(engine, (("wash", 1.0),))
        assert registry._staged == {} and differ(washed, inked) > 0
        monkeypatch.undo()
        assert np.array_equal(draw(engine, (("ink", 1.0),)), inked)
    finally:
        engine.attach_loras(LoraRegistry(adapters, max_loaded=8))
