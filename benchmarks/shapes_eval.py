"""Evaluate the built-in shapes model: generate from held-out captions, judge each picture's pixels.

Every caption comes from a template never used in training; the "held-out scenes" row draws only
scenes training never showed (purple stars; large shapes in the bottom-right cell). Each picture is
judged from its pixels (``cogserve.shapes.judge``): background colour, shape colour, shape class,
centre cell, size, and the share of pixels that belong to no colour of the scene (edges aside).
Images go through the serving engine (``PipelineEngine``) exactly as the server makes them.

The last row is the ceiling the VAE sets: each case's scene rendered exactly at the size the model
draws at, encoded and decoded by the model's own VAE, enlarged as the engine enlarges, and judged
the same way. A transformer that drew every latent right would score this, no more.

    python benchmarks/shapes_eval.py                       # the full table (about 15 min on 2 cores)
    python benchmarks/shapes_eval.py --cases 8 --rows 512  # a quick look
    python benchmarks/shapes_eval.py --model-path /tmp/preview   # a model folder instead
    python benchmarks/shapes_eval.py --rows 512 --by-template    # and a row per caption template
    python benchmarks/shapes_eval.py --rows 512 --by-shape       # and a row per size and shape asked

Prints a Markdown table: one row per (size, language, shapes, quality), shares in percent, and the
median seconds per image. Never fails on a score or a timing.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cogserve.engine.builtin import SHAPES_PATH
from cogserve.engine.loader import serving_hints
from cogserve.engine.runner import PipelineEngine, enlarge, native_size
from cogserve.engine.types import GenerationParams, generate_one
from cogserve.settings import ModelSettings
from cogserve.shapes.evaluation import Case, Tally, cases
from cogserve.shapes.judge import Judgement, Verdict, judge, verdict
from cogserve.shapes.world import render


@dataclass(frozen=True)
class Row:
    name: str
    group: str  # which --rows selects it
    width: int
    height: int
    quality: str = "standard"
    shapes: int = 1
    languages: tuple[str, ...] = ("en",)
    held_out_scenes: bool = False
    scale: float = 1.0  # share of --cases (big sizes are slow on a CPU)

    @property
    def slug(self) -> str:
        """The name as a file name: rows of one size and group must not overwrite each other."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


ROWS = (
    Row("1 shape, 512², English", "512", 512, 512),
    Row("1 shape, 512², Chinese", "512", 512, 512, languages=("zh",)),
    Row("1 shape, 512², held-out scenes", "512", 512, 512, languages=("en", "zh"), held_out_scenes=True),
    Row("1 shape, 512², hd", "512", 512, 512, quality="hd", languages=("en", "zh"), scale=0.5),
    Row("2 shapes, 512²", "512", 512, 512, shapes=2, languages=("en", "zh")),
    Row("1 shape, 1024²", "big", 1024, 1024, languages=("en", "zh"), scale=0.25),
    Row("1 shape, 768×1344", "big", 768, 1344, languages=("en", "zh"), scale=0.25),
    Row("1 shape, 1344×768", "big", 1344, 768, languages=("en", "zh"), scale=0.25),
)


@dataclass
class Breakdown:
    """An extra table: the cases of the rows run, one row per key ``key_of`` gives a case (None:
    left out), each with its tally and one caption it covers."""

    title: str
    key_of: Callable[[Case], str | None]
    rows: dict[str, tuple[Tally, str]] = field(default_factory=dict)

    def add(self, case: Case, result: Verdict, unclean: float, seconds: float) -> None:
        key = self.key_of(case)
        if key is not None:
            tally, _ = self.rows.setdefault(key, (Tally(), case.caption.text))
            tally.add(result, unclean, seconds)


def template_of(case: Case) -> str:
    """``--by-template``: which phrasings the model misreads."""
    return f"{case.caption.language} {case.caption.template}"


def shape_of(case: Case) -> str | None:
    """``--by-shape``: one-shape scenes by the size and class asked for (which outlines are lost)."""
    if len(case.scene.shapes) != 1:
        return None
    return f"{case.scene.shapes[0].size} {case.scene.shapes[0].shape}"


def score(
    case: Case, image: Image.Image, seconds: float, tally: Tally, breakdowns: tuple[Breakdown, ...]
) -> tuple[Judgement, Verdict]:
    """Judge ``image`` against ``case``; count it in ``tally`` and in each breakdown."""
    judgement = judge(image)
    result = verdict(judgement, case.scene.background, case.caption.mentions)
    tally.add(result, judgement.unclean, seconds)
    for breakdown in breakdowns:
        breakdown.add(case, result, judgement.unclean, seconds)
    return judgement, result


