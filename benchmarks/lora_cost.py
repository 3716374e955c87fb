"""LoRA cost: a denoising step with an adapter vs without, and switching between two adapters; same run.

On the built-in model (``--builtin``, shapes by default) on the CPU, through ``PipelineEngine``: two
random adapters in CogKit's layout and recipe (attention projections, alpha = rank / 2; made from
the model's layer shapes by ``cogserve.engine.lora_make.random_adapter``), both loaded first.

1. Step time: --rounds rounds, each one image without an adapter and one with adapter A, in turn
   (order reversed every other round, so drift on a shared machine hits both). s/step is the
   pipeline call's time (the engine's, which excludes loading) over its steps; ratio = with/without.
2. Switching: images alternating A, B, A, ... vs A, A, A, ...: the extra time per image, and the
   ``ResidentAdapters.activate`` call alone (``set_adapters`` with both resident). A first load
   (read + ``load_lora_adapter``) is timed from the registry's load events.

    python benchmarks/lora_cost.py [--builtin shapes] [--rank 8] [--steps 4] [--size 256] [--rounds 6]

Prints figures and ratios; never fails on a timing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--builtin", default="shapes", choices=["shapes", "tiny-random"])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    import torch

    from cogserve.engine import GenerationParams, generate_one
    from cogserve.engine.lora import LoraRegistry
    from cogserve.engine.lora_make import random_adapter
    from cogserve.engine.runner import PipelineEngine
    from cogserve.settings import ModelSettings

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="lora-cost-"))
    loras = work / "loras"
    loras.mkdir()
    settings = ModelSettings(builtin=args.builtin, builtin_dir=work / "models", device="cpu")
    engine = PipelineEngine(settings, work / "models")
    registry = LoraRegistry(loras, max_loaded=8)
    loads: list[float] = []
    registry.listener = lambda event, name, seconds: loads.append(seconds) if event == "load" else None
    engine.attach_loras(registry)
    engine.load()
    shapes = engine._shapes
    for name, seed in (("a", 1), ("b", 2)):
        random_adapter(shapes, loras / name, rank=args.rank, seed=seed, std=0.02)
    info = registry.get("a")
    assert info is not None, registry.refused()
    print(
        f"model {engine.info.name} on cpu ({args.threads} thread(s)), {args.size}x{args.size}, "
        f"{args.steps} steps; "
        f"adapters rank {args.rank}, {len(info.modules)} layers ({', '.join(info.targets)}), "
        f"{info.size_bytes / 1024:.0f} KiB each"
    )

    def image(loras: tuple[tuple[str, float], ...], seed: int = 0) -> float:
        params = GenerationParams("a red circle", args.size, args.size, args.steps, 2.0, seed, loras)
        return generate_one(engine, params).elapsed_s

    a, b = (("a", 1.0),), (("b", 1.0),)
    for loras_set in ((), a, b, ()):  # warm-up, and both adapters loaded
        image(loras_set)
    first_loads = list(loads)

    without: list[float] = []
    with_a: list[float] = []
    for round_ in range(args.rounds):
        order = [((), without), (a, with_a)]
        for loras_set, times in order if round_ % 2 == 0 else reversed(order):
            times.append(image(loras_set) / args.steps)
    base, adapted = statistics.median(without), statistics.median(with_a)
    print(
        f"\n1. step time   without: {base * 1000:.1f} ms   with A: {adapted * 1000:.1f} ms   "
        f"ratio {adapted / base:.3f}"
    )

    same: list[float] = []
    alternating: list[float] = []
    for round_ in range(args.rounds):
        blocks = [([a, a, a, a], same), ([a, b, a, b], alternating)]
        for sets, times in blocks if round_ % 2 == 0 else reversed(blocks):
            image(sets[-1])  # start from the block's last set, so its first image is a switch too (or not)
            started = time.perf_counter()
            for loras_set in sets:
                image(loras_set)
            times.append((time.perf_counter() - started) / len(sets))
    steady, switching = statistics.median(same), statistics.median(alternating)

    adapters = engine._adapters
    assert adapters is not None and engine._pipe is not None
    transformer = engine._pipe.transformer
    switches = []
    for _ in range(20):
        started = time.perf_counter()
        adapters.activate(transformer, b)
        adapters.activate(transformer, a)
        switches.append((time.perf_counter() - started) / 2)
    off = []
    for _ in range(20):
        started = time.perf_counter()
        adapters.activate(transformer, ())
        off.append(time.perf_counter() - started)
    print(
        f"2. switching   A,A,A,A: {steady * 1000:.1f} ms/image   A,B,A,B: {switching * 1000:.1f} ms/image   "
        f"ratio {switching / steady:.3f} ({(switching - steady) * 1000:+.1f} ms/image)"
    )
    print(
        f"   set_adapters with both resident: {statistics.median(switches) * 1000:.2f} ms; LoRA off: "
        f"{statistics.median(off) * 1000:.2f} ms; first load: "
        + ", ".join(f"{seconds * 1000:.0f} ms" for seconds in first_loads)
        + f" ({statistics.median(first_loads) / (base * args.steps):.2f}x an image's pipeline time)"
    )


if __name__ == "__main__":
    main()
