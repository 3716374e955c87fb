"""``cogserve enhance`` against the loopback chat server, and the enhancer flags of ``serve``."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cogserve.cli import app
from tests.components.chat import ChatServer, Reply

CAPTION = "A red bicycle leans against a yellow wall in bright afternoon sun, a crisp street photograph."
runner = CliRunner()


def test_prints_the_rewrite(chat_server: ChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    chat_server.answer(Reply(CAPTION))
    monkeypatch.setenv("COGSERVE_ENHANCER__API_KEY", "sk-from-env")
    result = runner.invoke(
        app,
        ["enhance", "a red bicycle", "--enhancer-url", chat_server.base_url, "--enhancer-model", "qwen2.5"],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == CAPTION
    (sent,) = chat_server.requests
    assert sent.body["model"] == "qwen2.5" and sent.headers["Authorization"] == "Bearer sk-from-env"


def test_a_fallback_is_an_error_here(chat_server: ChatServer) -> None:
    chat_server.answer(Reply(status=500))
    result = runner.invoke(
        app, ["enhance", "a red bicycle", "--enhancer-url", chat_server.base_url, "--enhancer-retries", "0"]
    )
    assert result.exit_code == 1 and "unavailable" in result.stderr


def test_needs_an_enhancer() -> None:
    result = runner.invoke(app, ["enhance", "a red bicycle"])
    assert result.exit_code == 2 and "--enhancer-url" in result.stderr


def test_serve_refuses_a_bad_enhancer_setting() -> None:
    result = runner.invoke(app, ["serve", "--enhancer-mode", "sometimes"])
    assert result.exit_code == 2 and "enhancer.mode" in result.stderr
