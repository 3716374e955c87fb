"""Image bytes (a local folder or any S3-compatible store) and their metadata (SQL)."""

from cogserve.storage.factory import create_image_store
from cogserve.storage.files import LocalImageStore
from cogserve.storage.image_store import ImageObject, ImageStore, is_image_id, new_image_id
from cogserve.storage.metadata import ImageRow, MetadataStore

__all__ = [
    "ImageObject",
    "ImageRow",
    "ImageStore",
    "LocalImageStore",
    "MetadataStore",
    "create_image_store",
    "is_image_id",
    "new_image_id",
]
