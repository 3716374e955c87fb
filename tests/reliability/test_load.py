"""Load (issue 7): 64 concurrent clients for 20 s against a live ``cogserve serve`` on the tiny pipeline.

The driver is ``benchmarks/load.py`` (its docstring states every check, including the rule that proves
a 429/1305 came only while the queue was full); the full 3-minute run is that script. Here the same
driver runs the short version and the test asserts correctness, never timings: no 5xx, every 200's URL
serves a PNG of the size asked for, 429s only with code 1305 and only while the queue was full, and
bounded RSS growth. The server's max_queue (16) is well below the client count so refusals really
happen and are checked; the drain after the window is then about 16 images, which keeps the test near
45 s with the server start.

RSS: "at" a point is the median of the samples of the 3.3 s before it (single samples swing by ~8 %
as each image's working memory comes and goes); the reference is 1/3 of the run (about 7 s in, every
size served, and warmed before ready) and it is compared with the end of the window. The full run's
limit is 10 % between minute 1 and minute 3; 13 s of a short run still include the allocator settling
(measured +14 % between two single samples here on a 2-core shared machine), so the bound here is 25 %:
stable on a shared machine, and still failing on a gross leak (in those 13 s the server answers ~20
images and ~700 refusals: ~10 MiB kept per image, or ~300 kB per request, crosses it). Smaller leaks
are the full run's to find.

The checks themselves are pinned against a mock server (httpx.MockTransport) that misbehaves on purpose,
so a driver that cannot fail would fail here.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import make_png

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))  # load.py imports its sibling ``_live`` as a top-level module
load = importlib.import_module("load")

CLIENTS = 64
DURATION_S = 20.0
MAX_QUEUE = 16
CI_MAX_RSS_GROWTH = 0.25


@pytest.mark.slow
def test_64_clients_for_20_s_get_only_good_images_or_queue_full_refusals(
    tmp_path: Path, models_dir: Path
) -> None:
    server = load.start_load_server(tmp_path, max_queue=MAX_QUEUE, models_dir=models_dir)
    try:
        report = load.run_load(
            server.url,
            CLIENTS,
            DURATION_S,
            max_queue=MAX_QUEUE,
            pid=server.process.pid,
            max_rss_growth=CI_MAX_RSS_GROWTH,
            drain_timeout_s=90,
        )
    finally:
        server.stop()
    summary = report.format()
    print(summary)  # shown with -s, and by -ra on failure

    assert report.violations == [], summary
    assert load.server_log_problems(server) == [], summary
    assert not [status for status in report.statuses if status >= 500], summary
    # Every size was asked for and served, each image checked (PNG, IHDR size) by the driver.
    assert all(report.images_by_size[size] > 0 for size in report.sizes), summary
    assert report.images_ok == report.statuses[200], summary
    # Refusals really happened, all 1305, and each one passed the queue-full rule.
    assert report.codes_429.get("1305", 0) > 0, summary
    assert set(report.codes_429) == {"1305"}, summary
    assert report.refusals_checked == report.statuses[429], summary
    # RSS was sampled through the run and judged (the growth bound is in the violations).
    assert report.rss_reference is not None and report.rss_end is not None, summary
    assert report.rss_end[0] - report.rss_reference[0] >= DURATION_S / 2, summary
    assert report.rss_growth < CI_MAX_RSS_GROWTH, summary


def test_the_driver_reports_what_a_misbehaving_server_does() -> None:
    """512x512: 429/1305 with one request outstanding (queue not full); 512x768: 500; 768x512: a 200
    whose image has the wrong size; 1024x1024: 429 with a per-key code; 1024x768: a good image."""
    good = make_png(1024, 768)
    wrong_size = make_png(512, 512)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            png = good if request.url.path == "/files/good.png" else wrong_size
            return httpx.Response(200, content=png, headers={"content-type": "image/png"})
        size = json.loads(request.content)["size"]
        refused = {"error": {"code": "1305", "message": "the queue is full"}}
        if size == "512x512":
            return httpx.Response(429, json=refused, headers={"Retry-After": "1"})
        if size == "512x768":
            return httpx.Response(500, json={"error": {"code": "500", "message": "boom"}})
        if size == "1024x1024":
            return httpx.Response(429, json={"error": {"code": "1302", "message": "too many in flight"}})
        name = "good" if size == "1024x768" else "bad"
        return httpx.Response(200, json={"created": 1, "data": [{"url": f"http://test/files/{name}.png"}]})

    sizes = ("512x512", "512x768", "768x512", "1024x1024", "1024x768")
    report = load.run_load(
        "http://test",
        len(sizes),  # client i starts at sizes[i]: every case comes up at once
        0.5,
        max_queue=8,
        sizes=sizes,
        transport=httpx.MockTransport(handler),
    )
    text = "\n".join(report.violations)
    assert "POST 512x512 (client 0): HTTP 429/1305 while the queue was not full" in text
    assert "POST 512x768 (client 1): HTTP 500:" in text and "boom" in text
    assert "POST 768x512 (client 2): GET http://test/files/bad.png: bad PNG: IHDR says 512x512" in text
    assert "POST 1024x1024 (client 3): HTTP 429 with code 1302" in text
    assert "1024x768" not in text
    assert report.images_by_size["1024x768"] > 0
    assert report.statuses[500] > 0 and report.codes_429["1302"] > 0 and report.codes_429["1305"] > 0
    assert "violations: " in report.format()


def test_png_check() -> None:
    png = make_png(512, 768)
    assert load.check_png(png, "image/png", 512, 768) is None
    assert load.check_png(png, "image/png", 768, 512) == "IHDR says 512x768, asked 768x512"
    assert "truncated" in (load.check_png(png[:-5], "image/png", 512, 768) or "")
    assert "signature" in (load.check_png(b"GIF89a" + png[6:], "image/png", 512, 768) or "")
    assert "content type" in (load.check_png(png, "application/json", 512, 768) or "")
    corrupt = bytearray(png)
    corrupt[20] ^= 0xFF  # the height inside IHDR, without fixing its CRC
    assert load.check_png(bytes(corrupt), "image/png", 512, 768) == "IHDR CRC mismatch"
