"""What a request means: validate -> (moderate) -> generate -> store -> respond."""

from cogserve.service.images import ImageJob, ImageService, StoredImage
from cogserve.storage.sweep import SweepReport

__all__ = ["ImageJob", "ImageService", "StoredImage", "SweepReport"]
