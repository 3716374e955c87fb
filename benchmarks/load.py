"""Load: N concurrent HTTP clients against a live ``cogserve serve`` for a fixed time (issue 7, "Load").

One asyncio + httpx driver, shared by this script (the full run: 64 clients, 3 minutes) and by the CI
test ``tests/reliability/test_load.py`` (64 clients, 20 s), which imports ``run_load`` from here.

Each client loops until the time is up: POST /api/paas/v4/images/generations (quality=standard,
response_format=url, a size from ``--sizes`` in turn), then GET the answer's ``data[0].url``. A 429
makes the client wait, then send a new request: a random time between half and all of its
Retry-After clamped to 0.2-1 s (the server's hint is whole seconds, often many: honoured but capped,
so the queue stays contested). When the time is up no new request starts; those in flight are let
finish (the drain, at most ``drain_timeout_s``, else a violation) and counted.

Correctness checks (each failure is a *violation* naming the request: size, status, body snippet):

- no 5xx, no transport error (reset, timeout), and no status other than 200 and 429 on the POST;
- every 200: ``data[0].url`` answers 200 with a PNG (content type image/png, signature, a valid IHDR
  chunk first whose width and height are the size asked for, and an IEND chunk at the end);
- every 429 is ``{"error": {"code": "1305"}}`` (the scheduler's queue is full). The server runs open
  (no keys), so the per-key and per-user limits (1302, 1303) must never answer; any other code is a
  violation. And a 1305 is only legitimate when the queue *was* full, checked by this rule:

      The scheduler refuses when ``len(queue) >= max_queue``; its queue holds only requests that wait,
      not the running batch. Every request in the server's queue at the moment it decided was sent by
      this driver (the only traffic) and not yet answered: it was outstanding, from the driver's side,
      at that moment. That moment lies between the refused POST's send and the driver's receipt of
      the 429. So with ``peak`` = the most POSTs outstanding at once (the refused one included) at any
      time in that interval, a legitimate refusal needs ``peak - 1 >= max_queue``. A 1305 with
      ``peak - 1 < max_queue`` is a refusal while the queue was not full: a violation.

  The rule never accuses a correct server (the receipt is observed late, which only widens the
  interval), and it catches a server that refuses below its limit by more than the running batch
  (max_batch_size images: 1 on a CPU). To make refusals really happen and be checked, run with
  ``max_queue`` below the client count (the default here: clients // 2). As a cross-check, /metrics
  is polled every 0.5 s and the peak ``cogserve_queue_depth`` and ``cogserve_running_images`` seen are
  reported (sampling, so informative only);
- RSS of the server process (plus its children) is sampled every second; growth between the
  reference point (the end of minute 1, or 1/3 of the run when it is shorter than 3 minutes) and the
  end of the load window must stay under ``--max-rss-growth`` (10 %). RSS "at" a point is the median
  of the samples of the 10 s before it (1/6 of the run when shorter): one image's working memory comes
  and goes, so single samples swing by +-70 MiB (~8 %) under this load;
- (the script, and the CI test) the server log holds no traceback, no ERROR line and no 5xx in its
  access log, and the server exits cleanly on SIGTERM.

Prints requests sent, answers by status and code, images/s, p50/p95/p99 of the POST latency of 200s,
of the end-to-end time (POST + GET of the image) and of the 429 answers, RSS samples and violations.
Never fails on a timing; exits 1 on any violation.

    python benchmarks/load.py [--clients 64] [--duration 180] [--sizes 512x512 512x768 768x512]
                              [--max-queue 32] [--steps 2] [--threads 1]

Traffic goes only to the server this script starts on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _live import IMAGES_PATH, LiveServer, load_average, log_tail, percentile, server_env, start_server

DEFAULT_SIZES = ("512x512", "512x768", "768x512")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
PROMPTS = (
    "a lighthouse at dusk",
    "a red bicycle leaning on a brick wall",
    "watercolour of a mountain lake",
    "a cup of tea on a wooden table",
    "a paper boat on a puddle",
)
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.2, 1.0
RSS_REFERENCE_S = 60.0
RSS_WINDOW_S = 10.0  # RSS "at" a time: the median of the samples of the last 10 s (or 1/6 of the run)
MAX_RSS_GROWTH = 0.10
SNIPPET = 200
KEEPALIVE_EXPIRY_S = 5.0  # httpx's default, what SDK clients use; cogserve's keep_alive_s (75 s) outlasts it
# An access-log line: "... INFO cogserve.access: 127.0.0.1:47596 POST /path 429 2.7ms req-..."
ACCESS_5XX = re.compile(r"cogserve\.access: \S+ \S+ \S+ 5[0-9][0-9] ")


@dataclass
class LoadReport:
    """What one run saw. Latencies are seconds; RSS samples are (seconds since start, bytes)."""

    clients: int
    duration_s: float
    max_queue: int
    sizes: tuple[str, ...]
    sent: int = 0
    images_ok: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    codes_429: Counter[str] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    images_by_size: Counter[str] = field(default_factory=Counter)
    post_s: list[float] = field(default_factory=list)  # POSTs answered 200 (image verified or not)
    end_to_end_s: list[float] = field(default_factory=list)  # POST + GET, verified images only
    refused_s: list[float] = field(default_factory=list)  # POSTs answered 429
    refusals_checked: int = 0  # 1305s the queue-full rule was applied to
    peak_outstanding: int = 0
    peak_queue_depth_seen: float = math.nan  # from /metrics polling
    peak_running_seen: float = math.nan
    metrics_polls: int = 0
    rss: list[tuple[float, int]] = field(default_factory=list)
    rss_reference: tuple[float, int] | None = None
    rss_end: tuple[float, int] | None = None
    rss_limit: float | None = None
    rss_window_s: float = 0.0
    window_s: float = 0.0  # the load window actually run
    drain_s: float = 0.0  # from its end until the last request in flight was answered
    violations: list[str] = field(default_factory=list)

    @property
    def rss_growth(self) -> float:
        if self.rss_reference is None or self.rss_end is None or not self.rss_reference[1]:
            return math.nan
        return self.rss_end[1] / self.rss_reference[1] - 1

    @property
    def images_per_s(self) -> float:
        total = self.window_s + self.drain_s
        return self.images_ok / total if total else math.nan

    def format(self) -> str:
        def quantiles(values: Sequence[float]) -> str:
            qs = (percentile(values, q) for q in (50, 95, 99))
            return " / ".join(f"{value:.3f}" for value in qs) + f" s (n={len(values)})"

        mib = 1 << 20
        other = {status: n for status, n in sorted(self.statuses.items()) if status not in (200, 429)}
        lines = [
            f"clients {self.clients}, duration {self.duration_s:g} s (window {self.window_s:.1f} s + drain "
            f"{self.drain_s:.1f} s), max_queue {self.max_queue}, sizes {' '.join(self.sizes)}",
            f"requests sent (POST): {self.sent}",
            f"200: {self.statuses.get(200, 0)} (images verified: {self.images_ok}; by size: "
            + ", ".join(f"{size} {self.images_by_size.get(size, 0)}" for size in self.sizes)
            + ")",
            f"429: {self.statuses.get(429, 0)} by code {dict(sorted(self.codes_429.items()))} "
            f"(1305s checked against the queue-full rule: {self.refusals_checked})",
            f"other statuses: {other or 'none'}; transport errors: {dict(self.transport_errors) or 'none'}",
            f"images/s: {self.images_per_s:.2f} (verified images / (window + drain))",
            f"POST latency of 200s  p50/p95/p99: {quantiles(self.post_s)}",
            f"end-to-end (POST+GET) p50/p95/p99: {quantiles(self.end_to_end_s)}",
            f"429 answer latency    p50/p95/p99: {quantiles(self.refused_s)}",
            f"peak POSTs outstanding: {self.peak_outstanding}; /metrics ({self.metrics_polls} polls) peak "
            f"queue depth {self.peak_queue_depth_seen:g}, peak running {self.peak_running_seen:g}",
        ]
        if self.rss:
            step = max(1, len(self.rss) // 18)
            shown = self.rss[::step]
            lines.append(
                "RSS samples (s: MiB): " + ", ".join(f"{t:.0f}: {rss / mib:.1f}" for t, rss in shown)
            )
        if self.rss_reference and self.rss_end:
            where = "end of minute 1" if self.rss_reference[0] >= RSS_REFERENCE_S - 1 else "1/3 of the run"
            limit = f" (limit {self.rss_limit:.0%})" if self.rss_limit is not None else ""
            lines.append(
                f"RSS (median of the samples of the {self.rss_window_s:.1f} s before) at {where} "
                f"({self.rss_reference[0]:.0f} s): {self.rss_reference[1] / mib:.1f} MiB; at the end "
                f"({self.rss_end[0]:.0f} s): {self.rss_end[1] / mib:.1f} MiB; "
                f"growth {self.rss_growth:+.1%}{limit}"
            )
        lines.append(f"violations: {len(self.violations)}")
        lines.extend(f"  - {violation}" for violation in self.violations[:25])
        if len(self.violations) > 25:
            lines.append(f"  ... and {len(self.violations) - 25} more")
        return "\n".join(lines)


def check_png(data: bytes, content_type: str, width: int, height: int) -> str | None:
    """None when ``data`` is a whole PNG of ``width`` x ``height``; else what is wrong."""
    if not content_type.startswith("image/png"):
        return f"content type {content_type!r}"
    if data[:8] != PNG_SIGNATURE:
        return f"no PNG signature (starts {data[:8]!r}, {len(data)} bytes)"
    if len(data) < 33 or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        return "first chunk is not a 13-byte IHDR"
    if zlib.crc32(data[12:29]) != struct.unpack(">I", data[29:33])[0]:
        return "IHDR CRC mismatch"
    got = struct.unpack(">II", data[16:24])
    if got != (width, height):
        return f"IHDR says {got[0]}x{got[1]}, asked {width}x{height}"
    if not data.endswith(PNG_IEND):
        return f"no IEND chunk at the end ({len(data)} bytes: truncated?)"
    return None


def read_rss(pid: int) -> int | None:
    """Resident set of ``pid`` plus its children, in bytes (psutil if installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            return None
        return None
    try:
        process = psutil.Process(pid)
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return int(total)
    except psutil.Error:
        return None


def _snippet(text: str) -> str:
    return " ".join(text.split())[:SNIPPET]


def _error_code(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "?"


def _retry_after_s(response: httpx.Response) -> float:
    try:
        hint = float(response.headers.get("retry-after", BACKOFF_MAX_S))
    except ValueError:
        hint = BACKOFF_MAX_S
    cap = max(BACKOFF_MIN_S, min(BACKOFF_MAX_S, hint))
    return random.uniform(max(BACKOFF_MIN_S, cap / 2), cap)


class _Driver:
    def __init__(
        self,
        url: str,
        *,
        clients: int,
        duration_s: float,
        max_queue: int,
        sizes: Sequence[str],
        pid: int | None,
        request_timeout_s: float,
        rss_limit: float | None,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self.url = url.rstrip("/")
        self.duration_s = duration_s
        self.clients = clients
        self.pid = pid
        self.timeout = httpx.Timeout(request_timeout_s, connect=30)
        self.transport = transport
        self.report = LoadReport(
            clients=clients,
            duration_s=duration_s,
            max_queue=max_queue,
            sizes=tuple(sizes),
            rss_limit=rss_limit,
        )
        self.started = 0.0
        self.deadline = 0.0
        self.outstanding: dict[int, int] = {}  # POST sequence number -> peak outstanding in its life
        self.sequence = itertools.count(1)

    def now(self) -> float:
        return time.monotonic() - self.started

    def violation(self, message: str) -> None:
        self.report.violations.append(f"[{self.now():6.1f} s] {message}")

    # -- the POST's life, for the queue-full rule ------------------------------------------------

    def _begin(self) -> int:
        number = next(self.sequence)
        self.outstanding[number] = 0
        count = len(self.outstanding)
        for key, peak in self.outstanding.items():
            if count > peak:
                self.outstanding[key] = count
        self.report.peak_outstanding = max(self.report.peak_outstanding, count)
        self.report.sent += 1
        return number

    def _end(self, number: int) -> int:
        return self.outstanding.pop(number)

    # -- clients -------------------------------------------------------------------------------

    async def client(self, http: httpx.AsyncClient, index: int) -> None:
        sizes = itertools.islice(itertools.cycle(self.report.sizes), index % len(self.report.sizes), None)
        for turn, size in enumerate(sizes):
            if time.monotonic() >= self.deadline:
                return
            body = {
                "model": "cogview-4",
                "prompt": f"{PROMPTS[(index + turn) % len(PROMPTS)]}, client {index} turn {turn}",
                "size": size,
                "quality": "standard",
                "response_format": "url",
            }
            wait = await self.one_request(http, index, size, body)
            if wait:
                await asyncio.sleep(min(wait, max(0.0, self.deadline - time.monotonic())))

    async def one_request(
        self, http: httpx.AsyncClient, index: int, size: str, body: dict[str, Any]
    ) -> float:
        """Send one generation and check what comes back; returns how long to back off (0: none)."""
        what = f"POST {size} (client {index})"
        number = self._begin()
        sent = time.monotonic()
        try:
            response = await http.post(f"{self.url}{IMAGES_PATH}", json=body)
        except httpx.HTTPError as exc:
            self._end(number)
            name = type(exc).__name__
            self.report.transport_errors[name] += 1
            self.violation(f"{what}: no answer: {name}: {exc}")
            return BACKOFF_MIN_S
        peak = self._end(number)
        post_s = time.monotonic() - sent
        status = response.status_code
        self.report.statuses[status] += 1
        if status == 429:
            code = _error_code(response)
            self.report.codes_429[code] += 1
            self.report.refused_s.append(post_s)
            if code != "1305":
                self.violation(
                    f"{what}: HTTP 429 with code {code} (only 1305 expected): {_snippet(response.text)}"
                )
            else:
                self.report.refusals_checked += 1
                if peak - 1 < self.report.max_queue:
                    self.violation(
                        f"{what}: HTTP 429/1305 while the queue was not full: at most {peak - 1} other "
                        f"POSTs were outstanding (max_queue {self.report.max_queue}): "
                        f"{_snippet(response.text)}"
                    )
            return _retry_after_s(response)
        if status != 200:
            self.violation(f"{what}: HTTP {status}: {_snippet(response.text)}")
            return BACKOFF_MIN_S
        self.report.post_s.append(post_s)
        try:
            image_url = response.json()["data"][0]["url"]
            if not isinstance(image_url, str) or not image_url:
                raise TypeError("url is empty")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            self.violation(f"{what}: HTTP 200 without data[0].url ({exc!r}): {_snippet(response.text)}")
            return BACKOFF_MIN_S
        try:
            image = await http.get(image_url)
        except httpx.HTTPError as exc:
            self.report.transport_errors[f"GET {type(exc).__name__}"] += 1
            self.violation(f"{what}: GET {image_url}: no answer: {type(exc).__name__}: {exc}")
            return BACKOFF_MIN_S
        if image.status_code != 200:
            self.violation(f"{what}: GET {image_url}: HTTP {image.status_code}: {_snippet(image.text)}")
            return BACKOFF_MIN_S
        width, height = (int(side) for side in size.split("x"))
        problem = check_png(image.content, image.headers.get("content-type", ""), width, height)
        if problem:
            self.violation(f"{what}: GET {image_url}: bad PNG: {problem}")
            return BACKOFF_MIN_S
        self.report.images_ok += 1
        self.report.images_by_size[size] += 1
        self.report.end_to_end_s.append(time.monotonic() - sent)
        return 0.0

    # -- watchers ------------------------------------------------------------------------------

    async def sample_rss(self) -> None:
        if self.pid is None:
            return
        while True:
            rss = await asyncio.to_thread(read_rss, self.pid)
            if rss is not None:
                self.report.rss.append((self.now(), rss))
            await asyncio.sleep(1.0)

    async def poll_metrics(self, http: httpx.AsyncClient) -> None:
        report = self.report
        peaks = {"cogserve_queue_depth": -math.inf, "cogserve_running_images": -math.inf}
        while True:
            try:
                response = await http.get(f"{self.url}/metrics")
            except httpx.HTTPError as exc:
                self.violation(f"GET /metrics: no answer: {type(exc).__name__}: {exc}")
                response = None
            if response is not None and response.status_code >= 500:
                self.violation(f"GET /metrics: HTTP {response.status_code}: {_snippet(response.text)}")
            elif response is not None and response.status_code == 200:
                report.metrics_polls += 1
                for line in response.text.splitlines():
                    name, _, value = line.partition(" ")
                    if name in peaks:
                        with contextlib.suppress(ValueError):
                            peaks[name] = max(peaks[name], float(value))
                report.peak_queue_depth_seen = peaks["cogserve_queue_depth"]
                report.peak_running_seen = peaks["cogserve_running_images"]
            await asyncio.sleep(0.5)

    # -- the run -------------------------------------------------------------------------------

    async def run(self, drain_timeout_s: float) -> LoadReport:
        report = self.report
        # httpx's default idle expiry (5 s), as the zhipuai and openai SDKs use it. A server whose
        # keep-alive is also 5 s (uvicorn's default) can close a connection just as a POST is sent on
        # it: one of 7,495 POSTs of a 3-minute run failed so before cogserve's keep_alive_s became 75.
        limits = httpx.Limits(
            max_connections=self.clients + 4,
            max_keepalive_connections=self.clients + 4,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        )
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits, transport=self.transport) as http:
            self.started = time.monotonic()
            self.deadline = self.started + self.duration_s
            watchers = [
                asyncio.create_task(self.sample_rss()),
                asyncio.create_task(self.poll_metrics(http)),
            ]
            tasks = [asyncio.create_task(self.client(http, index)) for index in range(self.clients)]
            await asyncio.sleep(self.duration_s)
            report.window_s = self.now()
            end_sample = await asyncio.to_thread(read_rss, self.pid) if self.pid is not None else None
            done, pending = await asyncio.wait(tasks, timeout=drain_timeout_s)
            report.drain_s = self.now() - report.window_s
            for task in pending:
                task.cancel()
            if pending:
                self.violation(
                    f"{len(pending)} clients still waiting {drain_timeout_s:g} s after the load window closed"
                )
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                if task.exception() is not None:
                    self.violation(f"a client crashed: {task.exception()!r}")
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        if end_sample is not None:
            report.rss.append((report.window_s, end_sample))
            report.rss.sort()
        self._judge_rss()
        return report

    def _rss_around(self, samples: Sequence[tuple[float, int]], at: float) -> int:
        """The median of the samples in (at - rss_window_s, at]: one image's working memory comes and
        goes (+-70 MiB between two samples at 768x512), which a single sample would read as growth."""
        near = [rss for t, rss in samples if at - self.report.rss_window_s < t <= at]
        return int(statistics.median(near))

    def _judge_rss(self) -> None:
        report = self.report
        in_window = [(t, rss) for t, rss in report.rss if t <= report.window_s]
        if not in_window:
            return
        reference_t = RSS_REFERENCE_S if report.duration_s >= 3 * RSS_REFERENCE_S else report.duration_s / 3
        report.rss_window_s = min(RSS_WINDOW_S, report.duration_s / 6)
        at_reference = next((t for t, _ in in_window if t >= reference_t), in_window[-1][0])
        report.rss_reference = (at_reference, self._rss_around(in_window, at_reference))
        report.rss_end = (in_window[-1][0], self._rss_around(in_window, in_window[-1][0]))
        growth = report.rss_growth
        if report.rss_limit is not None and not math.isnan(growth) and growth >= report.rss_limit:
            mib = 1 << 20
            report.violations.append(
                f"RSS grew {growth:+.1%} (limit {report.rss_limit:.0%}): "
                f"{report.rss_reference[1] / mib:.1f} MiB at {report.rss_reference[0]:.0f} s -> "
                f"{report.rss_end[1] / mib:.1f} MiB at {report.rss_end[0]:.0f} s"
            )


def run_load(
    url: str,
    clients: int,
    duration_s: float,
    *,
    max_queue: int,
    sizes: Sequence[str] = DEFAULT_SIZES,
    pid: int | None = None,
    request_timeout_s: float = 330.0,
    drain_timeout_s: float = 120.0,
    max_rss_growth: float | None = MAX_RSS_GROWTH,
    transport: httpx.AsyncBaseTransport | None = None,
) -> LoadReport:
    """Drive ``clients`` concurrent clients at the server on ``url`` for ``duration_s`` seconds.

    ``max_queue`` must be the server's (the 429 rule in the module docstring uses it); ``pid`` is the
    server's process, for the RSS samples (None: no samples, no RSS check); ``max_rss_growth`` None
    reports the growth without judging it; ``transport`` replaces the network (the checks' own tests
    use a mock server). Never raises on what the server does: every failure is a
    violation in the report.
    """
    driver = _Driver(
        url,
        clients=clients,
        duration_s=duration_s,
        max_queue=max_queue,
        sizes=sizes,
        pid=pid,
        request_timeout_s=request_timeout_s,
        rss_limit=max_rss_growth,
        transport=transport,
    )
    return asyncio.run(driver.run(drain_timeout_s))


def start_load_server(
    work: Path,
    *,
    max_queue: int,
    steps: int = 2,
    sizes: Sequence[str] = DEFAULT_SIZES,
    threads: int | None = 1,
    models_dir: Path | None = None,
    flags: Sequence[str] = (),
) -> LiveServer:
    """``cogserve serve`` on the tiny pipeline for a load run: ``steps`` standard steps, each size warmed
    before ready, ``max_queue`` waiting requests. ``models_dir``: where the tiny model is (built there
    if missing; unset: under the data dir). ``threads`` pins torch's threads (None: torch's default)."""
    overrides = {
        "COGSERVE_MODEL__STANDARD_STEPS": str(steps),
        "COGSERVE_MODEL__WARMUP_SIZES": ",".join(sizes),
    }
    if models_dir is not None:
        overrides["COGSERVE_MODEL__BUILTIN_DIR"] = str(models_dir)
    env = server_env(overrides, threads=threads)
    return start_server(
        work / "data",
        flags=["--max-queue", str(max_queue), *flags],
        env=env,
        log_path=work / "server.log",
        ready_timeout_s=300,
    )


def server_log_problems(server: LiveServer, limit: int = 20) -> list[str]:
    """Tracebacks, ERROR lines and 5xx access-log lines in the server's log (for the violation list)."""
    try:
        lines = server.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    bad = [
        line
        for line in lines
        if "Traceback" in line or " ERROR " in line or " CRITICAL " in line or ACCESS_5XX.search(line)
    ]
    # /readyz answers 503 while the model loads: start_server's polling, before the load began.
    return [line for line in bad if "GET /readyz 503 " not in line][:limit]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load (default 180)")
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="WIDTHxHEIGHT, used in turn")
    parser.add_argument(
        "--max-queue", type=int, default=None, help="server's max_queue (default clients // 2)"
    )
    parser.add_argument("--steps", type=int, default=2, help="standard_steps of the server (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server (0: default)")
    parser.add_argument("--max-rss-growth", type=float, default=MAX_RSS_GROWTH)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (log, data)")
    args = parser.parse_args(argv)
    max_queue = args.max_queue or max(1, args.clients // 2)

    work = Path(tempfile.mkdtemp(prefix="cogserve-load-"))
    print(f"work folder {work}; load average {load_average():.2f} on {os.cpu_count()} CPUs", flush=True)
    server = start_load_server(
        work,
        max_queue=max_queue,
        steps=args.steps,
        sizes=args.sizes,
        threads=args.threads or None,
        models_dir=work / "models",
    )
    print(f"server {server.url} ready in {server.cold_start_s:.1f} s: {json.dumps(server.info)}", flush=True)
    try:
        report = run_load(
            server.url,
            args.clients,
            args.duration,
            max_queue=max_queue,
            sizes=args.sizes,
            pid=server.process.pid,
            max_rss_growth=args.max_rss_growth,
        )
    finally:
        server.stop()
    for line in server_log_problems(server):
        report.violations.append(f"server log: {line}")
    # uvicorn re-raises the SIGTERM it handled once shut down, so -SIGTERM is a clean exit too.
    if server.process.returncode not in (0, -signal.SIGTERM, None):
        report.violations.append(
            f"server exited with {server.process.returncode}:\n{log_tail(server.log_path)}"
        )
    print(report.format())
    print(f"load average {load_average():.2f} at the end")
    if args.keep or report.violations:
        print(f"server log {server.log_path}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
