"""The shapes world: what the built-in model was trained to draw, and how such a picture is rendered.

One or two flat shapes (circle, square, triangle, five-pointed star) in palette colours on a solid
palette background. A shape's *size* is its longer side as a fraction of the picture's shorter side;
its *position* is the cell of a 3x3 grid that holds its centre. Rendering is exact: shapes are drawn
at 4x and box-filtered down, so edges are anti-aliased and everything else is the palette colour.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageDraw

Rgb = tuple[int, int, int]

#: name -> (Chinese name, sRGB)
PALETTE: dict[str, tuple[str, Rgb]] = {
    "red": ("红色", (0xDC, 0x28, 0x28)),
    "orange": ("橙色", (0xF5, 0x8C, 0x1E)),
    "yellow": ("黄色", (0xF5, 0xD7, 0x28)),
    "green": ("绿色", (0x28, 0xAA, 0x46)),
    "blue": ("蓝色", (0x28, 0x5A, 0xDC)),
    "purple": ("紫色", (0x8C, 0x3C, 0xBE)),
    "pink": ("粉色", (0xF0, 0x82, 0xB4)),
    "white": ("白色", (0xF5, 0xF5, 0xF5)),
    "black": ("黑色", (0x14, 0x14, 0x14)),
    "grey": ("灰色", (0x80, 0x80, 0x80)),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)

ShapeName = Literal["circle", "square", "triangle", "star"]
SHAPES: tuple[ShapeName, ...] = ("circle", "square", "triangle", "star")

SizeName = Literal["small", "medium", "large"]
SIZES: tuple[SizeName, ...] = ("small", "medium", "large")
#: The longer side of a shape as a fraction of the picture's shorter side.
SIZE_RANGES: dict[SizeName, tuple[float, float]] = {
    "small": (0.10, 0.17),
    "medium": (0.23, 0.32),
    "large": (0.42, 0.52),
}

#: The 3x3 grid, row by row: (row, column) of each cell.
POSITIONS: tuple[str, ...] = (
    "top-left",
    "top",
    "top-right",
    "left",
    "center",
    "right",
    "bottom-left",
    "bottom",
    "bottom-right",
)


def cell_of(position: str) -> tuple[int, int]:
    index = POSITIONS.index(position)
    return index // 3, index % 3


def position_of(row: int, column: int) -> str:
    return POSITIONS[row * 3 + column]


# A star's bounding box relative to its outer radius R (apex up): width 2R sin 72°, height R(1 + cos 36°).
_STAR_WIDTH = 2 * math.sin(math.radians(72))
_STAR_HEIGHT = 1 + math.cos(math.radians(36))
_STAR_INNER = 0.382  # inner / outer radius of a regular five-pointed star
_TRIANGLE_HEIGHT = math.sqrt(3) / 2  # equilateral, apex up


def box_of(shape: ShapeName, extent: float) -> tuple[float, float]:
    """(width, height) of a shape whose longer side is ``extent``."""
    if shape == "triangle":
        return extent, extent * _TRIANGLE_HEIGHT
    if shape == "star":
        return extent, extent * _STAR_HEIGHT / _STAR_WIDTH
    return extent, extent


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: ShapeName
    size: SizeName
    position: str
    #: Longer side as a fraction of the picture's shorter side (inside the size's range).
    extent: float
    #: Centre of the bounding box, as fractions of the picture's width and height.
    cx: float
    cy: float


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]


def _centre_range(cell: int, half: float, margin: float = 0.05) -> tuple[float, float] | None:
    """Where a centre may lie inside grid cell ``cell`` (0..2) so the shape stays in the picture."""
    low = max(cell / 3 + margin, half + 0.01)
    high = min((cell + 1) / 3 - margin, 1 - half - 0.01)
    return (low, high) if low <= high else None


def place(
    rng: random.Random, colour: str, shape: ShapeName, size: SizeName, position: str, aspect: float
) -> Shape | None:
    """A shape with a random extent and centre inside its cell; None when it cannot fit there.

    ``aspect`` is width / height of the picture.
    """
    extent = rng.uniform(*SIZE_RANGES[size])
    short = min(aspect, 1.0)  # the shorter side, in units of the picture's height
    width, height = box_of(shape, extent)
    half_x = width * short / aspect / 2  # as fractions of the picture's width
    half_y = height * short / 2
    row, column = cell_of(position)
    xs, ys = _centre_range(column, half_x), _centre_range(row, half_y)
    if xs is None or ys is None:
        return None
    return Shape(colour, shape, size, position, extent, rng.uniform(*xs), rng.uniform(*ys))


def overlaps(a: Shape, b: Shape, aspect: float, gap: float = 0.03) -> bool:
    short = min(aspect, 1.0)

    def bounds(s: Shape) -> tuple[float, float, float, float]:
        width, height = box_of(s.shape, s.extent)
        hx, hy = width * short / aspect / 2 + gap, height * short / 2 + gap
        return s.cx - hx, s.cy - hy, s.cx + hx, s.cy + hy

    ax0, ay0, ax1, ay1 = bounds(a)
    bx0, by0, bx1, by1 = bounds(b)
    return ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1


def _polygon(
    shape: ShapeName, cx: float, cy: float, width: float, height: float
) -> list[tuple[float, float]]:
    if shape == "square":
        return [
            (cx - width / 2, cy - height / 2),
            (cx + width / 2, cy - height / 2),
            (cx + width / 2, cy + height / 2),
            (cx - width / 2, cy + height / 2),
        ]
    if shape == "triangle":
        return [(cx, cy - height / 2), (cx + width / 2, cy + height / 2), (cx - width / 2, cy + height / 2)]
    # star: outer radius from the box width; centre the box (the star's centre sits above the box's)
    radius = width / _STAR_WIDTH
    top = cy - height / 2
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * _STAR_INNER
        angle = math.radians(-90 + 36 * k)
        points.append((cx + r * math.cos(angle), top + radius + r * math.sin(angle)))
    return points


def render(scene: Scene, width: int, height: int, supersample: int = 4) -> Image.Image:
    """Draw ``scene`` exactly, anti-aliased, as an RGB picture of ``width`` x ``height``."""
    big_w, big_h = width * supersample, height * supersample
    image = Image.new("RGB", (big_w, big_h), PALETTE[scene.background][1])
    draw = ImageDraw.Draw(image)
    short = min(big_w, big_h)
    for s in scene.shapes:
        w, h = box_of(s.shape, s.extent * short)
        cx, cy = s.cx * big_w, s.cy * big_h
        fill = PALETTE[s.colour][1]
        if s.shape == "circle":
            draw.ellipse([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=fill)
        else:
            draw.polygon(_polygon(s.shape, cx, cy, w, h), fill=fill)
    return image.resize((width, height), Image.Resampling.BOX) if supersample > 1 else image


#: Never drawn in training, so the evaluation measures what the model composes rather than recalls:
#: every purple star, and every large shape in the bottom-right cell.
HELD_OUT_COLOUR_SHAPE = ("purple", "star")
HELD_OUT_SIZE_POSITION = ("large", "bottom-right")


def is_held_out(shape: Shape) -> bool:
    return (shape.colour, shape.shape) == HELD_OUT_COLOUR_SHAPE or (
        shape.size,
        shape.position,
    ) == HELD_OUT_SIZE_POSITION


def sample_scene(
    rng: random.Random, aspect: float, count: int | None = None, *, allow_held_out: bool = False
) -> Scene:
    """A random scene of one or two shapes with distinct colours, on a background of neither."""
    count = count or rng.choice((1, 1, 2))
    while True:
        colours = rng.sample(COLOURS, count + 1)
        background, shape_colours = colours[0], colours[1:]
        cells = rng.sample(POSITIONS, count)
        shapes = []
        for colour, position in zip(shape_colours, cells, strict=True):
            placed = place(rng, colour, rng.choice(SHAPES), rng.choice(SIZES), position, aspect)
            if placed is None or (not allow_held_out and is_held_out(placed)):
                break
            shapes.append(placed)
        if len(shapes) < count:
            continue
        if count == 2 and overlaps(shapes[0], shapes[1], aspect):
            continue
        return Scene(background, tuple(shapes))
