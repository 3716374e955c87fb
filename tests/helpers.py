"""Small helpers the tests share."""

from __future__ import annotations

import io
import json
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from cogserve.engine import BatchItem, Engine, GenerationOutput, ModelInfo
from cogserve.service.access import AccessControl
from cogserve.settings import Settings
from cogserve.storage import ImageRow, MetadataStore

IMAGES = "/api/paas/v4/images/generations"


# -- images ----------------------------------------------------------------------------------------


def open_png(data: bytes) -> Image.Image:
    """PNG bytes decoded to the last pixel; fails on anything else, or on a truncated or corrupt PNG."""
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG", image.format
    image.load()  # decodes every IDAT chunk and checks the CRCs
    return image


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of PNG bytes that decode to the last pixel; fails on anything else."""
    with open_png(data) as image:
        return image.size


def pixels(data: bytes) -> np.ndarray:
    """The RGB pixels of encoded image bytes, as int16 so that differences do not wrap around."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def make_png(width: int, height: int, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """A plain one-colour RGB PNG of the given size."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def change_one_pixel(png: bytes) -> bytes:
    """``png`` (8-bit RGB) with one pixel's red value changed and every other chunk (a C2PA manifest
    included) kept as it was, in place: the image data is re-deflated unfiltered, its CRC recomputed."""
    chunks: list[tuple[bytes, bytes]] = []
    at = 8
    while at < len(png):
        length = int.from_bytes(png[at : at + 4], "big")
        chunks.append((png[at + 4 : at + 8], png[at + 8 : at + 8 + length]))
        at += 12 + length
    rgb = np.array(Image.open(io.BytesIO(png)).convert("RGB"))
    rgb[0, 0, 0] ^= 0x01
    raw = b"".join(b"\x00" + row.tobytes() for row in rgb)  # filter type 0 (None) on every row
    out = bytearray(png[:8])
    idat_written = False
    for kind, data in chunks:
        if kind == b"IDAT":
            if idat_written:
                continue
            data, idat_written = zlib.compress(raw), True
        out += len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    return bytes(out)


def fetch_png(client: TestClient, url: str) -> bytes:
    """GET an image URL through the test client: a 200 with an image/png body."""
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return response.content


def download_png(url: str) -> bytes:
    """GET an image URL from a real server over HTTP: a 200 with an image/png body."""
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return response.content


# -- API calls and what they stored ------------------------------------------------------------------


def generate(client: TestClient, **body: Any) -> Any:
    payload = {"model": "cogview-4", "prompt": "a cute kitten", "size": "512x512", **body}
    return client.post(IMAGES, json=payload)


def image_id_of(url: str) -> str:
    # Also for presigned S3 URLs: .../<2 chars>/<id>.png?X-Amz-...
    return url.split("?", 1)[0].rsplit("/", 1)[1].removesuffix(".png")


def settings_of(client: TestClient) -> Settings:
    return client.app.state.cogserve.settings  # type: ignore[attr-defined,no-any-return]


def access_of(client: TestClient) -> AccessControl:
    return client.app.state.cogserve.access  # type: ignore[attr-defined,no-any-return]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def metadata_of(client: TestClient) -> MetadataStore:
    """A separate connection to the app's metadata DB: what is really committed."""
    return MetadataStore(client.app.state.cogserve.settings.database_url)  # type: ignore[attr-defined]


def row_of(client: TestClient, url: str) -> ImageRow:
    store = metadata_of(client)
    try:
        row = store.get(image_id_of(url))
    finally:
        store.close()
    assert row is not None
    return row


class DelegatingEngine:
    """The real engine behind a test wrapper; subclasses override what they inject (faults, gates)."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner

    @property
    def info(self) -> ModelInfo:
        return self.inner.info

    def load(self) -> None:
        self.inner.load()

    def warmup(self) -> None:
        self.inner.warmup()

    def attach_loras(self, registry: Any) -> None:
        self.inner.attach_loras(registry)

    def count_prompt_tokens(self, prompt: str) -> int:
        return self.inner.count_prompt_tokens(prompt)

    def generate_batch(self, items: Sequence[BatchItem]) -> list[GenerationOutput]:
        return self.inner.generate_batch(items)


class CountingEngine(DelegatingEngine):
    """The real engine, counting images and optionally held at a gate (open to begin with)."""

    def __init__(self, inner: Engine) -> None:
        super().__init__(inner)
        self.images = 0
        self.gate = threading.Event()
        self.gate.set()

    def generate_batch(self, items: Sequence[BatchItem]) -> list[GenerationOutput]:
        self.gate.wait(30)
        self.images += len(items)
        return self.inner.generate_batch(items)


class StepGateEngine(DelegatingEngine):
    """The real engine, holding every pipeline call after its first step until ``gate`` opens.

    Lets a test see a request running (progress > 0) and act on it mid-generation. ``prompts``
    records what reached the pipeline.
    """

    def __init__(self, inner: Engine) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.stepped = threading.Event()
        self.prompts: list[str] = []

    def generate_batch(self, items: Sequence[BatchItem]) -> list[GenerationOutput]:
        self.prompts.extend(item.params.prompt for item in items)
        return self.inner.generate_batch([replace(item, on_progress=self._hold(item)) for item in items])

    def _hold(self, item: BatchItem) -> Callable[[int, int], None]:
        def on_progress(step: int, total: int) -> None:
            if item.on_progress is not None:
                item.on_progress(step, total)
            if step == 1:
                self.stepped.set()
                self.gate.wait(30)

        return on_progress


class FaultyPipeline:
    """Wraps the real CogView4Pipeline; ``fault(prompts)`` may return an exception to raise."""

    def __init__(self, inner: Any, fault: Callable[[list[str]], Exception | None]) -> None:
        self.inner, self.fault = inner, fault

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, *, prompt: list[str], **kwargs: Any) -> Any:
        error = self.fault(prompt)
        if error is not None:
            raise error
        return self.inner(prompt=prompt, **kwargs)


class WebhookReceiver:
    """A real HTTP server on loopback taking webhooks; fails its first ``failures`` POSTs with 500.

    ``attempts`` counts every POST, ``bodies`` holds the JSON of the accepted ones.
    """

    def __init__(self, failures: int = 0) -> None:
        self.failures, self.attempts = failures, 0
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.attempts += 1
                status = 500 if receiver.attempts <= receiver.failures else 200
                if status == 200:
                    receiver.bodies.append(payload)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def __enter__(self) -> WebhookReceiver:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
