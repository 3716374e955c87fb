"""BigModel's image-size rules, for every model."""

from __future__ import annotations

import re

from cogserve.errors import ConfigError

#: BigModel's recommended sizes (width x height).
RECOMMENDED_SIZES = (
    "1024x1024",
    "768x1344",
    "864x1152",
    "1344x768",
    "1152x864",
    "1440x720",
    "720x1440",
)
DEFAULT_SIZE = "1024x1024"
MIN_SIDE, MAX_SIDE, MULTIPLE = 512, 2048, 16
MAX_PIXELS = 2**21

# ASCII digits only: Python's \d also matches full-width and other Unicode digits.
_SIZE_RE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")


def parse_size(value: str) -> tuple[int, int]:
    """Parse ``"WIDTHxHEIGHT"`` and check BigModel's rules; raise ValueError saying which failed."""
    match = _SIZE_RE.fullmatch(value)
    if match is None:
        raise ValueError(f"'{value}' is not of the form WIDTHxHEIGHT, e.g. 1024x1024")
    width, height = int(match.group(1)), int(match.group(2))
    for side in (width, height):
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise ValueError(f"each side must be between {MIN_SIDE} and {MAX_SIDE} px, got {value}")
        if side % MULTIPLE:
            raise ValueError(f"each side must be divisible by {MULTIPLE}, got {value}")
    if width * height > MAX_PIXELS:
        raise ValueError(f"width*height must be at most 2^21 = {MAX_PIXELS} px, got {width * height}")
    return width, height


class Size(str):
    """A ``"WIDTHxHEIGHT"`` string that passed the rules, with its sides: parsed once, at validation."""

    width: int
    height: int

    @classmethod
    def parse(cls, value: str) -> Size:
        width, height = parse_size(value)
        size = cls(value)
        size.width, size.height = width, height
        return size


def check_warmup_sizes(entries: list[str]) -> None:
    """Refuse a ``--warmup-sizes`` bucket that no request could ask for."""
    for entry in entries:
        try:
            parse_size(entry.partition(":")[0])
        except ValueError as exc:
            raise ConfigError(f"warm-up bucket '{entry}': {exc}") from None
