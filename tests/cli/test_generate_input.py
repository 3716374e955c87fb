"""``cogserve generate``: a prompt longer than the model reads is bad input (exit 2), in-process or
on a server, like a bad size; nothing is drawn."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cogserve.cli import app
from cogserve.cli.remote import api_error

runner = CliRunner()


def test_over_long_prompt_exits_2_naming_count_and_limit(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COGSERVE_MODEL__BUILTIN_DIR", str(models_dir))
    monkeypatch.setenv("COGSERVE_MODEL__BUILTIN", "tiny-random")
    target = tmp_path / "out.png"
    result = runner.invoke(
        app, ["generate", "x" * 3990, "-o", str(target), "--data-dir", str(tmp_path / "data")]
    )
    assert result.exit_code == 2, result.output
    assert "3992 tokens" in result.output and "1024" in result.output
    assert not target.exists()


@pytest.mark.parametrize(("status", "exit_code"), [(400, 2), (413, 2), (401, 1), (429, 1), (500, 1)])
def test_server_refusals_of_the_input_exit_2(status: int, exit_code: int) -> None:
    body = {"error": {"code": "1261", "message": "prompt is 3992 tokens; the model reads at most 1024"}}
    error = api_error(httpx.Response(status, json=body))
    assert error.exit_code == exit_code
    assert error.message.startswith("error 1261: prompt is 3992 tokens")
