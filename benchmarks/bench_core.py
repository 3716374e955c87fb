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
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from _live import server_env, start_server
from sqlalchemy import create_engine, select

from cogserve.storage import ImageRow


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
    env = server_env({"COGSERVE_MODEL__STANDARD_STEPS": str(args.steps)})
    flags = ["--device", args.device] + (["--model-path", args.model_path] if args.model_path else [])

    # Cold start includes building the tiny model (first run in a fresh data dir) and the warm-up.
    server = start_server(work / "data", flags=flags, env=env, log_path=work / "server.log")
    url = server.url
    try:
        cold_start = server.cold_start_s
        info = server.info

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
        server.stop()

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
