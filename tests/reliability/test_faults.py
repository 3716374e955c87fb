"""Faults: what a crash, a full disk, a missing database or a failing pipeline leaves behind.

Each test causes the fault for real where this machine allows it (SIGKILL of a real server, a real
tmpfs filled to the brim, a real SQLite lock, a real PostgreSQL stopped and started again) and
asserts what a client and an operator would see: a clear error in the envelope, never a corrupt or
half-written PNG, never a row without its file or a file without its row once the sweep has run,
and a service that answers again as soon as the fault is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from cogserve.engine.runner import PipelineEngine
from cogserve.settings import Settings
from cogserve.storage import MetadataStore
from cogserve.storage.files import LocalImageStore
from cogserve.storage.image_store import new_image_id
from cogserve.storage.sweep import ORPHAN_GRACE_S
from tests.components.postgres import PostgresServer, find_bindir, unavailable
from tests.e2e.conftest import COGSERVE, cli_env, start_server, stop_server
from tests.helpers import IMAGES, FaultyPipeline, generate, image_id_of, metadata_of, png_size

pytestmark = pytest.mark.slow


def error_of(response: Any) -> tuple[int, str, str]:
    body = response.json()["error"]
    return response.status_code, body["code"], body["message"]


def stored_pngs(images_dir: Path) -> dict[str, Path]:
    return {path.stem: path for path in images_dir.glob("??/*.png")}


def temp_files(images_dir: Path) -> list[Path]:
    return list(images_dir.glob("??/.*.tmp"))


# -- kill -9 during writes ---------------------------------------------------------------------------

_WRITER = """
import sys
from pathlib import Path
from cogserve.storage.files import LocalImageStore
LocalImageStore(Path(sys.argv[1])).write(sys.argv[2], b"\\x89PNG\\r\\n\\x1a\\n" + b"x" * (512 << 20))
"""


def test_a_writer_killed_mid_write_leaves_no_image_only_a_temp_file_the_sweep_removes(
    tmp_path: Path,
) -> None:
    """The store's own write, killed with SIGKILL while the bytes are still going to disk."""
    image_id = new_image_id()
    store = LocalImageStore(tmp_path / "images")
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(store.root), image_id])
    try:
        deadline = time.monotonic() + 60
        while not any(path.stat().st_size > 0 for path in temp_files(store.root)):
            assert writer.poll() is None, "the writer finished before it could be killed"
            assert time.monotonic() < deadline, "the writer never started writing"
            time.sleep(0.001)
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    (partial,) = temp_files(store.root)
    assert 0 < partial.stat().st_size < (512 << 20)
    # Nothing under the image's name: readers and the /files route never see the partial bytes.
    assert not store.exists(image_id) and store.open(image_id) is None
    assert list(store.stored_ids()) == []
    assert store.remove_stale_temp_files(older_than_s=0) == 1 and temp_files(store.root) == []


def _client_loop(url: str, stop: threading.Event, served: dict[str, tuple[str, bytes]], seed: int) -> None:
    """Generate and fetch until ``stop``; every 200 must link a whole PNG of the size asked."""
    sizes = ["512x512", "768x512", "1024x1024"]
    rng = random.Random(seed)
    with httpx.Client(timeout=60) as http:
        while not stop.is_set():
            size = rng.choice(sizes)
            try:
                response = http.post(
                    f"{url}{IMAGES}", json={"model": "cogview-4", "prompt": f"fault {seed}", "size": size}
                )
                if response.status_code != 200:
                    assert response.status_code < 500, response.text
                    continue
                link = response.json()["data"][0]["url"]
                image = http.get(link)
            except httpx.TransportError:
                continue  # the server was killed under us: the request was never answered
            assert image.status_code == 200, f"{link} of a 200 answered {image.status_code}"
            width, height = map(int, size.split("x"))
            assert png_size(image.content) == (width, height)
            served[link] = (size, image.content)


