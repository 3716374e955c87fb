"""A CLI that guides: --version, help in panels with defaults, one exit-code rule, progress on stderr,
and account and db commands that say which database they opened and never quietly make a new one."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cogserve import __version__
from cogserve.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"cogserve {__version__}"


def test_serve_help_is_grouped_with_defaults_shown() -> None:
    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    panels = (
        "Server",
        "Model",
        "Engine",
        "Storage",
        "Auth",
        "Safety",
        "Jobs",
        "Scale-out",
        "Prompt enhancement",
        "Content Credentials",
    )
    for panel in panels:
        assert f"─ {panel} ─" in result.stdout, panel
    # Flags default to "unset" (then the environment); help shows what that means in settings.py.
    for default in ("8000", "127.0.0.1", "cogserve-data", "3600.0"):
        assert default in result.stdout, default
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    # Nothing is cut to fit: every variable a flag falls back to is printed whole.
    assert "…" not in result.stdout
    for env in ("COGSERVE_STORAGE__PRESIGNED_URLS", "COGSERVE_SCHEDULER__MAX_BATCH_WAIT_MS"):
        assert f"[{env}]" in result.stdout, env


def test_account_commands_refuse_to_make_a_new_database(tmp_path: Path) -> None:
    data = tmp_path / "typo"
    for args in (["keys", "list"], ["keys", "create"], ["users", "block", "user-123456"], ["usage"], ["gc"]):
        result = runner.invoke(app, [*args, "--data-dir", str(data)])
        assert result.exit_code == 2, (args, result.output)
        assert f"no database at {(data / 'cogserve.db').resolve()}" in result.stderr
        assert "--create" in result.stderr
    assert not (data / "cogserve.db").exists()

    shown = runner.invoke(app, ["db", "current", "--check", "--data-dir", str(data)])
    assert shown.exit_code == 1 and "no cogserve tables yet" in shown.stdout
    assert not (data / "cogserve.db").exists()  # looking does not make it


def test_create_makes_it_and_every_command_names_the_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    where = f"database: sqlite:///{(data / 'cogserve.db').resolve()}"
    created = runner.invoke(app, ["keys", "create", "--name", "first", "--create", "--data-dir", str(data)])
    assert created.exit_code == 0, created.output
    assert f"{where} (new)" in created.stderr
    assert created.stdout.count(".") == 1  # only the key on stdout, so it can be captured
    listed = runner.invoke(app, ["keys", "list", "--data-dir", str(data)])
    assert listed.exit_code == 0 and where in listed.stderr and "first" in listed.stdout
    assert "(new)" not in listed.stderr


@pytest.mark.parametrize(
    "args", [["keys", "revoke", "nosuchkey"], ["users", "unblock", "user-never-blocked"]]
)
def test_unknown_names_are_bad_input(tmp_path: Path, args: list[str]) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    assert runner.invoke(app, ["db", "upgrade", "--create", *data]).exit_code == 0
    result = runner.invoke(app, [*args, *data])
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr


def test_generate_progress_goes_to_stderr(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COGSERVE_MODEL__BUILTIN_DIR", str(models_dir))
    monkeypatch.setenv("COGSERVE_MODEL__BUILTIN", "tiny-random")
    monkeypatch.setenv("COGSERVE_MODEL__STANDARD_STEPS", "2")
    target = tmp_path / "cat.png"
    result = runner.invoke(
        app, ["generate", "a cat", "--size", "512x512", "-o", str(target), "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "denoising" in result.stderr and "denoising" not in result.stdout
    assert result.stdout.startswith(f"wrote {target}")


def test_bad_size_is_exit_2() -> None:
    result = runner.invoke(app, ["generate", "a cat", "--size", "500x500"])
    assert result.exit_code == 2
    assert "size" in result.stderr
