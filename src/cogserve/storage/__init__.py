"""Image bytes (local files) and their metadata (SQL)."""

from cogserve.storage.files import LocalImageStore, is_image_id, new_image_id
from cogserve.storage.metadata import ImageRow, MetadataStore

__all__ = ["ImageRow", "LocalImageStore", "MetadataStore", "is_image_id", "new_image_id"]
