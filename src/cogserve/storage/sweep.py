"""Keeping image bytes and rows in step: expiry, and what a crash can leave behind.

The invariant, for every store (local folder or S3): a *live* row (``expires_at`` in the future)
always has its image. Every order below follows from it.

- Storing (``ImageService._store``): image first, then the row. A failure in between leaves an
  image with no row, an orphan that the sweep below deletes once it is ``ORPHAN_GRACE_S`` old.
- Expiry: images first, then rows. The rows are already expired, and the /files route refuses an
  expired row whether or not its image is still there, so a failure in between (store or database
  down, process killed) leaves expired rows the next sweep finishes; never a live row without its
  image. The other order could leave images with no row, which only the slower orphan pass finds.
- Orphans: images with no row, older than the grace period, are deleted. Younger ones may be a
  write whose row is about to be committed.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from cogserve.storage.image_store import ImageStore
from cogserve.storage.metadata import MetadataStore

# An image with no row may be a write whose row is about to be committed; leave it this long.
ORPHAN_GRACE_S = 3600.0
# Orphan candidates are checked against the database this many at a time, so a bucket with
# millions of objects is walked in bounded memory.
_ORPHAN_BATCH = 1000


@dataclass(frozen=True)
class SweepReport:
    expired: int
    orphan_files: int
    temp_files: int

    def __bool__(self) -> bool:
        return bool(self.expired or self.orphan_files or self.temp_files)


def sweep(files: ImageStore, metadata: MetadataStore, now: float | None = None) -> SweepReport:
    """Delete expired images (image, then row), images with no row, and temp files of crashed writes.

    Raises ``StorageError`` when the store or the database fails; what was done stays done, and the
    next sweep picks up where this one stopped.
    """
    now = time.time() if now is None else now
    expired = 0
    while ids := metadata.expired_ids(now):
        files.delete_many(ids)
        expired += metadata.delete(ids)
    orphans = 0
    candidates = files.stored_ids(older_than_s=ORPHAN_GRACE_S)
    while batch := list(itertools.islice(candidates, _ORPHAN_BATCH)):
        known = metadata.known_ids(batch)
        unknown = [image_id for image_id in batch if image_id not in known]
        files.delete_many(unknown)
        orphans += len(unknown)
    temp = files.remove_stale_temp_files(older_than_s=ORPHAN_GRACE_S)
    return SweepReport(expired=expired, orphan_files=orphans, temp_files=temp)
