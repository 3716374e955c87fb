"""Marking generated images as AI-generated, three ways, as China's labelling rules ask for.

- A visible label ("AI生成") in the bottom-right corner (``label.py``); BigModel lets a request turn
  it off with ``watermark_enabled=false``, so ``apply`` takes ``visible``.
- An invisible watermark (``invisible.py``) naming the server and the image, which survives a JPEG
  re-encode at quality 85 but not resizing or cropping.
- PNG text chunks saying the file is AI-generated, who made it and its id (``encode_png``).

The invisible payload is 84 bits, most significant first::

    version (4) = 1 | server tag (16) | image id prefix (48) | CRC-16 of the first 68 bits (16)

The server tag is the first 16 bits of SHA-256 of the server name: enough to tell a few deployments
apart, not to prove where an image came from. The id prefix is the first 8 characters of the image
id (ids are URL-safe base64, so 8 characters are exactly 6 bytes): an operator finds the image with
``id LIKE 'prefix%'``. The CRC (CCITT-FALSE) plus the version make an unmarked image read as
"no watermark" except about once in a million, instead of yielding a made-up id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, PngImagePlugin

from cogserve.errors import ConfigError
from cogserve.safety import invisible
from cogserve.safety.label import DEFAULT_LABEL, Label

PAYLOAD_BITS = 84
ID_PREFIX_CHARS = 8
_VERSION = 1
_BODY_BITS = PAYLOAD_BITS - 16
_SOFTWARE = "cogserve"
_ID_PREFIX = re.compile(f"[A-Za-z0-9_-]{{{ID_PREFIX_CHARS}}}")


@dataclass(frozen=True)
class WatermarkInfo:
    """A watermark whose checksum verified."""

    server_tag: str  # 4 hex digits
    image_id_prefix: str  # the first 8 characters of the image id
    #: The weakest bit's score, 0..1: 0.9+ in the PNG as written, 0.2..0.8 after JPEG q85 (noise-like
    #: images lowest); near 0, the next re-encode may lose it.
    margin: float

    def from_server(self, server_name: str) -> bool:
        return self.server_tag == server_tag(server_name)


class Watermarker:
    """Applies the visible label and the invisible watermark; built once, at start-up.

    Raises ``ConfigError`` when the font cannot draw ``label_text`` or the text is too long to fit.
    """

    def __init__(
        self,
        label_text: str = DEFAULT_LABEL,
        font_path: Path | None = None,
        server_name: str = _SOFTWARE,
        *,
        font_index: int = 0,
    ) -> None:
        if not server_name:
            raise ConfigError("watermark server name is empty")
        self.label = Label(label_text, font_path, font_index)
        self.server_name = server_name
        self.server_tag = server_tag(server_name)

    def apply(self, image: Image.Image, image_id: str, *, visible: bool = True) -> Image.Image:
        """A marked RGB copy of ``image``. The label goes on first, so the invisible mark covers it."""
        labelled = self.label.draw(image) if visible else image
        return invisible.embed(labelled, _payload(self.server_tag, image_id))

    def metadata(self, image_id: str) -> dict[str, str]:
        """PNG text chunks for ``encode_png``: the labelling standard's ``AIGC`` record (Label "1":
        AI-generated; ContentProducer: this server; ProduceID: the image id) and plain-text twins."""
        aigc = {"Label": "1", "ContentProducer": self.server_name, "ProduceID": image_id}
        return {
            "AIGC": json.dumps(aigc, ensure_ascii=False),
            "Software": _SOFTWARE,
            "Description": self.label.text,
            "ImageId": image_id,
        }


def server_tag(server_name: str) -> str:
    return hashlib.sha256(server_name.encode("utf-8")).hexdigest()[:4]


def read_watermark(image: Image.Image) -> WatermarkInfo | None:
    """The invisible watermark in ``image``, or None when there is none whose checksum verifies."""
    scores = invisible.extract(image, PAYLOAD_BITS)
    value = 0
    for score in scores:
        value = (value << 1) | int(score > 0)
    body, crc = value >> 16, value & 0xFFFF
    if body >> (_BODY_BITS - 4) != _VERSION or _crc(body) != crc:
        return None
    tag = (body >> 48) & 0xFFFF
    prefix = base64.urlsafe_b64encode((body & (2**48 - 1)).to_bytes(6, "big")).decode("ascii")
    return WatermarkInfo(f"{tag:04x}", prefix, round(float(abs(scores).min()), 3))


def describe_watermark(image: Image.Image, server_name: str | None = None) -> str:
    """One or two lines on what ``image`` carries, for ``cogserve verify-watermark``."""
    info = read_watermark(image)
    if info is None:
        found = (
            "no cogserve watermark found (none was written, or the image was resized, cropped, "
            "edited or recompressed too hard)"
        )
    else:
        whose = f"server tag {info.server_tag}"
        if server_name is not None:
            mine = "this server" if info.from_server(server_name) else "not this server"
            whose += f" ({mine}, {server_name!r})"
        found = (
            f"cogserve watermark: image id {info.image_id_prefix}..., {whose}; "
            f"weakest bit at {info.margin:.2f} of full strength"
        )
    aigc = image.info.get("AIGC")
    if isinstance(aigc, str):
        return f"{found}\nPNG metadata: AIGC {aigc}"
    return found


def encode_png(image: Image.Image, metadata: Mapping[str, str] | None = None) -> bytes:
    """PNG bytes with ``metadata`` as text chunks: tEXt when Latin-1 can hold the value, else iTXt."""
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        if not 1 <= len(key) <= 79 or not key.isascii() or key != key.strip():
            raise ValueError(f"PNG text keyword must be 1..79 ASCII characters, got {key!r}")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            info.add_itxt(key, value)
        else:
            info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _payload(tag: str, image_id: str) -> list[int]:
    prefix = image_id[:ID_PREFIX_CHARS]
    if not _ID_PREFIX.fullmatch(prefix):
        raise ValueError(f"image id {image_id!r} is not URL-safe base64 of 8+ characters")
    id_bytes = base64.urlsafe_b64decode(prefix)
    body = (_VERSION << 64) | (int(tag, 16) << 48) | int.from_bytes(id_bytes, "big")
    value = (body << 16) | _crc(body)
    return [(value >> (PAYLOAD_BITS - 1 - i)) & 1 for i in range(PAYLOAD_BITS)]


def _crc(body: int) -> int:
    # The 68 body bits, left-aligned in 9 bytes.
    return binascii.crc_hqx((body << (72 - _BODY_BITS)).to_bytes(9, "big"), 0xFFFF)
