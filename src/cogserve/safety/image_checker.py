"""Image moderation after generation: a checker looks at the pixels and returns a level.

Levels are those of the prompt check (0 most severe ... 3 clean), so the caller can apply the same
block threshold to both. The one real checker is NudeNet's offline ONNX detector. It is an optional
extra because its wheel is AGPL-3.0 licensed (and pulls onnxruntime and headless OpenCV: ~100 MB of wheels):
an operator who enables it opts into that licence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from cogserve.errors import ConfigError
from cogserve.safety.moderation import CLEAN_LEVEL

#: Exposed sexual anatomy: refused at the default threshold.
EXPLICIT_CLASSES = frozenset(
    {"FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED", "ANUS_EXPOSED"}
)
#: Covered or partly exposed: reported as level 2, not refused. NudeNet's other classes (faces,
#: feet, armpits, belly, a bare male chest) say nothing about sexual content and are ignored.
SUGGESTIVE_CLASSES = frozenset(
    {
        "BUTTOCKS_EXPOSED",
        "FEMALE_GENITALIA_COVERED",
        "FEMALE_BREAST_COVERED",
        "BUTTOCKS_COVERED",
        "ANUS_COVERED",
    }
)


@dataclass(frozen=True)
class ImageVerdict:
    level: int = CLEAN_LEVEL
    #: What was found, e.g. ``["FEMALE_BREAST_EXPOSED"]``; empty when clean.
    labels: list[str] = field(default_factory=list)


class ImageChecker(Protocol):
    name: str

    def check(self, image: Image.Image) -> ImageVerdict: ...


class _Detector(Protocol):
    def detect(self, image: Any) -> list[dict[str, Any]]: ...


class NudeNetChecker:
    """NudeNet 3's bundled 320 px detector on onnxruntime (CPU: ~0.1 s an image; ~0.3 s to load).

    ``threshold`` is the detection score a class needs to count; NudeNet reports anything above 0.2.
    """

    name = "nudenet"

    def __init__(self, threshold: float = 0.5, *, detector: _Detector | None = None) -> None:
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"nudenet threshold must be between 0 and 1, got {threshold}")
        self.threshold = threshold
        self._detector = detector if detector is not None else _load_nudenet()

    def check(self, image: Image.Image) -> ImageVerdict:
        # NudeNet's own file path reads with cv2.imread, i.e. BGR; hand it the same layout.
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        return verdict_for(self._detector.detect(bgr), self.threshold)


def verdict_for(detections: Sequence[dict[str, Any]], threshold: float) -> ImageVerdict:
    """Map NudeNet detections (``{"class": ..., "score": ...}``) to a level and labels."""
    found = {d["class"] for d in detections if float(d["score"]) >= threshold}
    explicit = sorted(found & EXPLICIT_CLASSES)
    if explicit:
        return ImageVerdict(1, explicit)
    suggestive = sorted(found & SUGGESTIVE_CLASSES)
    if suggestive:
        return ImageVerdict(2, suggestive)
    return ImageVerdict()


def create_image_checker(name: str | None) -> ImageChecker | None:
    """The checker a setting names: ``None`` or ``"none"`` (no image check) or ``"nudenet"``."""
    if name is None or name == "none":
        return None
    if name == "nudenet":
        return NudeNetChecker()
    raise ConfigError(f"unknown image checker {name!r}: use none or nudenet")


def _load_nudenet() -> _Detector:
    try:
        from nudenet import NudeDetector
    except ImportError as exc:
        raise ConfigError(
            'the nudenet image checker is not installed: pip install "cogserve[nudenet]" '
            "(AGPL-3.0 licensed, hence optional)"
        ) from exc
    detector: _Detector = NudeDetector()
    return detector
