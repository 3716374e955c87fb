"""The visible label: short text on a translucent box in the bottom-right corner.

China's rules for labelling AI-generated content ask for an explicit label on the image itself, in
a corner or along an edge, with text at least 5% of the image's shorter side tall; BigModel stamps
"AI生成" the same way. The label scales with the image so it keeps that proportion from 512 to
2048 px.

The default font is a subset of Noto Sans CJK SC Bold (SIL OFL 1.1, see ``fonts/``) holding ASCII
and the glyphs of a few common labels (AI生成, 人工智能生成, 人工智能合成, 内容由AI生成). Other text
needs ``font_path``: any TrueType/OpenType font (``font_index`` picks a face inside a .ttc), e.g.
Debian's fonts-noto-cjk at /usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc, index 2 (SC).
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from cogserve.errors import ConfigError

DEFAULT_LABEL = "AI生成"

TEXT_HEIGHT = 0.05  # of the shorter side: the rules' minimum
_PAD = 0.4  # box padding, in text heights
_MARGIN = 0.02  # gap between box and image edges, of the shorter side
_BOX = (0, 0, 0, 140)  # black at 55% opacity: readable on light and dark images
_INK = (255, 255, 255, 240)
_REF_SIZE = 200  # font size the text is measured at, once
_MISSING = "\U0010fffd"  # a private-use code point no font maps: renders as the font's .notdef


def _default_font() -> Path:
    return Path(str(resources.files("cogserve.safety").joinpath("fonts/CogserveLabelSans-Bold.otf")))


class Label:
    """A label text with a font that can draw every one of its characters, checked up front."""

    def __init__(self, text: str = DEFAULT_LABEL, font_path: Path | None = None, font_index: int = 0) -> None:
        if not text.strip():
            raise ConfigError("watermark label text is empty")
        self.text = text
        self.font_path = font_path or _default_font()
        self.font_index = font_index
        ref = self._font(_REF_SIZE)
        missing = [ch for ch in dict.fromkeys(text) if not ch.isspace() and _renders_as_missing(ref, ch)]
        if missing:
            raise ConfigError(
                f"font {self.font_path} has no glyph for {''.join(missing)!r} in the label {text!r}: "
                "pass a font that covers it (font_path)"
            )
        left, top, right, bottom = ref.getbbox(text)
        self._ink_ratio = (bottom - top) / _REF_SIZE  # ink height per unit of font size
        # The widest the label may be (in text heights) and still fit a square image with margins.
        room = (1 - 2 * _MARGIN) / TEXT_HEIGHT - 2 * _PAD
        if (right - left) / (bottom - top) > room:
            raise ConfigError(
                f"watermark label {text!r} is too long: at {TEXT_HEIGHT:.0%} of the image's shorter side "
                "it would not fit across the image"
            )
        self._fonts: dict[int, ImageFont.FreeTypeFont] = {}

    def draw(self, image: Image.Image) -> Image.Image:
        """A copy of ``image`` (RGB) with the label composited into its bottom-right corner."""
        base = image.convert("RGB")
        short = min(base.size)
        size = max(1, math.ceil(TEXT_HEIGHT * short / self._ink_ratio))
        font = self._fonts.get(size)
        if font is None:
            font = self._fonts[size] = self._font(size)
        left, top, right, bottom = (int(v) for v in font.getbbox(self.text))
        pad, margin = round(_PAD * (bottom - top)), round(_MARGIN * short)
        box_w, box_h = right - left + 2 * pad, bottom - top + 2 * pad
        x0, y0 = base.width - margin - box_w, base.height - margin - box_h
        # Composite only the corner: a full-image RGBA pass would cost ~10x more at 2048 px.
        corner = base.crop((x0, y0, x0 + box_w, y0 + box_h)).convert("RGBA")
        overlay = Image.new("RGBA", corner.size, _BOX)
        ImageDraw.Draw(overlay).text((pad - left, pad - top), self.text, font=font, fill=_INK)
        base.paste(Image.alpha_composite(corner, overlay).convert("RGB"), (x0, y0))
        return base

    def _font(self, size: int) -> ImageFont.FreeTypeFont:
        try:
            return ImageFont.truetype(str(self.font_path), size, index=self.font_index)
        except OSError as exc:
            where = f"{self.font_path} (index {self.font_index})"
            raise ConfigError(f"cannot load label font {where}: {exc}") from exc


def _renders_as_missing(font: ImageFont.FreeTypeFont, ch: str) -> bool:
    """Whether ``font`` draws ``ch`` as its .notdef glyph, i.e. has no glyph for it."""
    return _render(font, ch) == _render(font, _MISSING)


def _render(font: ImageFont.FreeTypeFont, text: str) -> bytes:
    canvas = Image.new("L", (2 * _REF_SIZE, 2 * _REF_SIZE))
    ImageDraw.Draw(canvas).text((_REF_SIZE // 2, _REF_SIZE // 2), text, font=font, fill=255)
    return canvas.tobytes()
