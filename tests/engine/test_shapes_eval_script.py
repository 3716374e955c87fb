"""``benchmarks/shapes_eval.py``, the shapes model's evaluation, run as a user runs it (a few cases).

It never fails on a score, so this checks what it prints: a row per evaluated row with its case
count, the VAE ceiling rows, the per-template and per-shape rows, and the missed pictures saved one
file each.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # loads the shapes model and draws ~20 pictures: ~15 s on 2 cores

ROOT = Path(__file__).resolve().parents[2]


def table_rows(text: str) -> dict[str, list[str]]:
    """The Markdown table rows printed, by their first cell (header and rule lines left out)."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and not line.startswith("|---") and cells[1] != "cases":
            rows[cells[0]] = cells[1:]
    return rows


def test_the_evaluation_prints_its_table_per_row_per_template_and_per_shape(tmp_path: Path) -> None:
    failures = tmp_path / "missed"
    options = ["--cases", "3", "--rows", "512", "--by-template", "--by-shape", "--failures", str(failures)]
    run = subprocess.run(
        [sys.executable, "benchmarks/shapes_eval.py", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    rows = table_rows(run.stdout)
    assert rows["1 shape, 512², English"][0] == "3"
    assert rows["1 shape, 512², Chinese"][0] == "3"
    assert rows["2 shapes, 512²"][0] == "3"
    assert rows["VAE round trip, 1 shape, 512² (ceiling)"][0] == "3"
    assert not any(name.startswith("1 shape, 1024") for name in rows)  # --rows 512 only
    for cells in rows.values():  # every share is a percentage
        assert all(0 <= float(share) <= 100 for share in cells[1:7]), cells
    templates = {name: cells for name, cells in rows.items() if name[:3] in ("en ", "zh ")}
    assert {name[:2] for name in templates} == {"en", "zh"}
    # The per-template rows split the model's cases (the ceiling rows draw no caption).
    drawn = sum(int(cells[0]) for name, cells in rows.items() if name.startswith(("1 shape", "2 shapes")))
    assert sum(int(cells[0]) for cells in templates.values()) == drawn
    # The per-shape rows split the one-shape cases: the model's first, then the ceiling's.
    tables = run.stdout.split("\n\n")
    shape_table = table_rows(next(t for t in tables if "size and shape asked" in t))
    ceiling_table = table_rows(next(t for t in tables if "VAE round trip, size and shape" in t))
    assert all(name.split()[0] in ("small", "medium", "large") for name in (*shape_table, *ceiling_table))
    one_shape = sum(int(cells[0]) for name, cells in rows.items() if name.startswith("1 shape"))
    assert sum(int(cells[0]) for cells in shape_table.values()) == one_shape
    assert sum(int(cells[0]) for cells in ceiling_table.values()) == 3
    missed = run.stderr.count("  miss: ")
    assert len(list(failures.glob("*.png"))) == missed  # one file each: no row overwrites another
