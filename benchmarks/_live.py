"""Shared helpers for the benchmarks: a live ``cogserve serve`` subprocess, the in-process engine,
the server's recorded pipeline times, and small statistics.

Not a benchmark itself. The scripts beside it import it as ``_live`` (``python benchmarks/x.py`` puts
``benchmarks/`` first on ``sys.path``).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cogserve.settings import ModelSettings

COGSERVE = str(Path(sys.executable).parent / "cogserve")
IMAGES_PATH = "/api/paas/v4/images/generations"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(overrides: Mapping[str, str] | None = None, threads: int | None = None) -> dict[str, str]:
    """This process's environment without any ``COGSERVE_*`` variable, plus ``overrides``.

    ``threads`` pins torch's intra-op pool of the server (OMP_NUM_THREADS, read when torch starts).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("COGSERVE_")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    env.update(overrides or {})
    return env


@dataclass
class LiveServer:
    """A running ``cogserve serve``; ``info`` is its /readyz body once ready."""

    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log_path: Path
    cold_start_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "cogserve.db"

    def stop(self, timeout_s: float = 60) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    data_dir: Path,
    *,
    flags: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    ready_timeout_s: float = 900,
) -> LiveServer:
    """Spawn ``cogserve serve`` on a free loopback port and wait until /readyz answers 200.

    ``cold_start_s`` is spawn -> first 200 (imports, model build/load, warm-up). ``env`` is the whole
    environment of the child (see ``server_env``). Raises SystemExit, pointing at the log, when the
    server exits or is not ready in time.
    """
    port = free_port()
    command = [COGSERVE, "serve", "--port", str(port), "--data-dir", str(data_dir), *flags]
    log_path = log_path or data_dir.parent / f"server-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env=dict(env or server_env()), stdout=log, stderr=subprocess.STDOUT
        )
    server = LiveServer(process=process, url=url, data_dir=data_dir, log_path=log_path)
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(
                    f"server exited with {process.returncode}: see {log_path}\n{log_tail(log_path)}"
                )
            if time.perf_counter() - started > ready_timeout_s:
                raise SystemExit(f"server not ready after {ready_timeout_s:g} s: see {log_path}")
            try:
                response = httpx.get(f"{url}/readyz", timeout=2)
                if response.status_code == 200:
                    server.cold_start_s = time.perf_counter() - started
                    server.info = response.json()
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    except BaseException:
        server.stop()
        raise


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; NaN when unreadable (not Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return math.nan


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def generation_body(
    prompt: str,
    size: int,
    seed: int,
    *,
    response_format: str = "b64_json",
    request_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "cogview-4",
        "prompt": prompt,
        "size": f"{size}x{size}",
        "quality": "standard",
        "seed": seed,
        "response_format": response_format,
    }
    if request_id is not None:
        body["request_id"] = request_id
    body.update(extra or {})
    return body


def request_image(client: httpx.Client, url: str, body: dict[str, Any]) -> str | None:
    """POST one generation and take the image: the inline PNG (b64_json) or a GET of the URL.

    Returns None on success, else a short description of what went wrong (never raises).
    """
    try:
        response = client.post(f"{url}{IMAGES_PATH}", json=body)
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text[:200]}"
        item = response.json()["data"][0]
        if body.get("response_format") == "b64_json":
            return None if item.get("b64_json") else "no b64_json in the answer"
        image = client.get(item["url"])
        return None if image.status_code == 200 and image.content else f"GET image: HTTP {image.status_code}"
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


def recorded_durations(db: Path, request_ids: Sequence[str]) -> dict[str, float]:
    """The pipeline time the server stored for each request id (shared by images of one batch)."""
    from sqlalchemy import create_engine, select

    from cogserve.storage import ImageRow

    engine = create_engine(f"sqlite:///{db}")
    found: dict[str, float] = {}
    try:
        with engine.connect() as connection:
            wanted = list(request_ids)
            for start in range(0, len(wanted), 500):
                query = select(ImageRow.request_id, ImageRow.duration_s).where(
                    ImageRow.request_id.in_(wanted[start : start + 500])
                )
                for request_id, duration in connection.execute(query):
                    found[str(request_id)] = float(duration)
    finally:
        engine.dispose()
    return found


def in_process_engine(
    *, steps: int, models_dir: Path, device: str = "auto", model_path: str | None = None, dtype: str = "auto"
) -> tuple[Any, ModelSettings]:
    """A loaded ``PipelineEngine`` and its settings: those of a server given the same values."""
    from cogserve.engine.runner import PipelineEngine

    settings = ModelSettings(
        path=model_path, device=device, dtype=dtype, standard_steps=steps, builtin_dir=models_dir
    )
    engine = PipelineEngine(settings, models_dir)
    engine.load()
    return engine, settings


def pin_torch_threads(threads: int | None) -> int:
    """Set (or read) torch's intra-op thread count in this process; returns the count in use."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return int(torch.get_num_threads())


def load_average() -> float:
    """The 1-minute load average: how busy the (shared) machine was; compare with os.cpu_count()."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator and not math.isnan(denominator) else math.nan


def verdict(value: float, target: float, *, at_most: bool) -> str:
    if math.isnan(value):
        return "n/a"
    ok = value <= target if at_most else value >= target
    return "met" if ok else "MISSED"
