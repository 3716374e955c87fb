"""Core service latency: cold start to ready, and one request end to end at 512x512 and 1024x1024.

Starts a real ``cogserve serve`` subprocess (the built-in tiny model unless --model-path is given),
times requests over HTTP, and compares them with the pipeline time the server recorded for each
image, so the figures that matter are same-run ratios, not absolute seconds on a noisy machine:

    python benchmarks/bench_core.py [--repeats 5] [--steps 20] [--model-path PATH] [--device cuda]

Prints a table; never fails on a timing.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine, select

from cogserve.storage import ImageRow

COGSERVE = str(Path(sys.executable).parent / "cogserve")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="steps for quality=standard")
    parser.add_argument("--model-path")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cogserve-bench-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGSERVE_")}
    env["COGSERVE_MODEL__STANDARD_STEPS"] = str(args.steps)
    command = [
        COGSERVE,
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(work / "data"),
        "--device",
        args.device,
    ]
    if args.model_path:
        command += ["--model-path", args.model_path]
    url = f"http://127.0.0.1:{port}"

    # Cold start includes building the tiny model (first run in a fresh data dir) and the warm-up.
    started = time.perf_counter()
    log = (work / "server.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"server exited: see {work / 'server.log'}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        cold_start = time.perf_counter() - started
        info = httpx.get(f"{url}/readyz").json()

        results: dict[str, tuple[list[float], list[float]]] = {}
        with httpx.Client(timeout=600) as client:
            for size in ("512x512", "1024x1024"):
                e2e, ids = [], []
                for i in range(args.repeats):
                    t0 = time.perf_counter()
                    response = client.post(
                        f"{url}/api/paas/v4/images/generations",
                        json={"model": "cogview-4", "prompt": f"a cute kitten {i}", "size": size, "seed": i},
                    )
                    image = client.get(response.json()["data"][0]["url"])
                    e2e.append(time.perf_counter() - t0)
                    assert image.status_code == 200
                    ids.append(response.json()["data"][0]["url"].rsplit("/", 1)[1].removesuffix(".png"))
                results[size] = (e2e, pipeline_times(work / "data" / "cogserve.db", ids))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        log.close()

    print(
        f"model: {info['model']} on {info['device']} ({info['dtype']}), {args.steps} steps, "
        f"{args.repeats} requests per size, {os.cpu_count()} CPUs"
    )
    print(f"cold start to ready (spawn -> /readyz 200, incl. model build/load + warm-up): {cold_start:.2f} s")
    print(f"{'size':>10} {'e2e p50 s':>10} {'pipeline p50 s':>15} {'e2e/pipeline':>13}")
    medians = {}
    for size, (e2e, pipe) in results.items():
        e2e_p50, pipe_p50 = statistics.median(e2e), statistics.median(pipe)
        medians[size] = e2e_p50
        print(f"{size:>10} {e2e_p50:>10.3f} {pipe_p50:>15.3f} {e2e_p50 / pipe_p50:>13.3f}")
    print(
        f"1024x1024 / 512x512 end-to-end ratio: {medians['1024x1024'] / medians['512x512']:.2f} "
        f"(pixel ratio 4.00)"
    )


def pipeline_times(db: Path, ids: list[str]) -> list[float]:
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as connection:
        rows = connection.execute(select(ImageRow.duration_s).where(ImageRow.id.in_(ids))).scalars().all()
    engine.dispose()
    return list(rows)


if __name__ == "__main__":
    main()
