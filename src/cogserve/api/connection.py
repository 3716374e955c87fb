"""uvicorn's HTTP protocol with a deadline on each request's head (slow-loris on headers).

uvicorn closes idle keep-alive connections, but sets no limit on a client still sending its request
line and headers, nor on a new connection that sends nothing at all: each holds a socket and a file
descriptor for as long as it likes, and a few thousand of them exhaust the server. This protocol
arms a timer when a connection opens and when a new request begins, and disarms it once the headers
are complete; the body has its own deadline (``server.body_timeout_s``, in ``api.middleware``). A
client slower than ``server.header_timeout_s`` gets a 408 in the BigModel envelope and is closed.
"""

from __future__ import annotations

import asyncio
import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cogserve.api.errors import envelope
from cogserve.errors import HeadTimeout

log = logging.getLogger(__name__)


def header_deadline_protocol(timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol (its default where httptools is installed) with a head deadline."""
    # No path is known yet (the head did not arrive), so the answer is in BigModel's envelope.
    status, body, headers = envelope(
        HeadTimeout(f"the request headers did not arrive within {timeout_s:g} s")
    )
    payload = json.dumps(body).encode()
    head = f"HTTP/1.1 {status} Request Timeout\r\ncontent-type: application/json\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    response = head.encode() + b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(payload), payload)

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()  # the next request on a kept-alive connection has begun to arrive

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(timeout_s, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                log.info("closing %s: no complete request head in %g s", self.client, timeout_s)
                self.transport.write(response)
                self.transport.close()

    return HeaderDeadlineProtocol
