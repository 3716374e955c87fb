"""Judge a shapes-world picture from its pixels: background, and each shape's colour, class, size, cell.

Every pixel is given its nearest palette colour (or none, when it is far from all of them). The
background is the commonest colour; each other colour's largest connected region is a shape. A
concave region (its area under 0.8 of its convex hull's: a star's is about 0.5) with five points
sticking out is a star, even with blunted points; otherwise the class comes from how much of its
bounding box it fills and the box's proportions (square 1.0, circle 0.79, triangle 0.5, star 0.33).
Its size comes from the box's longer side over the picture's shorter side, its cell from the box's
centre. Pictures are judged at 256 px on the short side.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from cogserve.shapes.captions import Mention
from cogserve.shapes.world import COLOURS, PALETTE, SIZE_RANGES, position_of

_RGB = np.array([rgb for _, rgb in PALETTE.values()], dtype=np.float32)
#: Farther than this (RGB distance) from every palette colour: "no colour".
_FAR = 48.0
#: A shape must cover at least this share of the picture (a small star covers about 0.2 %).
_MIN_AREA = 0.0008
_JUDGE_SHORT_SIDE = 256
_NONE = len(COLOURS)


@dataclass(frozen=True)
class Found:
    colour: str
    shape: str
    size: str
    position: str
    extent: float
    fill: float
    area: float


@dataclass(frozen=True)
class Judgement:
    background: str
    #: Largest first.
    shapes: tuple[Found, ...]
    #: Share of pixels (edges aside) that are not the background's or a found shape's: speckle,
    #: stray blobs, colours off the palette.
    unclean: float

    def find(self, colour: str) -> Found | None:
        return next((s for s in self.shapes if s.colour == colour), None)


@dataclass
class Verdict:
    """What a judgement says about one request: each check passed or not."""

    background: bool
    colour: list[bool] = field(default_factory=list)
    shape: list[bool] = field(default_factory=list)
    size: list[bool] = field(default_factory=list)
    position: list[bool] = field(default_factory=list)

    @property
    def all_right(self) -> bool:
        return self.background and all(self.colour + self.shape + self.size + self.position)


def classify(image: Image.Image) -> np.ndarray:
    """Each pixel's palette index (``len(COLOURS)`` for none), at the judging resolution."""
    scale = _JUDGE_SHORT_SIDE / min(image.size)
    if scale < 1:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.BOX)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    distance = np.linalg.norm(pixels[:, :, None, :] - _RGB[None, None], axis=-1)
    labels: np.ndarray = distance.argmin(-1)
    labels[distance.min(-1) > _FAR] = _NONE
    return labels


def _largest_region(mask: np.ndarray) -> np.ndarray | None:
    """Coordinates (N, 2) of the largest 4-connected region of ``mask``."""
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    height, width = mask.shape
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        region, queue = [], deque([(int(y0), int(x0))])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            region.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(region) > len(best):
            best = region
    return np.array(best) if best else None


def _cross(o: tuple[int, int], a: tuple[int, int], b: tuple[int, int]) -> int:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _solidity(region: np.ndarray) -> float:
    """The region's area over its convex hull's: about 1 for a convex shape, about 0.5 for a star.

    The hull is taken over the corners of each row's outermost pixels (the hull of the whole
    region, in a few hundred points), by Andrew's monotone chain."""
    ys, xs = region[:, 0], region[:, 1]
    corners: set[tuple[int, int]] = set()
    for y in np.unique(ys):
        row = xs[ys == y]
        left, right = int(row.min()), int(row.max()) + 1
        corners.update(((left, int(y)), (left, int(y) + 1), (right, int(y)), (right, int(y) + 1)))
    ordered = sorted(corners)
    hull: list[tuple[int, int]] = []
    for sweep in (ordered, ordered[::-1]):
        start = len(hull)
        for point in sweep:
            while len(hull) >= start + 2 and _cross(hull[-2], hull[-1], point) <= 0:
                hull.pop()
            hull.append(point)
        hull.pop()
    twice_area = sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(hull, hull[1:] + hull[:1], strict=True))
    return len(region) / max(abs(twice_area) / 2, 1.0)


#: Below this solidity a shape is concave. A star whose points come out blunted (as the shapes
#: model's VAE gives back medium stars at 192 px) fills 0.42-0.5 of its box, a triangle's fill, while
#: its solidity stays at 0.55-0.87; convex shapes measured 0.88-1.0.
_STAR_SOLIDITY = 0.8


