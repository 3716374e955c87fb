"""Content Credentials cost: signing a C2PA manifest into each PNG, against the rest of post-processing.

Per image, in the order the server does it, timed stage by stage in the same run:

- ``marks``: the visible label and the invisible watermark (``Watermarker.apply``);
- ``encode``: PNG encoding with the AIGC text chunks (``encode_png``);
- ``sign``: the signed manifest (``CredentialSigner.sign``, the development chain, no timestamp);
- ``verify``: reading it back with c2pa's Reader (what a recipient pays; not on the server's path).

Two kinds of picture per size, since the PNG's size drives the hashing: ``noise`` (like the tiny
built-in model's output: a large PNG, the worst case) and ``smooth`` (a gradient with a little
grain: a small PNG, closer to a real photo-like image). Stages alternate image by image, so they see
the same background load.

    python benchmarks/c2pa_signing.py [--images 20] [--sizes 512,1024]

Prints p50 seconds per stage, the ratio sign / (marks + encode) — what signing adds to the
post-processing before it — and the manifest's size in bytes (signed PNG minus unsigned PNG).
Never fails on a timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cogserve.safety.credentials import CredentialSigner, read_credentials
from cogserve.safety.watermark import Watermarker, encode_png

IMAGE_ID = "BenchMrk" + "0" * 24


def picture(kind: str, size: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, (x + y) / 2], axis=-1) * 200 + 25
    grain = rng.normal(0, 2.0, base.shape)
    return Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))


def p50(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="timed images per size and kind")
    parser.add_argument("--sizes", default="512,1024", help="square sizes, comma-separated")
    args = parser.parse_args()
    sizes = [int(part) for part in args.sizes.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        signer = CredentialSigner.development_chain(Path(tmp) / "credentials")
        marker = Watermarker()
        print(f"load average at start: {os.getloadavg()[0]:.2f}")
        print(
            "| size | picture | PNG bytes | marks p50 ms | encode p50 ms | sign p50 ms | verify p50 ms "
            "| sign / (marks + encode) | manifest bytes |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for size in sizes:
            for kind in ("noise", "smooth"):
                stages: dict[str, list[float]] = {"marks": [], "encode": [], "sign": [], "verify": []}
                png_bytes = manifest_bytes = 0
                for i in range(args.images + 2):  # the first two warm up
                    image = picture(kind, size, i)
                    t0 = time.perf_counter()
                    marked = marker.apply(image, IMAGE_ID)
                    t1 = time.perf_counter()
                    png = encode_png(marked, marker.metadata(IMAGE_ID))
                    t2 = time.perf_counter()
                    signed = signer.sign(png, IMAGE_ID, "cogview-4")
                    t3 = time.perf_counter()
                    found = read_credentials(signed)
                    t4 = time.perf_counter()
                    assert found is not None and found.valid, found
                    if i < 2:
                        continue
                    for name, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                        stages[name].append(seconds)
                    png_bytes, manifest_bytes = len(png), len(signed) - len(png)
                marks, encode, sign, verify = (p50(stages[name]) for name in stages)
                print(
                    f"| {size}x{size} | {kind} | {png_bytes:,} | {marks * 1e3:.1f} | {encode * 1e3:.1f} "
                    f"| {sign * 1e3:.1f} | {verify * 1e3:.1f} | {sign / (marks + encode):.3f} "
                    f"| {manifest_bytes:,} |"
                )
        print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
