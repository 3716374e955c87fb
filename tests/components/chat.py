"""A real OpenAI-compatible chat-completions server on loopback, scripted by the test that starts it.

``ChatServer`` answers ``POST /v1/chat/completions`` from a thread of the test process. A test sets
``reply`` (a function of the parsed request body returning ``Reply``) and reads ``requests`` (each
body and headers received). Use it through the ``chat_server`` fixture::

    from tests.components.chat import chat_server  # noqa: F401  (the fixture)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Reply:
    """One answer: a caption (wrapped as a chat completion) or a raw body, after ``delay_s``."""

    content: str | None = None
    status: int = 200
    raw: bytes | None = None
    delay_s: float = 0.0
    finish_reason: str = "stop"


@dataclass
class Received:
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class ChatServer:
    base_url: str
    reply: Callable[[dict[str, Any]], Reply] = lambda body: Reply("a caption")
    requests: list[Received] = field(default_factory=list)

    def answer(self, *replies: Reply) -> None:
        """Answer with these replies in turn, the last one repeated."""
        queue = list(replies)

        def next_reply(body: dict[str, Any]) -> Reply:
            return queue.pop(0) if len(queue) > 1 else queue[0]

        self.reply = next_reply


def _completion(reply: Reply, model: str) -> bytes:
    message = {"role": "assistant", "content": reply.content}
    choice = {"index": 0, "message": message, "finish_reason": reply.finish_reason}
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
        }
    ).encode()


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    with serving_chat() as state:
        yield state


@contextmanager
def serving_chat() -> Iterator[ChatServer]:
    """A chat server for as long as the block lasts (the fixture's, or a longer-lived one's)."""
    state = ChatServer(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length))
            state.requests.append(Received(body, dict(self.headers.items())))
            if self.path != "/v1/chat/completions":
                self._send(404, b'{"error": "not found"}')
                return
            reply = state.reply(body)
            time.sleep(reply.delay_s)
            payload = reply.raw if reply.raw is not None else _completion(reply, body.get("model", ""))
            self._send(reply.status, payload)

        def _send(self, status: int, payload: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
