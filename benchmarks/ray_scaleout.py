"""Scale-out: throughput of 2 Ray model replicas vs 1, same run, tiny model on this machine.

Two ``cogserve serve --ray`` servers (1 replica, then 2; each model replica gets one CPU from Ray,
which pins its torch pool to one thread), each loaded by N concurrent clients for --requests images.
Blocks alternate (1, 2, 2, 1, ...) for --rounds so a swing in the machine's load hits both sides.
Only one server runs at a time: a Ray cluster takes ~1.2 GiB and the CPU the other side would use.

    python benchmarks/ray_scaleout.py [--steps 10] [--size 512] [--clients 8] [--requests 24] [--rounds 2]

Prints images/s per side and the ratio 2 replicas / 1. Never fails on a timing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _live import generation_body, request_image, server_env, start_server

from cogserve.engine.builtin import ensure_builtin_model


def throughput(url: str, clients: int, requests: int, size: int, offset: int) -> tuple[float, int]:
    """Images per second over ``requests`` images from ``clients`` threads; and the error count."""

    def one(index: int) -> str | None:
        with httpx.Client(timeout=300) as client:
            body = generation_body(f"scale-out {index}", size, seed=offset + index, response_format="url")
            return request_image(client, url, body)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        errors = [error for error in pool.map(one, range(requests)) if error]
    return requests / (time.perf_counter() - started), len(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cogserve-ray-bench-"))
    models = work / "models"
    ensure_builtin_model(models)
    env = server_env(
        {
            "COGSERVE_MODEL__BUILTIN_DIR": str(models),
            "COGSERVE_MODEL__STANDARD_STEPS": str(args.steps),
        }
    )
    rates: dict[int, list[float]] = {1: [], 2: []}
    errors = 0
    try:
        for round_ in range(args.rounds):
            for replicas in (1, 2) if round_ % 2 == 0 else (2, 1):
                data = work / f"data-{replicas}-{round_}"
                flags = ["--ray", "--replicas", str(replicas), "--warmup-sizes", f"{args.size}x{args.size}"]
                server = start_server(data, flags=flags, env=env)
                try:
                    throughput(server.url, args.clients, args.clients, args.size, 10**6)  # warm the path
                    rate, failed = throughput(
                        server.url, args.clients, args.requests, args.size, round_ * 1000
                    )
                finally:
                    server.stop()
                rates[replicas].append(rate)
                errors += failed
                print(f"round {round_ + 1}: {replicas} replica(s): {rate:.3f} images/s ({failed} errors)")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(
        f"\n{os.cpu_count()} CPUs, tiny model, {args.size}x{args.size}, {args.steps} steps, "
        f"{args.clients} clients, {args.requests} images per block, {args.rounds} rounds"
    )
    print(f"1 replica : {one:.3f} images/s (median)")
    print(f"2 replicas: {two:.3f} images/s (median)")
    print(f"2 replicas / 1 replica: {two / one:.2f}x   errors: {errors}")


if __name__ == "__main__":
    main()