def test_kill_9_under_load_loses_no_answered_image_and_the_sweep_leaves_rows_and_files_in_step(
    tmp_path: Path, models_dir: Path
) -> None:
    """Three SIGKILLs of a real server while 6 clients generate, then a restart and `cogserve gc`."""
    data_dir = tmp_path / "data"
    served: dict[str, tuple[str, bytes]] = {}
    rng = random.Random(7)
    for cycle in range(3):
        server = start_server(data_dir, models_dir)
        stop = threading.Event()
        clients = [
            threading.Thread(target=_client_loop, args=(server.url, stop, served, 10 * cycle + i))
            for i in range(6)
        ]
        errors: list[BaseException] = []

        def record(args: Any, errors: list[BaseException] = errors) -> None:
            errors.append(args.exc_value)

        threading.excepthook = record
        try:
            before = len(served)
            for thread in clients:
                thread.start()
            # Kill while the clients are busy: once this run has answered an image, a moment later.
            deadline = time.monotonic() + 120
            while len(served) == before and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.5, 2.5))
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(10)
            stop.set()
            for thread in clients:
                thread.join(60)
        finally:
            threading.excepthook = threading.__excepthook__
            stop.set()
            stop_server(server.process)
        assert errors == [], errors
    assert len(served) >= 3, "too few images were answered to say anything"

    # Every image a client was given a link to survives the crashes, byte for byte (each start
    # took a new port, so the links are re-based on the running server).
    server = start_server(data_dir, models_dir)
    try:
        for link, (_, content) in served.items():
            again = httpx.get(f"{server.url}/files/{image_id_of(link)}.png", timeout=30)
            assert again.status_code == 200 and again.content == content, link
    finally:
        stop_server(server.process)

    # The sweep, run as if its orphan grace period had passed since the crashes.
    images_dir = data_dir / "images"
    past = time.time() - ORPHAN_GRACE_S - 60
    for path in [*images_dir.glob("??/*.png"), *temp_files(images_dir)]:
        os.utime(path, (past, past))
    gc = subprocess.run(
        [COGSERVE, "gc", "--data-dir", str(data_dir)],
        env=cli_env(models_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gc.returncode == 0, gc.stderr

    files = stored_pngs(images_dir)
    store = MetadataStore(f"sqlite:///{data_dir / 'cogserve.db'}")
    try:
        rows = {image_id: store.get(image_id) for image_id in store.known_ids(files)}
        with sqlite3.connect(data_dir / "cogserve.db") as db:
            all_rows = {row[0] for row in db.execute("SELECT id FROM images")}
    finally:
        store.close()
    assert set(files) == all_rows, "rows and files differ after restart + sweep"
    assert temp_files(images_dir) == []
    for image_id, path in files.items():
        row = rows[image_id]
        assert row is not None
        assert png_size(path.read_bytes()) == (row.width, row.height), image_id
    assert {image_id_of(link) for link in served} <= set(files)


# -- disk full ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def tiny_tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'})")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def _fill(folder: Path, leave_bytes: int) -> Path:
    """A file taking all of ``folder``'s filesystem but ``leave_bytes``."""
    stats = os.statvfs(folder)
    filler = folder / "filler"
    filler.write_bytes(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave_bytes))
    return filler


def _assert_disk_full_is_a_clear_500_and_nothing_is_kept(client: TestClient, images_dir: Path) -> None:
    before = len(client.get("/metrics").text)
    refused = generate(client, size="1024x1024")
    status, code, message = error_of(refused)
    assert (status, code) == (500, "500")
    assert message == "could not store image: No space left on device"
    assert stored_pngs(images_dir) == {} and temp_files(images_dir) == []
    metadata = metadata_of(client)
    try:
        assert metadata.expired_ids(now=time.time() + 10**9) == []  # no row at all
    finally:
        metadata.close()
    assert client.get("/healthz").status_code == 200 and before > 0


def test_a_full_disk_is_a_clear_500_then_recovers_when_space_returns(
    tmp_path: Path, make_settings: Callable[..., Settings], make_client: Callable[..., TestClient]
) -> None:
    """A real 4 MiB tmpfs under the image folder, filled; the database lives on another disk."""
    settings = make_settings()
    with tiny_tmpfs(settings.images_dir, "4m") as images_dir:
        client = make_client(settings)
        filler = _fill(images_dir, leave_bytes=16 * 1024)
        _assert_disk_full_is_a_clear_500_and_nothing_is_kept(client, images_dir)
        filler.unlink()
        recovered = generate(client, size="512x512")
        assert recovered.status_code == 200, recovered.text
        assert png_size(client.get(recovered.json()["data"][0]["url"]).content) == (512, 512)


def test_an_injected_enospc_at_the_store_boundary_is_the_same_clear_500(
    make_settings: Callable[..., Settings], make_client: Callable[..., TestClient], monkeypatch: Any
) -> None:
    """Where no tmpfs can be mounted: the same assertions with ENOSPC raised by fsync."""
    settings = make_settings()
    client = make_client(settings)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("cogserve.storage.files.os.fsync", no_space)
    _assert_disk_full_is_a_clear_500_and_nothing_is_kept(client, settings.images_dir)
    monkeypatch.undo()
    assert generate(client).status_code == 200


# -- database locked or unavailable ------------------------------------------------------------------


def test_a_locked_sqlite_database_is_a_503_then_recovers(
    make_settings: Callable[..., Settings], make_client: Callable[..., TestClient]
) -> None:
    """Another process holds SQLite's write lock past busy_timeout (5 s)."""
    settings = make_settings()
    client = make_client(settings)
    assert generate(client).status_code == 200
    holder = sqlite3.connect(settings.storage.data_dir / "cogserve.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        refused = generate(client)
        status, code, message = error_of(refused)
        assert (status, code) == (503, "1305") and refused.headers["Retry-After"] == "5"
        assert message.startswith("the database is unavailable, could not") and "retry shortly" in message
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert generate(client).status_code == 200


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, since the test stops it (others share the session one)."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    bindir = find_bindir()
    assert bindir is not None
    server = PostgresServer(bindir)
    server.start()
    yield server
    server.stop()


def test_postgresql_going_away_is_a_503_and_the_service_recovers_when_it_returns(
    own_postgres: PostgresServer,
    make_settings: Callable[..., Settings],
    make_client: Callable[..., TestClient],
) -> None:
    _, url = own_postgres.create_database()
    settings = make_settings(storage={"database_url": url})
    client = make_client(settings)
    made = generate(client)
    assert made.status_code == 200
    own_postgres.pause()
    try:
        for response in (generate(client), client.get("/readyz")):
            status, code, message = error_of(response)
            assert (status, code) == (503, "1305") and response.headers["Retry-After"] == "5"
            assert message.startswith("the database is unavailable")
        # Public image links need their row too: a clear 503, not a 404 that says it expired.
        status, code, _ = error_of(client.get(made.json()["data"][0]["url"]))
        assert (status, code) == (503, "1305")
    finally:
        own_postgres.resume()
    assert client.get("/readyz").status_code == 200
    again = generate(client)
    assert again.status_code == 200, again.text
    assert png_size(client.get(again.json()["data"][0]["url"]).content) == (512, 512)


# -- pipeline exceptions and out-of-memory under concurrent load --------------------------------------


def _fault_by_prompt(prompts: list[str]) -> Exception | None:
    """'crash' in a call's prompts makes the pipeline raise; 'nomem' makes it run out of memory."""
    if any("nomem" in p for p in prompts):
        return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    if any("crash" in p for p in prompts):
        return RuntimeError("CUDA error: an illegal memory access was encountered")
    return None


def test_pipeline_errors_and_oom_under_concurrent_load_fail_only_their_own_requests(
    make_settings: Callable[..., Settings], make_client: Callable[..., TestClient], models_dir: Path
) -> None:
    """Faults raised by the real pipeline's call, as a CUDA device raises them, 16 clients at once."""
    settings = make_settings(scheduler={"max_batch_size": 4, "max_batch_wait_ms": 50})
    engine = PipelineEngine(settings.model, models_dir)
    engine.load()
    engine._pipe = FaultyPipeline(engine._pipe, _fault_by_prompt)
    client = make_client(settings, engine=engine)
    prompts = [["a calm lake", "crash", "nomem", "a red fox"][i % 4] + f" {i}" for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda p: generate(client, prompt=p), prompts))
    outcomes: dict[str, list[tuple[int, str]]] = {"ok": [], "crash": [], "nomem": []}
    for prompt, response in zip(prompts, responses, strict=True):
        kind = "crash" if "crash" in prompt else "nomem" if "nomem" in prompt else "ok"
        if response.status_code == 200:
            outcomes[kind].append((200, ""))
            assert png_size(client.get(response.json()["data"][0]["url"]).content) == (512, 512)
        else:
            status, code, message = error_of(response)
            outcomes[kind].append((status, code))
            assert (status, code) == (500, "1230"), message
            expected = "illegal memory access" if kind == "crash" else "out of GPU memory"
            assert expected in message, message
    # The healthy requests all succeed: a batch-mate's failure is retried alone, not passed on.
    assert outcomes["ok"] == [(200, "")] * 8
    assert outcomes["crash"] == [(500, "1230")] * 4 and outcomes["nomem"] == [(500, "1230")] * 4
    # The server is whole afterwards: nothing stuck in the queue, and it keeps generating.
    ready = client.get("/readyz").json()
    assert (ready["queued"], ready["running"]) == (0, 0)
    assert generate(client, prompt="after the storm").status_code == 200
    metadata = metadata_of(client)
    try:
        assert len(metadata.expired_ids(now=time.time() + 10**9)) == 9  # the 8 healthy + 1 after
    finally:
        metadata.close()
