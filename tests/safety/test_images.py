"""Image moderation: NudeNet detections mapped to levels, and the checker factory."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cogserve.errors import ConfigError
from cogserve.safety import ImageVerdict, NudeNetChecker, Watermarker, create_image_checker
from cogserve.safety.image_checker import verdict_for

HAVE_NUDENET = importlib.util.find_spec("nudenet") is not None


def detection(name: str, score: float) -> dict[str, Any]:
    return {"class": name, "score": score, "box": [0, 0, 10, 10]}


@pytest.mark.parametrize(
    ("detections", "expected"),
    [
        ([], ImageVerdict(3, [])),
        ([detection("FACE_FEMALE", 0.9), detection("FEET_EXPOSED", 0.8)], ImageVerdict(3, [])),
        ([detection("MALE_BREAST_EXPOSED", 0.9), detection("BELLY_EXPOSED", 0.9)], ImageVerdict(3, [])),
        ([detection("FEMALE_BREAST_COVERED", 0.7)], ImageVerdict(2, ["FEMALE_BREAST_COVERED"])),
        ([detection("BUTTOCKS_EXPOSED", 0.6)], ImageVerdict(2, ["BUTTOCKS_EXPOSED"])),
        ([detection("FEMALE_GENITALIA_EXPOSED", 0.3)], ImageVerdict(3, [])),  # below the threshold
        (
            [detection("FEMALE_BREAST_COVERED", 0.9), detection("FEMALE_BREAST_EXPOSED", 0.55)],
            ImageVerdict(1, ["FEMALE_BREAST_EXPOSED"]),
        ),
        (
            [detection("ANUS_EXPOSED", 0.8), detection("MALE_GENITALIA_EXPOSED", 0.9)],
            ImageVerdict(1, ["ANUS_EXPOSED", "MALE_GENITALIA_EXPOSED"]),
        ),
    ],
)
def test_detections_map_to_levels(detections: list[dict[str, Any]], expected: ImageVerdict) -> None:
    assert verdict_for(detections, threshold=0.5) == expected


class RecordingDetector:
    def __init__(self, detections: list[dict[str, Any]]) -> None:
        self.detections = detections
        self.seen: list[np.ndarray[Any, Any]] = []

    def detect(self, image: Any) -> list[dict[str, Any]]:
        self.seen.append(image)
        return self.detections


def test_checker_hands_nudenet_bgr_pixels_and_uses_its_threshold() -> None:
    detector = RecordingDetector([detection("FEMALE_GENITALIA_EXPOSED", 0.6)])
    red = Image.new("RGBA", (64, 32), (255, 0, 0, 255))
    assert NudeNetChecker(detector=detector).check(red) == ImageVerdict(1, ["FEMALE_GENITALIA_EXPOSED"])
    (seen,) = detector.seen
    assert seen.shape == (32, 64, 3) and seen.dtype == np.uint8
    assert (seen[:, :, 2] == 255).all() and (seen[:, :, 0] == 0).all()  # what cv2.imread would give
    assert NudeNetChecker(threshold=0.7, detector=detector).check(red).level == 3


def test_checker_factory() -> None:
    assert create_image_checker(None) is None
    assert create_image_checker("none") is None
    with pytest.raises(ConfigError, match="unknown image checker 'clip'"):
        create_image_checker("clip")
    with pytest.raises(ConfigError, match="threshold"):
        NudeNetChecker(threshold=1.5, detector=RecordingDetector([]))


def test_missing_nudenet_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nudenet", None)  # makes `import nudenet` fail
    with pytest.raises(ConfigError, match=r'pip install "cogserve\[nudenet\]"'):
        create_image_checker("nudenet")


@pytest.mark.skipif(not HAVE_NUDENET, reason='needs the optional extra: pip install "cogserve[nudenet]"')
def test_real_nudenet_passes_harmless_images() -> None:
    checker = create_image_checker("nudenet")
    assert checker is not None and checker.name == "nudenet"
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    gradient = Image.linear_gradient("L").convert("RGB").resize((768, 1344))
    labelled = Watermarker().apply(gradient, "A" * 32)
    for image in (noise, gradient, labelled):
        assert checker.check(image) == ImageVerdict(3, [])
