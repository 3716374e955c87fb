"""Image bytes on the local disk, written atomically, addressed only by validated ids."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from cogserve.errors import StorageError
from cogserve.storage.image_store import ImageObject, is_image_id

_TEMP_SUFFIX = ".tmp"


class LocalImageStore:
    """PNG files under ``root/<first two id chars>/<id>.png`` (an ``ImageStore``).

    Only ids matching ``image_store.IMAGE_ID_RE`` ever become paths, so no client string reaches the
    filesystem. Writes go to a temp file in the same folder, are fsynced, then renamed: a reader sees
    the whole file or none, even after a crash.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def location(self) -> str:
        return str(self.root)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the image folder: {exc.strerror or exc}") from exc

    def path_for(self, image_id: str) -> Path:
        if not is_image_id(image_id):
            raise ValueError(f"not an image id: {image_id!r}")
        return self.root / image_id[:2] / f"{image_id}.png"

    def write(self, image_id: str, data: bytes) -> None:
        target = self.path_for(image_id)
        try:
            atomic_write(target, data)
        except OSError as exc:
            raise StorageError(f"could not store image: {exc.strerror or exc}") from exc

    def exists(self, image_id: str) -> bool:
        return self.path_for(image_id).is_file()

    def size(self, image_id: str) -> int | None:
        try:
            return self.path_for(image_id).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"could not read image: {exc.strerror or exc}") from exc

    def open(self, image_id: str) -> ImageObject | None:
        # Nothing is opened here: the route sends the path with sendfile.
        size = self.size(image_id)
        return None if size is None else ImageObject(size=size, path=self.path_for(image_id))

    def delete(self, image_id: str) -> None:
        try:
            self.path_for(image_id).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"could not delete image: {exc.strerror or exc}") from exc

    def delete_many(self, image_ids: Sequence[str]) -> None:
        for image_id in image_ids:
            self.delete(image_id)

    def presigned_url(self, image_id: str, expires_in_s: int) -> str | None:
        return None

    def stored_ids(self, older_than_s: float = 0.0) -> Iterator[str]:
        """Ids of stored images whose file is at least ``older_than_s`` seconds old."""
        cutoff = time.time() - older_than_s
        for path in self.root.glob("??/*.png"):
            if is_image_id(path.stem) and _mtime(path) <= cutoff:
                yield path.stem

    def remove_stale_temp_files(self, older_than_s: float) -> int:
        """Delete temp files a crashed writer left behind."""
        cutoff, removed = time.time() - older_than_s, 0
        for path in self.root.glob(f"??/.*{_TEMP_SUFFIX}"):
            if _mtime(path) <= cutoff:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed


def atomic_write(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` so that readers see the old file, or the whole new one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=_TEMP_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")
