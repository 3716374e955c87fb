"""What a request means: admit -> moderate -> generate -> mark -> store -> respond; async jobs."""

from cogserve.service.generation import ImageRequest, ImageService, Safety, StoredImage
from cogserve.storage.sweep import SweepReport

__all__ = ["ImageRequest", "ImageService", "Safety", "StoredImage", "SweepReport"]
