"""docs/configuration.md is what the code says: every setting, its variable, flag and default."""

from __future__ import annotations

from pathlib import Path

from cogserve.cli.config_reference import render
from cogserve.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_page_is_the_generated_one() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert page == render(), "regenerate: python -m cogserve.cli.config_reference > docs/configuration.md"


def test_every_setting_is_on_the_page_with_its_flag() -> None:
    page = render()
    for area, field in Settings.model_fields.items():
        for name in field.annotation.model_fields:  # type: ignore[union-attr]
            assert f"| `COGSERVE_{area.upper()}__{name.upper()}` |" in page
    assert "| `COGSERVE_SCHEDULER__MAX_QUEUE` | `--max-queue` | `64` |" in page
    assert "| `--ray` |" in page
