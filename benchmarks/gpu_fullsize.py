"""Full-size CogView4 on one GPU: plain diffusers vs cogserve's engine, with random bf16 weights.

Builds the real CogView4-6B architecture (transformer 28 layers x 32 heads x 128, GLM-4-9B text
encoder, the 4-level VAE; configs from shared/reference/cogview4-model.md) straight on the GPU in bf16
with random weights, so no download is needed. The GLM tokenizer is not available offline: the
built-in tiny BPE tokenizer (``cogserve.engine.builtin.build_tokenizer``) stands in, with the full
151,552-entry embedding table kept, and the prompt is made ``--prompt-tokens`` tokens long.
The pipeline object is built in memory (nothing is saved: ~31 GB of weights) and shared:

1. plain diffusers: ``CogView4Pipeline.__call__`` directly (bf16, guidance 3.5, CPU generator);
2. cogserve's fastest mode that keeps outputs (``PipelineEngine`` + ``generate_one`` with compile on,
   applied by ``cogserve.engine.modes.place_and_apply``; the first call pays the compile);
3. optionally, 2 plus First Block Cache (``--fbc 0.1``): faster but it changes the images, and with
   random weights its skip decisions say little about real ones, so it is reported apart.

Each at --size (1024) with hd (50) and standard (20) steps: s/step (median time between step
callbacks, GPU synchronised), s/image, peak GPU memory (max_memory_allocated, weights included) and
speed-ups over plain. Then ``--sched-requests`` (8) concurrent 512x512 requests through
``cogserve.engine.scheduler.Scheduler`` (in-process asyncio) with max_batch_size 8 vs 1: images/s.

    python benchmarks/gpu_fullsize.py [--repeats 2] [--fbc 0.1]        # CUDA; ~10 min on an H100 (a guess)
    python benchmarks/gpu_fullsize.py --tiny --device cpu --no-compile  # smoke test of the code path

Targets on one H100 (cogserve mode): hd <= 9 s, standard <= 3.5 s, >= 1.5x plain. Never fails on a
timing; exits with a message when CUDA is absent (unless --device cpu).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HD_TARGET_S = 9.0
STANDARD_TARGET_S = 3.5
SPEEDUP_TARGET = 1.5
GUIDANCE = 3.5  # cogserve's default guidance_scale (the official demos' value)
MODEL_NAME = "cogview4-fullsize-random-bf16"
GLM_VOCAB = 151552  # GLM-4-9B's embedding table


@dataclass
class Run:
    """Timings of one (variant, steps) cell."""

    variant: str
    steps: int
    image_s: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    #: torch.compile graphs made during the timed calls (> 0: the figure includes compile time).
    compiled_in_timed: int = 0
    error: str | None = None

    @property
    def s_per_image(self) -> float:
        return statistics.median(self.image_s) if self.image_s else math.nan

    @property
    def s_per_step(self) -> float:
        return statistics.median(self.step_s) if self.step_s else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (only with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="shrink every network (smoke test, any device)")
    parser.add_argument("--size", type=int, default=1024, help="square side of the single-image runs")
    parser.add_argument("--hd-steps", type=int, default=50)
    parser.add_argument("--standard-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="timed images per (variant, steps)")
    parser.add_argument("--prompt-tokens", type=int, default=224, help="prompt length in tokenizer tokens")
    parser.add_argument("--no-compile", action="store_true", help="cogserve variant without torch.compile")
    parser.add_argument("--fbc", type=float, default=0.1, help="First Block Cache threshold; 0 skips it")
    parser.add_argument("--sched-requests", type=int, default=8, help="concurrent Scheduler requests")
    parser.add_argument("--sched-size", type=int, default=512)
    parser.add_argument("--sched-steps", type=int, help="steps of the Scheduler runs (default: standard)")
    args = parser.parse_args()

    import torch

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            "gpu_fullsize.py needs CUDA: torch.cuda.is_available() is False on this machine "
            f"(torch {torch.__version__}). Run it on a CUDA host (one H100 or bigger: the full-size "
            "model takes ~31 GB in bf16), or smoke-test the code path with --tiny --device cpu --no-compile."
        )
    if device == "cpu" and not args.tiny:
        raise SystemExit("the full-size model on a CPU would take hours: add --tiny for a smoke test")
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32  # bf16 on CPU is ~13x slower than fp32
    warnings.filterwarnings("ignore", message="invalid value encountered in cast")  # random weights
    from cogserve.engine.builtin import FULL, TINY

    arch = TINY if args.tiny else FULL
    sched_steps = args.sched_steps or args.standard_steps

    started = time.perf_counter()
    pipe, prompt = build_pipeline(arch, device, dtype, args.prompt_tokens)
    build_s = time.perf_counter() - started
    describe(pipe, arch, device, dtype, prompt, build_s, args)
    steps_list = (args.hd_steps, args.standard_steps)

    runs: list[Run] = []
    timer = StepTimer(device)

    # 1. Plain diffusers, before any cogserve mode touches the shared pipeline.
    def plain(steps: int, seed: int, on_step: Callable[[], None]) -> None:
        def callback(_pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            on_step()
            return kwargs

        pipe(
            prompt=prompt,
            width=args.size,
            height=args.size,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
            generator=torch.Generator(device="cpu").manual_seed(seed),  # as the engine does
            callback_on_step_end=callback,
        )

    runs += measure("plain diffusers", plain, steps_list, args.repeats, timer, device)

    # 2. cogserve's engine with its fastest output-preserving mode (compile), through generate_one.
    engine = None
    variant = "cogserve engine" + ("" if args.no_compile else " + compile")
    try:
        engine = make_engine(pipe, device, dtype, compile_on=not args.no_compile)
    except Exception as exc:  # a mode that cannot apply is a result, not a crash
        runs += [Run(variant, steps, error=f"{type(exc).__name__}: {exc}") for steps in steps_list]
    if engine is not None:
        runs += measure(
            variant, engine_call(engine, prompt, args.size), steps_list, args.repeats, timer, device
        )

    # 3. The same plus First Block Cache (changes outputs): reported apart.
    if engine is not None and args.fbc > 0:
        fbc_variant = f"{variant} + fbc:{args.fbc:g} (changes output)"
        try:
            from diffusers import FirstBlockCacheConfig

            pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=args.fbc))
            runs += measure(
                fbc_variant, engine_call(engine, prompt, args.size), steps_list, args.repeats, timer, device
            )
        except Exception as exc:
            runs += [Run(fbc_variant, steps, error=f"{type(exc).__name__}: {exc}") for steps in steps_list]
        finally:
            try:
                pipe.transformer.disable_cache()
            except Exception as exc:
                print(f"warning: disable_cache failed ({exc}); the Scheduler runs may use the cache")

    print_runs(runs, args, cuda)

    # 4. Concurrent requests through the Scheduler: batching on (8) vs off (1).
    if engine is not None:
        scheduler_comparison(engine, prompt, args.sched_requests, args.sched_size, sched_steps, device)


# -- building -------------------------------------------------------------------------------------


def build_pipeline(arch: Any, device: str, dtype: Any, prompt_tokens: int) -> tuple[Any, str]:
    """The CogView4Pipeline with random weights, built on ``device`` in ``dtype`` (no CPU copy)."""
    import torch
    from diffusers import CogView4Pipeline, FlowMatchEulerDiscreteScheduler

    from cogserve.engine.builtin import FULL, SCHEDULER_CONFIG, build_networks, build_tokenizer

    tokenizer = build_tokenizer()
    # The tiny tokenizer's ids all fit in GLM-4's table; keep the real size so memory is real.
    vocab = max(GLM_VOCAB, len(tokenizer)) if arch == FULL else len(tokenizer)
    torch.manual_seed(0)
    with default_dtype(dtype), torch.device(device):
        text_encoder, transformer, vae = build_networks(arch, vocab, tokenizer.pad_token_id)
    for module in (text_encoder, transformer, vae):
        # Parameters were made in ``dtype``; buffers an init makes in float32 on purpose (GLM's rotary
        # inv_freq) stay so, as after from_pretrained(dtype=...).
        module.eval()
        module.requires_grad_(False)
    pipe = CogView4Pipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, make_prompt(tokenizer, prompt_tokens)


@contextmanager
def default_dtype(dtype: Any) -> Iterator[None]:
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


_CAPTION = (
    "a serene mountain lake at dawn with mist drifting over still water, pine trees on the far shore, "
    "soft golden light touching the snowy peaks, a small wooden boat tied to a weathered dock, "
    "reflections of clouds on the surface, highly detailed, photorealistic, wide angle, calm mood, "
    "birds flying low over the water, wildflowers in the foreground, gentle breeze in the grass"
)


def make_prompt(tokenizer: Any, tokens: int) -> str:
    """A caption whose tokenised length (specials included) is about ``tokens``."""
    vocabulary = _CAPTION.split()
    words: list[str] = []
    while len(tokenizer(" ".join(words)).input_ids) < tokens:
        words.append(vocabulary[len(words) % len(vocabulary)])
    return " ".join(words)


def make_engine(pipe: Any, device: str, dtype: Any, *, compile_on: bool) -> Any:
    """A loaded ``PipelineEngine`` around the in-memory pipeline, its modes applied as cogserve does."""
    from cogserve.engine.modes import check_modes, place_and_apply
    from cogserve.engine.runner import PipelineEngine
    from cogserve.engine.types import ModelInfo
    from cogserve.settings import ModelSettings

    settings = ModelSettings(
        device=device,
        dtype="bf16" if str(dtype) == "torch.bfloat16" else "fp32",
        compile=compile_on,
        guidance_scale=GUIDANCE,
        warmup=False,
    )

    class PrebuiltEngine(PipelineEngine):
        """``PipelineEngine`` whose load takes this pipeline instead of ``from_pretrained`` on a folder."""

        def load(self) -> None:
            # What PipelineEngine.load -> load_pipeline do once the weights are read.
            check_modes(settings, device)
            place_and_apply(pipe, settings, device)
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe
            self._info = ModelInfo(
                name=MODEL_NAME,
                builtin=False,
                device=device,
                dtype=str(pipe.transformer.dtype).removeprefix("torch."),
            )

    engine = PrebuiltEngine(settings, Path(tempfile.gettempdir()))
    engine.load()
    return engine


Call = Callable[[int, int, Callable[[], None]], None]  # (steps, seed, called after each step)


def engine_call(engine: Any, prompt: str, size: int) -> Call:
    from cogserve.engine import GenerationParams, generate_one

    def call(steps: int, seed: int, on_step: Callable[[], None]) -> None:
        params = GenerationParams(prompt, size, size, steps, GUIDANCE, seed)
        generate_one(engine, params, lambda done, total: on_step())

    return call


# -- timing ---------------------------------------------------------------------------------------


class StepTimer:
    """Times each denoising step (device synchronised), from either kind of callback."""

    def __init__(self, device: str) -> None:
        self._device = device
        self.marks: list[float] = []

    def sync(self) -> None:
        if self._device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self._device)

    def mark(self) -> None:
        self.sync()
        self.marks.append(time.perf_counter())

    def step_intervals(self) -> list[float]:
        # Between the ends of consecutive steps: step 0 (which also waits for the prompt) is left out.
        return [later - earlier for earlier, later in itertools.pairwise(self.marks)]


def measure(
    variant: str,
    call: Call,
    steps_list: tuple[int, ...],
    repeats: int,
    timer: StepTimer,
    device: str,
) -> list[Run]:
    """One untimed call (warm-up: compile, autotune), then ``repeats`` timed calls per steps count."""
    runs = []
    try:
        call(min(steps_list), 0, timer.mark)
        warm_error = None
    except Exception as exc:
        warm_error = f"warm-up failed: {type(exc).__name__}: {exc}"
    for steps in steps_list:
        run = Run(variant, steps, error=warm_error)
        if warm_error is None:
            reset_peak(device)
            graphs = compiled_graphs()
            try:
                for repeat in range(repeats):
                    timer.marks = []
                    timer.sync()
                    started = time.perf_counter()
                    call(steps, repeat + 1, timer.mark)
                    timer.sync()
                    run.image_s.append(time.perf_counter() - started)
                    run.step_s += timer.step_intervals()
                run.peak_bytes = peak(device)
                run.compiled_in_timed = compiled_graphs() - graphs
            except Exception as exc:
                run.error = f"{type(exc).__name__}: {exc}"
        runs.append(run)
        print(f"  measured {variant}, {steps} steps: {fmt(run.s_per_image)} s/image", file=sys.stderr)
    return runs


def compiled_graphs() -> int:
    """Graphs torch.compile has made so far in this process (dynamo's own counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    return 0


# -- Scheduler ------------------------------------------------------------------------------------


def scheduler_comparison(engine: Any, prompt: str, requests: int, size: int, steps: int, device: str) -> None:
    from cogserve.settings import SchedulerSettings

    print(
        f"\n{requests} concurrent {size}x{size} requests, {steps} steps, through cogserve's Scheduler "
        "(in-process asyncio, one untimed burst first per setting):"
    )
    print(f"{'max_batch_size':>14} {'wall s':>8} {'images/s':>9} {'images per call':>16}")
    rates: dict[int, float] = {}
    for batch in (requests, 1):
        settings = SchedulerSettings(
            max_batch_size=min(batch, 64),
            max_batch_wait_ms=20,
            max_queue=max(64, requests),
            request_timeout_s=3600,
        )
        try:
            asyncio.run(burst(engine, settings, prompt, requests, size, steps, device))  # warm-up
            wall, sizes = asyncio.run(burst(engine, settings, prompt, requests, size, steps, device))
        except Exception as exc:
            print(f"{batch:>14} failed: {type(exc).__name__}: {exc}")
            continue
        rates[batch] = requests / wall
        print(f"{batch:>14} {wall:>8.2f} {rates[batch]:>9.3f} {','.join(map(str, sizes)):>16}")
    if len(rates) == 2:
        print(f"images/s batching on ({requests}) / off (1): {rates[requests] / rates[1]:.3f}")


async def burst(
    engine: Any, settings: Any, prompt: str, requests: int, size: int, steps: int, device: str
) -> tuple[float, list[int]]:
    """``requests`` submissions at once; returns the wall time and the sizes of the pipeline calls."""
    from cogserve.engine import GenerationParams
    from cogserve.engine.scheduler import Scheduler

    scheduler = Scheduler(engine, settings, device=device)
    scheduler.start()
    try:
        started = time.perf_counter()
        outputs = await asyncio.gather(
            *(
                scheduler.submit(
                    GenerationParams(f"{prompt} {i}", size, size, steps, GUIDANCE, i), f"bench-{i}"
                )
                for i in range(requests)
            )
        )
        wall = time.perf_counter() - started
    finally:
        await scheduler.stop()
    # Outputs of one call share its elapsed time and report its size; list each call once.
    calls: dict[float, int] = {output.elapsed_s: output.batch_size for output in outputs}
    return wall, list(calls.values())


# -- report ---------------------------------------------------------------------------------------


def describe(pipe: Any, arch: Any, device: str, dtype: Any, prompt: str, build_s: float, args: Any) -> None:
    import torch

    params = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("transformer", "text_encoder", "vae")
    }
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    tokens = len(pipe.tokenizer(prompt).input_ids)
    print(
        f"{'TINY smoke-test shrink of ' if args.tiny else ''}CogView4 architecture, random weights, "
        f"{str(dtype).removeprefix('torch.')} on {device} ({where}); torch {torch.__version__}"
    )
    print(
        "params: "
        + ", ".join(f"{name} {count / 1e9:.2f} B" for name, count in params.items())
        + f"; transformer {arch.layers} layers x {arch.heads} heads x {arch.head_dim}, text encoder "
        f"{arch.text_layers} layers x {arch.text_hidden}; built in {build_s:.1f} s"
    )
    print(
        f"prompt: {tokens} tokens (built-in tiny BPE tokenizer standing in for GLM's, padded by the "
        f"pipeline to a multiple of 16); guidance {GUIDANCE} (classifier-free: two transformer passes "
        f"per step); {args.repeats} timed images per cell after one untimed warm-up per variant"
    )


