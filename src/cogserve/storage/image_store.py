"""What every image store is: the ``ImageStore`` protocol, the ``ImageObject`` it opens, image ids.

Two implementations: ``files.LocalImageStore`` (a folder in the data dir, the default) and
``s3.S3ImageStore`` (any S3-compatible store, the ``s3`` extra); ``factory.create_image_store``
picks one from settings. Both address images only by ids that match ``IMAGE_ID_RE``, and both
raise ``StorageError`` for every failure of their backend. This module imports neither, so both
import it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# 24 random bytes, URL-safe base64: 192 bits, so URLs are unguessable capabilities.
_ID_BYTES = 24
IMAGE_ID_RE = re.compile(r"[A-Za-z0-9_-]{32}")


def new_image_id() -> str:
    return secrets.token_urlsafe(_ID_BYTES)


def is_image_id(value: str) -> bool:
    return IMAGE_ID_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class ImageObject:
    """A stored image opened for sending.

    A local file has ``path`` (the route hands it to sendfile); a remote object has ``chunks``, an
    iterator over its open body that closes the body when it ends or is closed, and blocks on the
    network (iterate it off the event loop).
    """

    size: int
    path: Path | None = None
    chunks: Iterator[bytes] | None = None


class ImageStore(Protocol):
    """PNG bytes by image id. Every method raises ``StorageError`` when the backend fails."""

    @property
    def location(self) -> str:
        """Where the images are, for logs: a folder, or an s3:// URL and its endpoint."""
        ...

    def check(self) -> None:
        """Fail with ``StorageError`` unless images can be stored (the folder, or the bucket)."""
        ...

    def write(self, image_id: str, data: bytes) -> None:
        """Store the image atomically: readers see the whole image or none, even after a crash."""
        ...

    def delete(self, image_id: str) -> None:
        """Remove the image; one that is not there is no error."""
        ...

    def delete_many(self, image_ids: Sequence[str]) -> None:
        """``delete`` for many ids, in as few round trips as the backend allows."""
        ...

    def size(self, image_id: str) -> int | None:
        """The image's size in bytes, or None when it is not stored."""
        ...

    def exists(self, image_id: str) -> bool: ...

    def open(self, image_id: str) -> ImageObject | None:
        """The image, ready to send, or None when it is not stored."""
        ...

    def stored_ids(self, older_than_s: float = 0.0) -> Iterator[str]:
        """Ids of stored images written at least ``older_than_s`` seconds ago (for orphan sweeps)."""
        ...

    def remove_stale_temp_files(self, older_than_s: float) -> int:
        """Delete partial writes a crash left behind; returns how many. Nothing to do on S3, where a
        put is atomic per object."""
        ...

    def presigned_url(self, image_id: str, expires_in_s: int) -> str | None:
        """A URL that fetches the image without credentials for ``expires_in_s`` seconds (capped at
        the backend's limit), or None where the backend has no such URLs (local files)."""
        ...
