"""``create_image_store``: the image store the settings name.

Apart from ``image_store``, so that the stores (``files``, ``s3``) and the protocol they implement
import nothing that imports them back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cogserve.errors import ConfigError
from cogserve.storage.files import LocalImageStore
from cogserve.storage.image_store import ImageStore

if TYPE_CHECKING:
    from cogserve.settings import Settings


def create_image_store(settings: Settings) -> ImageStore:
    """The store ``settings.storage.image_store`` names: S3 for an s3:// URL, else the data dir."""
    storage = settings.storage
    if storage.image_store is None:
        return LocalImageStore(settings.images_dir)
    try:
        # Imported only here: boto3 comes with an extra (``s3``) that may not be installed.
        from cogserve.storage.s3 import S3ImageStore
    except ImportError as exc:
        raise ConfigError(
            f"image_store is {storage.image_store}, which needs boto3: pip install 'cogserve[s3]'"
        ) from exc
    return S3ImageStore.from_settings(storage)