def run_row(
    engine: PipelineEngine,
    settings: ModelSettings,
    row: Row,
    count: int,
    failures: Path | None,
    breakdowns: tuple[Breakdown, ...] = (),
) -> Tally:
    tally = Tally()
    steps = settings.hd_steps if row.quality == "hd" else settings.standard_steps
    row_cases: list[Case] = cases(
        count,
        row.width,
        row.height,
        shapes=row.shapes,
        languages=row.languages,  # type: ignore[arg-type]
        held_out_scenes=row.held_out_scenes,
    )
    for i, case in enumerate(row_cases):
        params = GenerationParams(
            case.caption.text, case.width, case.height, steps, settings.guidance_scale, case.seed
        )
        started = time.perf_counter()
        image = generate_one(engine, params).image
        judgement, result = score(case, image, time.perf_counter() - started, tally, breakdowns)
        if failures is not None and not result.all_right:
            failures.mkdir(parents=True, exist_ok=True)
            image.save(failures / f"{row.slug}-{i:03d}.png")
            print(f"  miss: {case.caption.text!r} -> {judgement}", file=sys.stderr)
    return tally


def vae_round_trip(
    model_path: Path,
    count: int,
    shapes: int,
    width: int = 512,
    height: int = 512,
    breakdowns: tuple[Breakdown, ...] = (),
) -> Tally:
    """The VAE's ceiling: exact renders at the drawn size, through the VAE, enlarged, judged."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(model_path / "vae").eval()
    drawn = native_size(width, height, serving_hints(str(model_path)).native_pixels)
    tally = Tally()
    for case in cases(count, width, height, shapes=shapes, languages=("en",)):
        exact = render(case.scene, *drawn)
        started = time.perf_counter()
        pixels = torch.from_numpy(np.asarray(exact, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
        with torch.no_grad():
            decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample[0]
        array = ((decoded.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
        image = enlarge(Image.fromarray(array), width, height)
        score(case, image, time.perf_counter() - started, tally, breakdowns)
    return tally


def print_row(name: str, count: int, tally: Tally) -> None:
    shares = tally.shares()
    cells = [f"{shares[k]:.0f}" for k in ("background", "colour", "shape", "position", "size", "all")]
    figures = f" | {shares['unclean']:.1f} | {shares['p50 s']:.2f} |"
    print(f"| {name} | {count} | " + " | ".join(cells) + figures)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=40, help="cases per 512² row (big sizes get fewer)")
    parser.add_argument("--rows", choices=("all", "512", "big"), default="all")
    parser.add_argument("--model-path", help="a model folder instead of the built-in shapes model")
    parser.add_argument("--standard-steps", type=int)
    parser.add_argument("--hd-steps", type=int)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--failures", type=Path, help="save the pictures that missed here")
    parser.add_argument(
        "--by-template",
        action="store_true",
        help="then a row per caption template, over the rows run (which phrasings it misreads)",
    )
    parser.add_argument(
        "--by-shape",
        action="store_true",
        help="then a row per size and shape asked, over the one-shape rows run and over the ceiling's "
        "(which outlines are lost, and whether the VAE loses them too)",
    )
    args = parser.parse_args()

    overrides = {
        key: value
        for key, value in (
            ("standard_steps", args.standard_steps),
            ("hd_steps", args.hd_steps),
            ("guidance_scale", args.guidance),
        )
        if value is not None
    }
    settings = ModelSettings(builtin="shapes", device="cpu", warmup=False, **overrides)  # type: ignore[arg-type]
    # A --model-path folder trained like the shapes model keeps the shapes model's sampling defaults.
    served = settings.model_copy(update={"path": args.model_path}) if args.model_path else settings
    engine = PipelineEngine(served, Path(tempfile.gettempdir()))
    started = time.perf_counter()
    engine.load()
    print(f"model {engine.info.name}: loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    print(
        f"standard {settings.standard_steps} steps, hd {settings.hd_steps} steps, "
        f"guidance {settings.guidance_scale}",
        file=sys.stderr,
    )
    header = (
        "row",
        "cases",
        "background",
        "colour",
        "shape",
        "position",
        "size",
        "all right",
        "unclean px",
        "p50 s",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    breakdowns: tuple[Breakdown, ...] = ()
    ceiling: tuple[Breakdown, ...] = ()
    if args.by_template:
        breakdowns += (Breakdown("caption template (an example)", template_of),)
    if args.by_shape:
        breakdowns += (Breakdown("size and shape asked (an example)", shape_of),)
        # The ceiling's cases by shape too: whether the VAE already loses an outline the model misses.
        ceiling = (Breakdown("VAE round trip, size and shape (an example)", shape_of),)
    for row in ROWS:
        if args.rows not in ("all", row.group):
            continue
        count = max(2, round(args.cases * row.scale))
        print_row(row.name, count, run_row(engine, settings, row, count, args.failures, breakdowns))
        sys.stdout.flush()
    model_path = Path(args.model_path) if args.model_path else SHAPES_PATH
    for shapes in (1, 2):
        tally = vae_round_trip(model_path, args.cases, shapes, breakdowns=ceiling)
        print_row(f"VAE round trip, {shapes} shape{'s' * (shapes > 1)}, 512² (ceiling)", args.cases, tally)
    for breakdown in (*breakdowns, *ceiling):
        if breakdown.rows:
            print(f"\n| {breakdown.title} | cases | " + " | ".join(header[2:]) + " |")
            print("|" + "---|" * len(header))
            for key, (tally, example) in sorted(breakdown.rows.items()):
                print_row(f"{key} ({example[:48]})", tally.cases, tally)


if __name__ == "__main__":
    main()