def _points(region: np.ndarray, bins: int = 72) -> int:
    """How many points stick out of the outline: peaks of the farthest pixel from the centre, by
    angle (5° bins), each rising over both neighbouring dips by at least 15 % of the largest reach.
    Exact renders measure: circle 0, triangle 3, square 4, star 5. With the solidity, it keeps a
    ragged concave blob (the model's failed stars) from reading as a star."""
    dy, dx = (region - region.mean(0)).T
    angle = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    reach = np.zeros(bins)
    np.maximum.at(reach, angle, np.hypot(dy, dx))
    smooth = (np.roll(reach, 1) + reach + np.roll(reach, -1)) / 3
    tops = [i for i in range(bins) if smooth[i] >= smooth[i - 1] and smooth[i] > smooth[(i + 1) % bins]]
    floor = 0.15 * smooth.max()

    def dip(start: int, end: int) -> float:
        """The lowest reach going round from bin ``start`` to bin ``end``."""
        return float(smooth[[j % bins for j in range(start, end + (bins if end <= start else 0) + 1)]].min())

    points = 0
    for k, top in enumerate(tops):
        previous, following = tops[k - 1], tops[(k + 1) % len(tops)]
        points += smooth[top] - max(dip(previous, top), dip(top, following)) >= floor
    return points


def _shape_class(fill: float, aspect: float, solidity: float, points: int) -> str:
    """From the fill of the bounding box, its height/width, the solidity (``_solidity``) and the
    points (``_points``: a circle has 0, a triangle 3, a square 4, a star 5)."""
    if solidity < _STAR_SOLIDITY and points == 5:
        return "star"
    if fill > 0.9:
        return "square"
    if fill > 0.64:
        return "circle" if aspect > 0.93 else "square"
    if fill > 0.42:
        return "triangle"
    return "star"


def _size_class(extent: float) -> str:
    # Boundaries halfway between the ranges: anything drawn is "the nearest size".
    (_, small_hi), (medium_lo, medium_hi), (large_lo, _) = (
        SIZE_RANGES[s] for s in ("small", "medium", "large")
    )
    if extent < (small_hi + medium_lo) / 2:
        return "small"
    return "medium" if extent < (medium_hi + large_lo) / 2 else "large"


def _edges(labels: np.ndarray, reach: int = 2) -> np.ndarray:
    change = np.zeros(labels.shape, dtype=bool)
    change[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    change[1:, :] |= labels[1:, :] != labels[:-1, :]
    grown = change.copy()
    for _ in range(reach):
        step = grown.copy()
        step[1:, :] |= grown[:-1, :]
        step[:-1, :] |= grown[1:, :]
        step[:, 1:] |= grown[:, :-1]
        step[:, :-1] |= grown[:, 1:]
        grown = step
    return grown


def judge(image: Image.Image) -> Judgement:
    labels = classify(image)
    height, width = labels.shape
    total, short = labels.size, min(height, width)
    counts = np.bincount(labels.ravel(), minlength=_NONE + 1)
    background = int(counts[:_NONE].argmax())
    found = []
    # What the picture would be if it were exactly its background and the shapes found.
    drawn = np.full(labels.shape, background)
    for index in np.argsort(-counts[:_NONE]):
        if index == background or counts[index] < _MIN_AREA * total:
            continue
        region = _largest_region(labels == index)
        if region is None or len(region) < _MIN_AREA * total:
            continue
        drawn[region[:, 0], region[:, 1]] = index
        (y0, x0), (y1, x1) = region.min(0), region.max(0) + 1
        box_w, box_h = int(x1 - x0), int(y1 - y0)
        fill = len(region) / (box_w * box_h)
        extent = max(box_w, box_h) / short
        cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
        found.append(
            Found(
                colour=COLOURS[index],
                shape=_shape_class(fill, box_h / box_w, _solidity(region), _points(region)),
                size=_size_class(extent),
                position=position_of(min(int(cy * 3), 2), min(int(cx * 3), 2)),
                extent=extent,
                fill=fill,
                area=len(region) / total,
            )
        )
    found.sort(key=lambda s: -s.area)
    off = (labels != drawn) & ~_edges(drawn)
    return Judgement(COLOURS[background], tuple(found), float(off.mean()))


def verdict(judgement: Judgement, background: str | None, mentions: tuple[Mention, ...]) -> Verdict:
    """Check what was asked (None: not asked) against what was drawn.

    A shape counts as found when a region of its colour exists; for a single shape that region must
    also be the largest one, so a stray blob of the right colour beside a wrong shape does not pass.
    """
    result = Verdict(background=background is None or judgement.background == background)
    for m in mentions:
        if m.colour is None:
            drawn = judgement.shapes[0] if judgement.shapes else None
        else:
            drawn = judgement.find(m.colour)
            if len(mentions) == 1 and judgement.shapes and judgement.shapes[0] is not drawn:
                drawn = None
        result.colour.append(drawn is not None)
        result.shape.append(drawn is not None and drawn.shape == m.shape)
        result.size.append(drawn is not None and (m.size is None or drawn.size == m.size))
        result.position.append(drawn is not None and (m.position is None or drawn.position == m.position))
    return result
