"""The invisible watermark: payload bits hidden in the image's blue-difference chroma.

The method is the DWT-DCT-SVD scheme of the ``invisible-watermark`` package (``dwtDctSvd``):

1. take U of BT.601 YUV (OpenCV's definition), one-level Haar DWT, keep the approximation band;
2. cut it into 4x4 blocks (8x8 pixels) and move each block's largest singular value ``s`` to the
   nearest point whose phase ``s / Q`` (mod 1) is 1/4 for a 0 bit or 3/4 for a 1 bit (quantisation
   index modulation), on a grid shifted by a per-block offset;
3. spread the payload: each bit is written into about ``blocks / bits`` blocks, scattered over the
   image by a fixed hash, and read back as the average of a soft per-block score.

It is reimplemented here, vectorised, rather than called, because the package (0.2.0) failed what
cogserve needs, measured on 512..1344 px images: its ``dwtDct`` method (SDXL's) loses about half the
bits after a JPEG re-encode at quality 85, and its encoder writes chroma back into uint8 without
clipping, so saturated pixels wrap round (PSNR 15 dB on noise-like images: visible speckles). It
also requires opencv-python (~190 MB installed), which clashes with the headless OpenCV that NudeNet
brings. Changes from the package's ``dwtDctSvd``: the DCT step is left out (an orthonormal transform
leaves singular values unchanged, so it only cost time); values are clipped, not wrapped; a per-block
grid shift and a nearest-point move (without them a smooth gradient turns into visible diagonal bands);
bits scattered rather than in raster order (raster order puts a bit in a single column on some
widths, where one flat stripe of image can erase it); and soft decoding instead of a majority vote.

Q = 48 keeps PSNR near 41.8 dB, all of it in chroma, and leaves every bit of the 84-bit payload
readable after JPEG quality 85 (and 75) on 512x512 noise, the hardest case measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image

SCALE = 48.0
_BLOCK = 4  # approximation-band block side; 8 pixels
_PIXELS_PER_BLOCK = 2 * _BLOCK
# OpenCV's BT.601 YUV: U = 0.492 (B - Y) + 128, inverted with B += 2.032 dU, G -= 0.395 dU (Y, V kept).
_U_TO_B, _U_TO_G = 2.032, -0.395

Float = NDArray[np.float32]


def capacity(width: int, height: int) -> int:
    """How many blocks an image of this size has: each payload bit needs at least one."""
    return (width // _PIXELS_PER_BLOCK) * (height // _PIXELS_PER_BLOCK)


def embed(image: Image.Image, bits: Sequence[int]) -> Image.Image:
    """A copy of ``image`` (RGB) carrying ``bits``; ``capacity`` must be at least ``len(bits)``."""
    rgb = np.asarray(image.convert("RGB"))
    rows, cols = (n // _PIXELS_PER_BLOCK for n in rgb.shape[:2])
    if rows * cols < len(bits):
        raise ValueError(f"image {image.width}x{image.height} is too small for {len(bits)} watermark bits")
    h, w = rows * _PIXELS_PER_BLOCK, cols * _PIXELS_PER_BLOCK
    blocks = _blocks(_approximation(_u_plane(rgb[:h, :w])), rows, cols)
    u, s, vt = np.linalg.svd(blocks)
    index, dither = _layout(rows * cols, len(bits))
    # The nearest value whose phase is 1/4 (a 0 bit) or 3/4 (a 1 bit) of a step, on a grid shifted
    # per block: without the shift, smooth gradients turn into visible bands of equal chroma.
    offset = (0.25 + 0.5 * np.asarray(bits, dtype=np.float32)[index] + dither) * SCALE
    target = np.round((s[:, 0] - offset) / SCALE) * SCALE + offset
    # Only the largest singular value moves: a rank-one change of each block.
    change = (target - s[:, 0])[:, None, None] * u[:, :, :1] * vt[:, :1, :]
    # Inverse Haar of a change in the approximation band alone: each of its 2x2 pixels moves by half.
    du = np.repeat(np.repeat(_unblock(change, rows, cols) / 2, 2, axis=0), 2, axis=1)
    out = rgb.astype(np.float32)
    out[:h, :w, 2] += _U_TO_B * du
    out[:h, :w, 1] += _U_TO_G * du
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def extract(image: Image.Image, nbits: int) -> Float:
    """Soft scores, one per bit, in [-1, 1]: the sign is the bit, the size how sure it is.

    Scores near 0 mean nothing was written (or it was destroyed); callers check a checksum.
    """
    rgb = np.asarray(image.convert("RGB"))
    rows, cols = (n // _PIXELS_PER_BLOCK for n in rgb.shape[:2])
    if rows * cols < nbits:
        return np.zeros(nbits, dtype=np.float32)
    h, w = rows * _PIXELS_PER_BLOCK, cols * _PIXELS_PER_BLOCK
    blocks = _blocks(_approximation(_u_plane(rgb[:h, :w])), rows, cols)
    s0 = np.linalg.svd(blocks, compute_uv=False)[:, 0]
    index, dither = _layout(rows * cols, nbits)
    votes = -np.sin(2 * np.pi * (s0 / SCALE - dither))  # +1 at phase 3/4 (a 1 bit), -1 at 1/4 (a 0)
    sums = np.bincount(index, weights=votes, minlength=nbits)
    return (sums / np.bincount(index, minlength=nbits)).astype(np.float32)


def _u_plane(rgb: NDArray[np.uint8]) -> Float:
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    u: Float = (b - (0.299 * r + 0.587 * g + 0.114 * b)) * 0.492 + 128.0
    return u


def _approximation(plane: Float) -> Float:
    """The Haar DWT approximation band (as pywt.dwt2(..., "haar") computes it)."""
    band: Float = (plane[0::2, 0::2] + plane[0::2, 1::2] + plane[1::2, 0::2] + plane[1::2, 1::2]) * 0.5
    return band


def _blocks(band: Float, rows: int, cols: int) -> Float:
    return band.reshape(rows, _BLOCK, cols, _BLOCK).transpose(0, 2, 1, 3).reshape(-1, _BLOCK, _BLOCK)


def _unblock(blocks: Float, rows: int, cols: int) -> Float:
    plane = blocks.reshape(rows, cols, _BLOCK, _BLOCK).transpose(0, 2, 1, 3)
    return plane.reshape(rows * _BLOCK, cols * _BLOCK)


@lru_cache(maxsize=16)
def _layout(nblocks: int, nbits: int) -> tuple[NDArray[np.intp], Float]:
    """Which bit each block carries (every bit equally often, scattered over the image) and its
    grid shift as a fraction of a step. Both come from a fixed hash of the block index (splitmix64,
    written out so that no library's RNG can change them between versions)."""
    x = _splitmix(np.arange(nblocks, dtype=np.uint64))
    index = np.empty(nblocks, dtype=np.intp)
    index[np.argsort(x, kind="stable")] = np.arange(nblocks) % nbits
    dither = (_splitmix(x) >> np.uint64(40)).astype(np.float32) / np.float32(2**24)
    index.flags.writeable = dither.flags.writeable = False
    return index, dither


def _splitmix(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