def print_runs(runs: list[Run], args: Any, cuda: bool) -> None:
    size = f"{args.size}x{args.size}"
    print(
        f"\n{'variant':52} {'size':>9} {'steps':>5} {'s/step':>7} {'s/image':>8} {'peak GiB':>8} "
        f"{'vs plain':>8}"
    )
    plain = {run.steps: run for run in runs if run.variant == "plain diffusers"}
    for run in runs:
        if run.error:
            print(f"{run.variant:52} {size:>9} {run.steps:>5} failed: {run.error[:200]}")
            continue
        base = plain.get(run.steps)
        speedup = base.s_per_image / run.s_per_image if base and base.s_per_image else math.nan
        memory = f"{run.peak_bytes / 2**30:.1f}" if cuda else "-"
        per_step, per_image = fmt(run.s_per_step, 4), fmt(run.s_per_image)
        note = f"  (incl. {run.compiled_in_timed} recompiled graph(s))" if run.compiled_in_timed else ""
        print(
            f"{run.variant:52} {size:>9} {run.steps:>5} {per_step:>7} {per_image:>8} {memory:>8} "
            f"{fmt(speedup):>8}{note}"
        )
    hd, standard = args.hd_steps, args.standard_steps
    for variant in dict.fromkeys(run.variant for run in runs):
        cells = {run.steps: run for run in runs if run.variant == variant and not run.error}
        if hd in cells and standard in cells and hd != standard:
            per_step = (cells[hd].s_per_image - cells[standard].s_per_image) / (hd - standard)
            print(f"  {variant}: differential s/step ({hd} vs {standard} steps) {per_step:.4f}")
    if not cuda or args.tiny:
        print(
            "targets (hd <= 9 s, standard <= 3.5 s, >= 1.5x plain) apply to the full-size model on one H100:"
        )
        print("  not checked on this run")
        return
    cogserve = [run for run in runs if run.variant.startswith("cogserve") and "fbc" not in run.variant]
    for run in cogserve:
        target = HD_TARGET_S if run.steps == hd else STANDARD_TARGET_S if run.steps == standard else None
        base = plain.get(run.steps)
        if target is None or run.error or not base or base.error:
            continue
        speedup = base.s_per_image / run.s_per_image
        met = run.s_per_image <= target and speedup >= SPEEDUP_TARGET
        print(
            f"target {run.steps} steps ({'hd' if run.steps == hd else 'standard'}): <= {target:g} s and "
            f">= {SPEEDUP_TARGET:g}x plain (one H100): {fmt(run.s_per_image)} s, {speedup:.2f}x -> "
            f"{'met' if met else 'MISSED'}"
        )


def fmt(value: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
