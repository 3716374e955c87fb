"""Watermarks: the invisible payload survives PNG and JPEG q85, the label sits in its corner, the PNG
says it is AI-generated, and unmarked images are reported as unmarked."""

from __future__ import annotations

import io
import json
import secrets
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cogserve.errors import ConfigError
from cogserve.safety import Watermarker, describe_watermark, encode_png, read_watermark, server_tag
from cogserve.safety.label import Label

SIZES = [(512, 512), (1024, 1024), (768, 1344)]


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """Random colours, like the built-in tiny model's output: the hardest case for JPEG."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def gradient(width: int, height: int, seed: int = 0) -> Image.Image:
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    rgb = np.stack([200 * x + 0 * y + 30, 180 * y + 0 * x + 40, 100 * (x + y) / 2 + 100], axis=2)
    return Image.fromarray(rgb.astype(np.uint8))


def mixed(width: int, height: int, seed: int = 0) -> Image.Image:
    """Left half a noisy gradient, right half flat 64 px tiles of random colour."""
    rng = np.random.default_rng(seed)
    left = np.asarray(gradient(width, height), dtype=np.int16) + rng.integers(-40, 41, (height, width, 3))
    tiles = rng.integers(0, 256, (height // 64 + 1, width // 64 + 1, 3)).repeat(64, 0).repeat(64, 1)
    rgb = np.where(np.arange(width)[None, :, None] < width // 2, left, tiles[:height, :width])
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


CONTENT: dict[str, Callable[[int, int], Image.Image]] = {"noise": noise, "gradient": gradient, "mixed": mixed}


@pytest.fixture(scope="module")
def marker() -> Watermarker:
    return Watermarker(server_name="gpu-7.example")


def reopen_png(image: Image.Image, metadata: dict[str, str] | None = None) -> Image.Image:
    return Image.open(io.BytesIO(encode_png(image, metadata or {})))


def reencode_jpeg(image: Image.Image, quality: int = 85) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("kind", sorted(CONTENT))
@pytest.mark.parametrize(("width", "height"), SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_payload_survives_png_and_jpeg_q85(marker: Watermarker, kind: str, width: int, height: int) -> None:
    image_id = secrets.token_urlsafe(24)
    marked = marker.apply(CONTENT[kind](width, height), image_id)
    assert marked.size == (width, height)
    for copy in (reopen_png(marked), reencode_jpeg(marked)):
        info = read_watermark(copy)
        assert info is not None
        assert info.image_id_prefix == image_id[:8]
        assert info.from_server("gpu-7.example")
        assert not info.from_server("cogserve")


def test_watermark_is_not_visible_as_damage(marker: Watermarker) -> None:
    """Outside the label, the mark changes chroma slightly; PSNR above 40 dB on every content kind."""
    for make in CONTENT.values():
        original = make(512, 512)
        marked = marker.apply(original, secrets.token_urlsafe(24), visible=False)
        diff = np.asarray(marked, dtype=np.float64) - np.asarray(original, dtype=np.float64)
        assert 10 * np.log10(255**2 / np.mean(diff**2)) > 40
        assert np.abs(diff).max() <= 16  # no wrapped-round pixels


def test_mark_on_a_smooth_gradient_is_grain_not_bands(marker: Watermarker) -> None:
    """Neighbouring 8x8 blocks must move independently: equal moves over a smooth area show up as
    visible diagonal bands of colour."""
    original = gradient(1024, 1024)
    marked = marker.apply(original, "A" * 32, visible=False)
    blue = np.asarray(marked, dtype=np.float64)[:, :, 2] - np.asarray(original, dtype=np.float64)[:, :, 2]
    per_block = blue.reshape(128, 8, 128, 8).mean(axis=(1, 3))
    assert abs(np.corrcoef(per_block[:, :-1].ravel(), per_block[:, 1:].ravel())[0, 1]) < 0.15


@pytest.mark.parametrize("kind", [*sorted(CONTENT), "flat"])
def test_unmarked_images_read_as_unmarked(kind: str) -> None:
    image = Image.new("RGB", (512, 512), "gray") if kind == "flat" else CONTENT[kind](512, 512)
    assert read_watermark(image) is None
    assert describe_watermark(image).startswith("no cogserve watermark found")


def test_checksum_rejects_random_bits() -> None:
    """Unmarked noise decodes to random bits; the version and CRC must turn them all away."""
    assert all(read_watermark(noise(512, 512, seed)) is None for seed in range(1, 30))


def test_a_resized_copy_reads_as_unmarked_not_as_a_wrong_id(marker: Watermarker) -> None:
    marked = marker.apply(noise(1024, 1024), secrets.token_urlsafe(24))
    assert read_watermark(marked.resize((960, 960))) is None


def test_label_changes_only_the_bottom_right_corner() -> None:
    for width, height in [*SIZES, (2048, 2048)]:
        original = Image.new("RGB", (width, height), (128, 128, 128))
        labelled = Label().draw(original)
        changed = np.argwhere(np.any(np.asarray(labelled) != np.asarray(original), axis=2))
        top, left = changed.min(axis=0)
        bottom, right = changed.max(axis=0)
        short = min(width, height)
        assert left > width - 0.3 * short and top > height - 0.15 * short  # only the corner
        assert right < width - 1 and bottom < height - 1  # with a margin to the edges
        # The box is at least as tall as the rules' 5% text plus padding, and scales with the image.
        assert 0.07 * short < bottom - top < 0.12 * short
        corner = np.asarray(labelled)[top : bottom + 1, left : right + 1]
        assert (corner < 90).all(axis=2).mean() > 0.5  # mostly the darkened box
        assert (corner > 200).all(axis=2).any()  # with white text on it


def test_hiding_the_label_leaves_red_untouched(marker: Watermarker) -> None:
    """The invisible mark moves only blue and green; red changes only where the label is."""
    original = gradient(1024, 1024)
    red = np.asarray(original)[:, :, 0]
    assert np.array_equal(np.asarray(marker.apply(original, "A" * 32, visible=False))[:, :, 0], red)
    labelled_red = np.asarray(marker.apply(original, "A" * 32))[:, :, 0]
    rows, cols = np.nonzero(labelled_red != red)
    assert rows.min() > 900 and cols.min() > 700


def test_png_carries_the_ai_generated_metadata(marker: Watermarker) -> None:
    image_id = secrets.token_urlsafe(24)
    marked = marker.apply(gradient(512, 512), image_id)
    reopened = reopen_png(marked, marker.metadata(image_id))
    assert json.loads(reopened.info["AIGC"]) == {
        "Label": "1",
        "ContentProducer": "gpu-7.example",
        "ProduceID": image_id,
    }
    assert reopened.info["Software"] == "cogserve"
    assert reopened.info["Description"] == "AI生成"  # not Latin-1: stored as UTF-8 iTXt
    assert reopened.info["ImageId"] == image_id
    assert np.array_equal(np.asarray(reopened), np.asarray(marked))  # the pixels are lossless


def test_describe_watermark_for_the_cli(marker: Watermarker) -> None:
    image_id = secrets.token_urlsafe(24)
    marked = marker.apply(noise(512, 512), image_id)
    text = describe_watermark(reopen_png(marked, marker.metadata(image_id)), "gpu-7.example")
    first, second = text.splitlines()
    assert image_id[:8] in first and server_tag("gpu-7.example") in first and "this server" in first
    assert image_id in second and "AIGC" in second
    assert "not this server" in describe_watermark(marked, "cogserve")


def test_label_text_the_font_cannot_draw_is_refused() -> None:
    with pytest.raises(ConfigError, match="no glyph for '猫'"):
        Watermarker(label_text="AI猫")
    Watermarker(label_text="人工智能生成")  # the shipped subset covers the common variants
    Watermarker(label_text="Generated by AI")


def test_other_label_fonts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load label font"):
        Watermarker(font_path=tmp_path / "missing.ttf")
    dejavu = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    if dejavu.exists():  # a Latin-only font: fine for Latin text, refused for Chinese
        Label("AI generated", font_path=dejavu).draw(Image.new("RGB", (512, 512)))
        with pytest.raises(ConfigError, match="no glyph"):
            Label("AI生成", font_path=dejavu)


def test_label_too_long_to_fit_is_refused() -> None:
    with pytest.raises(ConfigError, match="too long"):
        Watermarker(label_text="AI generated " * 4)
    with pytest.raises(ConfigError, match="empty"):
        Watermarker(label_text="  ")


def test_malformed_image_id_is_a_programming_error(marker: Watermarker) -> None:
    with pytest.raises(ValueError, match="URL-safe base64"):
        marker.apply(gradient(512, 512), "short")
    with pytest.raises(ValueError, match="URL-safe base64"):
        marker.apply(gradient(512, 512), "not+base64/id" * 3)


def test_png_keywords_are_checked() -> None:
    with pytest.raises(ValueError, match="keyword"):
        encode_png(gradient(512, 512), {"": "x"})
