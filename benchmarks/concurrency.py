"""Concurrency: 1 and N concurrent HTTP clients on a live server vs the bare pipeline, same run.

Bare: ``generate_one(PipelineEngine, params)`` called back to back in this process, one image per
call, on one worker thread (the scheduler's way). Servers: two ``cogserve serve`` subprocesses, one
with batching on (--max-batch-size 4, or the value given) and one with batching off
(--max-batch-size 1), with the same size, steps (their standard_steps) and torch threads (pinned, 1 by
default). Clients are threads, each with its own ``httpx.Client``, each sending its next request as
soon as the last one is answered; a request counts when the client holds the image (inline PNG with
``--response-format b64_json``, or url + GET).

Four phases: bare; the device's default server (batch 1 on a CPU, 4 on CUDA), 1 client; batching
on, N clients; batching off, N clients. The targets apply to the default server. A shared
machine's load swings by 10x within a minute, so the phases are cut into --rounds blocks run in turn
(order reversed every other round), never overlapping: both servers stay up but idle while another
block runs (their CPU use meanwhile is measured and printed).

    python benchmarks/concurrency.py [--steps 10] [--size 512] [--clients 16] [--requests 16 64]

Targets: at N=16 clients >= 0.95 of bare throughput; at 1 client <= 1.10x bare p50 latency; 0 errors.
Never fails on a timing.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import tempfile
import threading
import time
import zlib
from collections import Counter
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

THROUGHPUT_TARGET = 0.95
LATENCY_TARGET = 1.10


@dataclass
class Phase:
    label: str
    clients: int
    requests: int
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    #: Images per pipeline call, from the server's recorded call times (empty: bare or unknown).
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return len(self.latencies) / self.wall_s if self.wall_s else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10, help="denoising steps (the servers' standard_steps)")
    parser.add_argument("--size", type=int, default=512, help="square image side")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients of the N-client phases")
    parser.add_argument(
        "--requests",
        type=int,
        nargs=2,
        default=(16, 64),
        metavar=("ONE", "MANY"),
        help="timed requests with 1 client and with --clients clients (each N-client phase)",
    )
    parser.add_argument("--bare-requests", type=int, default=16, help="timed bare images")
    parser.add_argument("--rounds", type=int, default=4, help="blocks each phase is cut into")
    parser.add_argument("--warmup", type=int, default=2, help="untimed images per side before the rounds")
    parser.add_argument("--max-batch-size", type=int, help="batching-on server's max_batch_size")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads on every side (0: torch's default, the machine's cores). 1 by default: on a "
        "shared 2-core machine two OpenMP threads stall for seconds whenever another process takes a core",
    )
    parser.add_argument("--response-format", choices=["b64_json", "url"], default="b64_json")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, images, DBs)")
    parser.add_argument("--model-path")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    one, many = args.requests
    rounds = max(1, args.rounds)

    threads = pin_torch_threads(args.threads or None)
    load_before = load_average()
    work = Path(tempfile.mkdtemp(prefix="cogserve-concurrency-"))
    models_dir = work / "models"
    engine, settings = in_process_engine(
        steps=args.steps, models_dir=models_dir, device=args.device, model_path=args.model_path
    )
    env = server_env(
        {"COGSERVE_MODEL__STANDARD_STEPS": str(args.steps), "COGSERVE_MODEL__BUILTIN_DIR": str(models_dir)},
        threads=threads,
    )
    flags = ["--device", args.device] + (["--model-path", args.model_path] if args.model_path else [])
    from cogserve.engine.scheduler import batch_size_for

    batch_on = args.max_batch_size or 4
    # The targets are for the server as it starts by default on this device (batch 1 on a CPU).
    default_batch = batch_size_for(_default_scheduler(), engine.info.device)

    n = args.clients
    bare = Phase("bare pipeline, sequential", 1, args.bare_requests)
    on_one = Phase(f"server, default (batch {default_batch}), 1 client", 1, one)
    on_many = Phase(f"server, batching on ({batch_on}), {n} clients", n, many)
    off_many = Phase(f"server, batching off, {n} clients", n, many)
    idle_cpu_s = 0.0

    pool = ThreadPoolExecutor(
        1, thread_name_prefix="bare", initializer=pin_torch_threads, initargs=(threads,)
    )
    servers: list[LiveServer] = []
    with pool as worker:
        try:
            on = start_server(
                work / "on",
                flags=[*flags, "--max-batch-size", str(batch_on)],
                env=env,
                log_path=work / "server-on.log",
            )
            servers.append(on)
            off = start_server(
                work / "off",
                flags=[*flags, "--max-batch-size", "1"],
                env=env,
                log_path=work / "server-off.log",
            )
            servers.append(off)

            def bare_block(phase: Phase, count: int, tag: str) -> None:
                worker.submit(run_bare, engine, settings.guidance_scale, args, phase, count, tag).result()

            # Warm-up, untimed: the bare path, and every batch shape and the 1-client path of each server.
            bare_block(Phase("warm", 1, 0), args.warmup, "warm")
            for server in servers:
                burst(server, args, n, n, Phase("warm", n, n), f"warm-{server.data_dir.name}-n")
                burst(server, args, 1, args.warmup, Phase("warm", 1, 0), f"warm-{server.data_dir.name}-1")

            # (phase, the server it uses, how to run a block of it)
            default = on if default_batch == batch_on else off
            blocks: list[tuple[Phase, LiveServer | None, Callable[[int, str], None]]] = [
                (bare, None, lambda count, tag: bare_block(bare, count, tag)),
                (on_one, default, lambda count, tag: burst(default, args, 1, count, on_one, tag)),
                (on_many, on, lambda count, tag: burst(on, args, n, count, on_many, tag)),
                (off_many, off, lambda count, tag: burst(off, args, n, count, off_many, tag)),
            ]
            for index in range(rounds):
                for phase, used, run in blocks if index % 2 == 0 else blocks[::-1]:
                    count = share(phase.requests, rounds, index)
                    if count == 0:
                        continue
                    # The servers not in use must stay idle: measure what they use meanwhile.
                    idle = [server for server in servers if server is not used]
                    before = sum(process_cpu_s(server.process.pid) for server in idle)
                    run(count, f"r{index}")
                    idle_cpu_s += sum(process_cpu_s(server.process.pid) for server in idle) - before
        finally:
            for server in servers:
                server.stop()

    loads = (load_before, load_average())
    phases = (bare, on_one, on_many, off_many)
    report(args, engine.info, threads, loads, (batch_on, default_batch), rounds, idle_cpu_s, *phases)
    if args.keep:
        print(f"work folder (server logs, images, databases) kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def share(total: int, parts: int, index: int) -> int:
    """The ``index``-th of ``parts`` near-equal shares of ``total``."""
    return total // parts + (1 if index < total % parts else 0)


def _default_scheduler() -> Any:
    from cogserve.settings import SchedulerSettings

    return SchedulerSettings()


def run_bare(
    engine: Any, guidance: float, args: argparse.Namespace, phase: Phase, count: int, tag: str
) -> None:
    from cogserve.engine import GenerationParams, generate_one

    for i in range(count):
        seed = zlib.crc32(f"bare-{tag}-{i}".encode())
        params = GenerationParams(f"a cute kitten {i}", args.size, args.size, args.steps, guidance, seed)
        started = time.perf_counter()
        generate_one(engine, params)
        elapsed = time.perf_counter() - started
        phase.latencies.append(elapsed)
        phase.wall_s += elapsed


def burst(
    server: LiveServer, args: argparse.Namespace, clients: int, count: int, phase: Phase, tag: str
) -> None:
    """``count`` requests from ``clients`` client threads, each sending its next one on an answer."""
    numbers = itertools.count()
    lock = threading.Lock()
    ids: list[str] = []
    prefix = f"{phase.label.replace(' ', '').replace(',', '-')}-{tag}"

    def client_loop() -> None:
        with httpx.Client(timeout=900) as client:
            while True:
                with lock:
                    number = next(numbers)
                if number >= count:
                    return
                request_id = f"{prefix}-{number}"
                body = generation_body(
                    f"a cute kitten {number}",
                    args.size,
                    zlib.crc32(request_id.encode()),
                    response_format=args.response_format,
                    request_id=request_id,
                )
                started = time.perf_counter()
                error = request_image(client, server.url, body)
                elapsed = time.perf_counter() - started
                with lock:
                    if error is None:
                        phase.latencies.append(elapsed)
                        ids.append(request_id)
                    else:
                        phase.errors.append(error)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients, thread_name_prefix=f"client-{tag}") as pool:
        for future in [pool.submit(client_loop) for _ in range(clients)]:
            future.result()
    phase.wall_s += time.perf_counter() - started
    # Images of one pipeline call share its recorded wall time: equal times = one call.
    durations = recorded_durations(server.db_path, ids)
    phase.batch_sizes += list(Counter(durations.values()).values())


def report(
    args: argparse.Namespace,
    info: Any,
    threads: int,
    loads: tuple[float, float],
    batches: tuple[int, int],
    rounds: int,
    idle_cpu_s: float,
    bare: Phase,
    on_one: Phase,
    on_many: Phase,
    off_many: Phase,
) -> None:
    how = "inline PNG (b64_json)" if args.response_format == "b64_json" else "url + GET"
    batch_on, default_batch = batches
    print(
        f"model: {info.name} on {info.device} ({info.dtype}), {args.size}x{args.size}, {args.steps} steps "
        f"(the servers' standard_steps), torch threads {threads} everywhere (OMP_NUM_THREADS={threads} for "
        f"the servers), {os.cpu_count()} CPUs, 1-min load average {loads[0]:.2f} at start, {loads[1]:.2f} "
        "at end"
    )
    print(
        f"clients are threads in this process; a request is timed until the client holds the image: {how}. "
        f"Batching on: max_batch_size {batch_on}, max_batch_wait_ms "
        f"{_default_scheduler().max_batch_wait_ms:g}; batching off: --max-batch-size 1"
    )
    print(
        f"each phase cut into {rounds} blocks run in turn (order reversed every other round), after an "
        f"untimed warm-up; idle servers used {idle_cpu_s:.2f} s CPU while the other blocks ran"
    )
    print(
        f"{'phase':34} {'clients':>7} {'images':>6} {'errors':>6} {'wall s':>7} {'images/s':>8} "
        f"{'p50 s':>7} {'p95 s':>7} {'images/call':>11}"
    )
    for phase in (bare, on_one, on_many, off_many):
        sizes = phase.batch_sizes
        per_call = f"{statistics.fmean(sizes):.2f}" if sizes else "1.00" if phase is bare else "-"
        print(
            f"{phase.label:34} {phase.clients:>7} {len(phase.latencies):>6} {len(phase.errors):>6} "
            f"{phase.wall_s:>7.2f} {phase.images_per_s:>8.3f} {percentile(phase.latencies, 50):>7.3f} "
            f"{percentile(phase.latencies, 95):>7.3f} {per_call:>11}"
        )
    latency = ratio(percentile(on_one.latencies, 50), percentile(bare.latencies, 50))
    throughput_on = ratio(on_many.images_per_s, bare.images_per_s)
    throughput_off = ratio(off_many.images_per_s, bare.images_per_s)
    throughput = throughput_on if default_batch == batch_on else throughput_off
    n = args.clients
    print(
        f"1 client, default server (batch {default_batch}): latency p50 server/bare {latency:.3f}  "
        f"(target <= {LATENCY_TARGET:.2f}: {verdict(latency, LATENCY_TARGET, at_most=True)})"
    )
    print(
        f"{n} clients, default server (batch {default_batch}): throughput server/bare {throughput:.3f}  "
        f"(target >= {THROUGHPUT_TARGET:.2f}: {verdict(throughput, THROUGHPUT_TARGET, at_most=False)})"
    )
    print(f"{n} clients, batching on ({batch_on}): throughput server/bare {throughput_on:.3f}")
    print(f"{n} clients, batching off: throughput server/bare {throughput_off:.3f}")
    print(
        f"{n} clients: throughput batching on / off {ratio(on_many.images_per_s, off_many.images_per_s):.3f}"
    )
    errors = [error for phase in (on_one, on_many, off_many) for error in phase.errors]
    first = f"; first: {errors[0]}" if errors else ""
    print(f"errors: {len(errors)} (target 0: {'met' if not errors else 'MISSED'}){first}")


if __name__ == "__main__":
    main()
