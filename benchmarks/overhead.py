"""Service overhead: the same image made in-process vs through HTTP on a live server, same run.

In-process: ``generate_one(PipelineEngine, params)`` in this process (the tiny built-in pipeline unless
--model-path is given), called from one worker thread like the server's scheduler does. HTTP:
``POST /api/paas/v4/images/generations`` (quality=standard; the server's standard_steps set to the same
--steps) on a live ``cogserve serve`` subprocess, timed until the client holds the image: the inline
PNG with the default ``--response-format b64_json``, or the answer plus a GET of the link with ``url``.
Both sides use the same size, steps, prompts, seeds and torch thread count (pinned, 1 by default:
torch.set_num_threads here, OMP_NUM_THREADS for the server). They never compute at the same time:

- ``--order interleaved`` (default): one server for the whole run; requests alternate in-process,
  HTTP, HTTP, in-process, ... so both sides see the same background load (a shared machine's load
  swings by 10x within a minute). The idle server's CPU use during the in-process calls is measured
  and printed, to show it stays idle.
- ``--order blocks``: rounds of an in-process block, then an HTTP block on a server started for it
  and stopped after (ABBA order); no server process exists during in-process calls.

    python benchmarks/overhead.py [--requests 20] [--steps 20] [--size 512] [--order interleaved]

Prints p50/p95 of each side and the ratio HTTP / in-process (target p50 <= 1.10). Never fails on a
timing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _live import (
    LiveServer,
    generation_body,
    in_process_engine,
    load_average,
    percentile,
    pin_torch_threads,
    process_cpu_s,
    ratio,
    recorded_durations,
    request_image,
    server_env,
    start_server,
    verdict,
)

TARGET = 1.10


@dataclass
class Results:
    direct: list[float] = field(default_factory=list)
    http: list[float] = field(default_factory=list)
    #: (in-process, HTTP) seconds of requests made next to each other (interleaved order).
    pairs: list[tuple[float, float]] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    recorded: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: CPU seconds the idle server used while in-process calls ran (interleaved order).
    idle_server_cpu_s: float = 0.0
    #: Per-round (in-process p50, HTTP p50) (blocks order).
    rounds: list[tuple[float, float]] = field(default_factory=list)


class Sides:
    """Makes one image either way, with the same prompt, seed, size and steps."""

    def __init__(self, engine: Any, guidance: float, args: argparse.Namespace, worker: ThreadPoolExecutor):
        self._engine = engine
        self._guidance = guidance
        self._args = args
        self._worker = worker

    def direct(self, seed: int) -> float:
        from cogserve.engine import GenerationParams, generate_one

        size, steps = self._args.size, self._args.steps
        params = GenerationParams(f"a cute kitten {seed}", size, size, steps, self._guidance, seed)

        def call() -> float:
            started = time.perf_counter()
            generate_one(self._engine, params)
            return time.perf_counter() - started

        return self._worker.submit(call).result()

    def http(self, client: httpx.Client, url: str, seed: int, request_id: str) -> tuple[float, str | None]:
        body = generation_body(
            f"a cute kitten {seed}",
            self._args.size,
            seed,
            response_format=self._args.response_format,
            request_id=request_id,
            extra={"watermark_enabled": False} if self._args.no_watermark else None,
        )
        started = time.perf_counter()
        error = request_image(client, url, body)
        return time.perf_counter() - started, error


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20, help="timed requests per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests per side (per round)")
    parser.add_argument("--order", choices=["interleaved", "blocks"], default="interleaved")
    parser.add_argument("--rounds", type=int, default=4, help="blocks order: block pairs, ABBA")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (the server's standard_steps)")
    parser.add_argument("--size", type=int, default=512, help="square image side")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads on every side (0: torch's default, the machine's cores). 1 by default: on a "
        "shared 2-core machine two OpenMP threads stall for seconds whenever another process takes a core",
    )
    parser.add_argument("--response-format", choices=["b64_json", "url"], default="b64_json")
    parser.add_argument(
        "--no-watermark",
        action="store_true",
        help="send watermark_enabled=false (allowed in open mode): the service then skips the marks",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, images, DBs)")
    parser.add_argument("--model-path")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    threads = pin_torch_threads(args.threads or None)  # 0: torch's default here, as the server's
    load_before = load_average()
    work = Path(tempfile.mkdtemp(prefix="cogserve-overhead-"))
    models_dir = work / "models"
    engine, settings = in_process_engine(
        steps=args.steps, models_dir=models_dir, device=args.device, model_path=args.model_path
    )
    env = server_env(
        {"COGSERVE_MODEL__STANDARD_STEPS": str(args.steps), "COGSERVE_MODEL__BUILTIN_DIR": str(models_dir)},
        threads=threads,
    )
    flags = ["--device", args.device] + (["--model-path", args.model_path] if args.model_path else [])

    def server(name: str) -> LiveServer:
        return start_server(work / "data", flags=flags, env=env, log_path=work / f"server-{name}.log")

    results = Results()
    pool = ThreadPoolExecutor(
        1, thread_name_prefix="direct", initializer=pin_torch_threads, initargs=(threads,)
    )
    with pool as worker:
        sides = Sides(engine, settings.guidance_scale, args, worker)
        if args.order == "interleaved":
            run_interleaved(sides, server, args, results)
        else:
            run_blocks(sides, server, args, results)
    report(args, engine.info, threads, (load_before, load_average()), results)
    if args.keep:
        print(f"work folder (server logs, images, databases) kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def run_interleaved(
    sides: Sides, server: Callable[[str], LiveServer], args: argparse.Namespace, results: Results
) -> None:
    live = server("interleaved")
    try:
        with httpx.Client(timeout=600) as client:
            for i in range(-args.warmup, args.requests):
                seed = i + args.warmup
                request_id = f"overhead-{seed}"
                # Alternate which side goes first: ABBA over consecutive requests.
                pair: dict[str, float] = {}
                for side in ("direct", "http") if i % 2 == 0 else ("http", "direct"):
                    if side == "direct":
                        cpu = process_cpu_s(live.process.pid)
                        pair[side] = sides.direct(seed)
                        if i >= 0:
                            results.idle_server_cpu_s += process_cpu_s(live.process.pid) - cpu
                        continue
                    elapsed, error = sides.http(client, live.url, seed, request_id)
                    if error is not None:
                        if i >= 0:
                            results.errors.append(error)
                        continue
                    pair[side] = elapsed
                if i < 0:
                    continue
                results.direct.append(pair["direct"])
                if "http" in pair:
                    results.http.append(pair["http"])
                    results.pairs.append((pair["direct"], pair["http"]))
                    results.request_ids.append(request_id)
    finally:
        live.stop()
    durations = recorded_durations(live.db_path, results.request_ids)
    results.recorded += [durations[i] for i in results.request_ids if i in durations]


def run_blocks(
    sides: Sides, server: Callable[[str], LiveServer], args: argparse.Namespace, results: Results
) -> None:
    rounds = max(1, min(args.rounds, args.requests))
    counts = [args.requests // rounds + (1 if r < args.requests % rounds else 0) for r in range(rounds)]
    for index, count in enumerate(counts):
        direct: list[float] = []
        http: list[float] = []
        # ABBA order: a drift in the machine's background load hits both sides alike.
        for side in ("direct", "http") if index % 2 == 0 else ("http", "direct"):
            if side == "direct":
                for i in range(-args.warmup, count):
                    elapsed = sides.direct(index * 1000 + i + args.warmup)
                    if i >= 0:
                        direct.append(elapsed)
                continue
            live = server(f"round-{index}")
            ids: list[str] = []
            try:
                with httpx.Client(timeout=600) as client:
                    for i in range(-args.warmup, count):
                        seed = index * 1000 + i + args.warmup
                        request_id = f"overhead-{seed}"
                        elapsed, error = sides.http(client, live.url, seed, request_id)
                        if i < 0:
                            continue
                        if error is None:
                            http.append(elapsed)
                            ids.append(request_id)
                        else:
                            results.errors.append(error)
            finally:
                live.stop()
            durations = recorded_durations(live.db_path, ids)
            results.recorded += [durations[i] for i in ids if i in durations]
        results.direct += direct
        results.http += http
        results.rounds.append((percentile(direct, 50), percentile(http, 50)))


def report(
    args: argparse.Namespace, info: Any, threads: int, loads: tuple[float, float], results: Results
) -> None:
    how = "inline PNG (response_format=b64_json)" if args.response_format == "b64_json" else "url + GET"
    print(
        f"model: {info.name} on {info.device} ({info.dtype}), {args.size}x{args.size}, {args.steps} steps, "
        f"torch threads {threads} on both sides (torch.set_num_threads here, OMP_NUM_THREADS={threads} "
        f"for the server), {os.cpu_count()} CPUs, 1-min load average {loads[0]:.2f} at start, "
        f"{loads[1]:.2f} at end"
    )
    print(
        f"HTTP: POST /api/paas/v4/images/generations quality=standard, timed until the client holds the "
        f"image: {how}; watermarks {'off (watermark_enabled=false)' if args.no_watermark else 'on (default)'}"
        "; in-process: generate_one on one worker thread (as the server's scheduler)"
    )
    if args.order == "interleaved":
        print(
            f"order: interleaved on one server, {args.requests} timed requests per side after {args.warmup} "
            f"untimed per side, alternating which side goes first; the sides never compute at once "
            f"(the idle server used {results.idle_server_cpu_s:.2f} s CPU during all the timed in-process "
            f"calls, {sum(results.direct):.1f} s)"
        )
    else:
        print(
            f"order: {len(results.rounds)} rounds of an in-process block and an HTTP block (server started "
            f"and stopped per block), ABBA; {args.warmup} untimed requests per side per round"
        )
    print(f"{'':28} {'n':>4} {'p50 s':>8} {'p95 s':>8} {'mean s':>8}")
    for label, values in (
        ("in-process generate_one", results.direct),
        ("HTTP end to end", results.http),
        ("server pipeline (recorded)", results.recorded),
    ):
        mean = statistics.fmean(values) if values else float("nan")
        print(
            f"{label:28} {len(values):>4} {percentile(values, 50):>8.3f} {percentile(values, 95):>8.3f} "
            f"{mean:>8.3f}"
        )
    p50 = ratio(percentile(results.http, 50), percentile(results.direct, 50))
    p95 = ratio(percentile(results.http, 95), percentile(results.direct, 95))
    print(
        f"ratio HTTP / in-process: p50 {p50:.3f}, p95 {p95:.3f}  "
        f"(target p50 <= {TARGET:.2f}: {verdict(p50, TARGET, at_most=True)})"
    )
    if results.pairs:
        paired = [http / direct for direct, http in results.pairs]
        print(
            f"  paired (each HTTP request / the in-process call next to it): median "
            f"{statistics.median(paired):.3f}, p25 {percentile(paired, 25):.3f}, "
            f"p75 {percentile(paired, 75):.3f}"
        )
    for index, (direct_p50, http_p50) in enumerate(results.rounds):
        print(
            f"  round {index}: in-process p50 {direct_p50:.3f} s, HTTP p50 {http_p50:.3f} s, "
            f"ratio {ratio(http_p50, direct_p50):.3f}"
        )
    pipeline_vs_direct = ratio(percentile(results.recorded, 50), percentile(results.direct, 50))
    http_vs_pipeline = ratio(percentile(results.http, 50), percentile(results.recorded, 50))
    print(
        f"  split: server pipeline / in-process p50 {pipeline_vs_direct:.3f} (the same pipeline call, "
        f"there vs here); HTTP / server pipeline p50 {http_vs_pipeline:.3f} (what the service adds: "
        "queue, PNG, storage, HTTP, JSON)"
    )
    first = f" (first: {results.errors[0]})" if results.errors else ""
    print(f"errors: {len(results.errors)}{first}")


if __name__ == "__main__":
    main()
