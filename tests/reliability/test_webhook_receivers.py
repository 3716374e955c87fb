"""Hostile webhook receivers: one that answers with an endless body, one that trickles its answer.

Each is a real socket server on loopback; ``deliver`` must finish within the documented
per-delivery timeout, read only a little of the answer, and log the receiver's host, not its URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from cogserve.service.webhooks import MAX_ANSWER_BYTES, deliver
from cogserve.settings import JobSettings

Answer = Callable[[socket.socket], None]


class RawReceiver:
    """Accepts connections, reads the request head and body, then hands the socket to ``answer``."""

    def __init__(self, answer: Answer) -> None:
        self.answer, self.sent = answer, 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(connection,), daemon=True).start()

    def _one(self, connection: socket.socket) -> None:
        with connection:
            received = b""
            while b"\r\n\r\n" not in received:
                received += connection.recv(65536)
            head, _, body = received.partition(b"\r\n\r\n")
            length = int(
                next(
                    line.split(b":")[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
            )
            while len(body) < length:
                body += connection.recv(65536)
            with contextlib.suppress(OSError):  # the client went away: what a bounded client does
                self.answer(connection)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def receivers() -> Iterator[Callable[[Answer], RawReceiver]]:
    made: list[RawReceiver] = []

    def make(answer: Answer) -> RawReceiver:
        made.append(RawReceiver(answer))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def _settings(timeout_s: float) -> JobSettings:
    return JobSettings(webhook_attempts=1, webhook_backoff_s=0.01, webhook_timeout_s=timeout_s)


def test_a_300_mb_answer_is_dropped_after_a_small_cap(receivers: Callable[[Answer], RawReceiver]) -> None:
    huge = 300 * 1024 * 1024

    def flood(connection: socket.socket) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % huge)
        chunk = b"\0" * 65536
        while receiver.sent < huge:
            connection.sendall(chunk)
            receiver.sent += len(chunk)

    receiver = receivers(flood)
    tracemalloc.start()
    started = time.monotonic()
    try:
        state, attempts = asyncio.run(
            deliver(f"http://127.0.0.1:{receiver.port}/hook", {"id": "j"}, _settings(10), "job-1")
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (state, attempts) == ("delivered", 1)
    assert time.monotonic() - started < 10
    assert peak < 8 * 1024 * 1024, f"{peak} bytes held for a {huge}-byte answer"
    time.sleep(0.2)
    assert receiver.sent < 32 * 1024 * 1024  # it stopped reading: only the socket buffers took more
    assert MAX_ANSWER_BYTES <= 64 * 1024


def test_a_trickling_receiver_cannot_hold_a_delivery_past_its_timeout(
    receivers: Callable[[Answer], RawReceiver], caplog: pytest.LogCaptureFixture
) -> None:
    def trickle(connection: socket.socket) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            connection.sendall(b"x")
            time.sleep(0.3)  # well inside httpx's per-read timeout, every time

    receiver = receivers(trickle)
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    url = f"http://127.0.0.1:{receiver.port}/hook?token=SECRET-TOKEN"
    state, attempts = asyncio.run(deliver(url, {"id": "j"}, _settings(1.5), "job-2"))
    elapsed = time.monotonic() - started
    assert (state, attempts) == ("failed", 1)
    assert 1.4 < elapsed < 4, elapsed
    # cogserve's own lines (httpx's, which quote the URL, are off under configure_logging).
    ours = "\n".join(record.getMessage() for record in caplog.records if record.name.startswith("cogserve"))
    assert "within 1.5 s" in ours and f"127.0.0.1:{receiver.port}" in ours
    assert "SECRET-TOKEN" not in ours and "/hook" not in ours
