"""Content safety: prompt moderation, image moderation and AI-content watermarks.

Pure functions and classes on plain arguments; the service decides when to call them and maps
their levels to ``content_filter`` entries and errors. Configuration problems raise ``ConfigError``.
"""

from cogserve.safety.image_checker import ImageChecker, ImageVerdict, NudeNetChecker, create_image_checker
from cogserve.safety.label import DEFAULT_LABEL
from cogserve.safety.moderation import (
    CLEAN_LEVEL,
    DEFAULT_BLOCK_THRESHOLD,
    Category,
    Hit,
    ModerationResult,
    Policy,
    load_policy,
)
from cogserve.safety.watermark import (
    Watermarker,
    WatermarkInfo,
    describe_watermark,
    encode_png,
    read_watermark,
    server_tag,
)

__all__ = [
    "CLEAN_LEVEL",
    "DEFAULT_BLOCK_THRESHOLD",
    "DEFAULT_LABEL",
    "Category",
    "Hit",
    "ImageChecker",
    "ImageVerdict",
    "ModerationResult",
    "NudeNetChecker",
    "Policy",
    "WatermarkInfo",
    "Watermarker",
    "create_image_checker",
    "describe_watermark",
    "encode_png",
    "load_policy",
    "read_watermark",
    "server_tag",
]
