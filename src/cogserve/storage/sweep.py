"""Keeping files and rows in step: expiry, and what a crash can leave behind."""

from __future__ import annotations

import time
from dataclasses import dataclass

from cogserve.storage.files import LocalImageStore
from cogserve.storage.metadata import MetadataStore

# A file with no row may be a write whose row is about to be committed; leave it this long.
ORPHAN_GRACE_S = 3600.0


@dataclass(frozen=True)
class SweepReport:
    expired: int
    orphan_files: int
    temp_files: int

    def __bool__(self) -> bool:
        return bool(self.expired or self.orphan_files or self.temp_files)


def sweep(files: LocalImageStore, metadata: MetadataStore, now: float | None = None) -> SweepReport:
    """Delete expired images, files with no row, and temp files of crashed writes.

    For an expired image the file goes first, then the row: a crash in between leaves an expired
    row (already refused by the file route) that the next sweep finishes, never a live row without
    its file.
    """
    now = time.time() if now is None else now
    expired = 0
    while ids := metadata.expired_ids(now):
        for image_id in ids:
            files.delete(image_id)
        expired += metadata.delete(ids)
    candidates = list(files.stored_ids(older_than_s=ORPHAN_GRACE_S))
    known = metadata.known_ids(candidates)
    orphans = [image_id for image_id in candidates if image_id not in known]
    for image_id in orphans:
        files.delete(image_id)
    temp = files.remove_stale_temp_files(older_than_s=ORPHAN_GRACE_S)
    return SweepReport(expired=expired, orphan_files=len(orphans), temp_files=temp)
