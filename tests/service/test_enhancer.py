"""The prompt enhancer against a real OpenAI-compatible server on loopback: the request it sends, the
rewrite it accepts, every fallback, the cache and the metrics."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from cogserve.errors import ConfigError
from cogserve.metrics import Metrics
from cogserve.service.enhancer import Enhancement, PromptEnhancer, load_instructions
from cogserve.settings import EnhancerSettings
from tests.components.chat import ChatServer, Reply

CAPTION = "A ginger cat sleeps on a sunny windowsill, soft light, warm colours, a detailed photograph."
ZH_CAPTION = "一只橘色的小猫趴在洒满阳光的窗台上睡觉，柔和的晨光，温暖的色调，细节丰富的摄影作品。"


def enhancer(server: ChatServer, metrics: Metrics | None = None, **settings: Any) -> PromptEnhancer:
    values: dict[str, Any] = {"url": server.base_url, "model": "glm-4-flash", "timeout_s": 2.0, **settings}
    return PromptEnhancer(EnhancerSettings(**values), metrics or Metrics(), max_prompt_chars=4000)


def enhance(enhancer: PromptEnhancer, prompt: str) -> Enhancement:
    return asyncio.run(enhancer.enhance(prompt))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_sends_cogview4s_request_and_returns_the_caption(chat_server: ChatServer) -> None:
    chat_server.answer(Reply(f'  "{CAPTION}"  '))
    result = enhance(enhancer(chat_server, api_key="sk-test"), "a cat on a windowsill")
    assert result == Enhancement(CAPTION)
    assert result.header() == "enhanced"
    (sent,) = chat_server.requests
    body = sent.body
    assert body["model"] == "glm-4-flash"
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.01, 0.7, 300)
    messages = body["messages"]
    assert messages[0]["role"] == "system" and "CogView4" in messages[0]["content"]
    # Few-shot pairs, then the prompt last.
    assert [m["role"] for m in messages[1:-1]] == ["user", "assistant"] * ((len(messages) - 2) // 2)
    assert len(messages) > 3 and messages[-1] == {"role": "user", "content": "a cat on a windowsill"}
    assert sent.headers["Authorization"] == "Bearer sk-test"


def test_a_chinese_prompt_takes_a_chinese_caption(chat_server: ChatServer) -> None:
    chat_server.answer(Reply(ZH_CAPTION))
    assert enhance(enhancer(chat_server), "窗台上的猫").revised == ZH_CAPTION


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(status=500), "unavailable"),
        (Reply(status=401), "unavailable"),
        (Reply(CAPTION, delay_s=1.5), "timeout"),
        (Reply(raw=b"<html>gateway</html>"), "bad_response"),
        (Reply(raw=b'{"choices": []}'), "bad_response"),
        (Reply("   "), "empty"),
        (Reply("x" * 2000), "too_long"),
        (Reply(CAPTION, finish_reason="length"), "too_long"),
        (Reply(ZH_CAPTION), "wrong_language"),
        (Reply('{"prompt": "a cat"}'), "not_a_prompt"),
        (Reply("Here is your prompt:\n\n**A cat** on a windowsill"), "not_a_prompt"),
        (Reply("- a cat\n- a windowsill"), "not_a_prompt"),
    ],
)
def test_junk_and_failures_fall_back_with_a_reason(
    chat_server: ChatServer, reply: Reply, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    chat_server.answer(reply)
    metrics = Metrics()
    result = enhance(enhancer(chat_server, metrics, timeout_s=1.0, retries=1), "a cat on a windowsill")
    assert result.revised is None and result.fallback == reason
    assert result.header() == f"fallback; reason={reason}"
    assert sample(metrics, "cogserve_prompt_enhancement_fallbacks_total", reason=reason) == 1
    assert reason in caplog.text and "windowsill" not in caplog.text  # why, never the prompt


def test_retries_a_5xx_then_takes_the_answer(chat_server: ChatServer) -> None:
    chat_server.answer(Reply(status=503), Reply(CAPTION))
    assert enhance(enhancer(chat_server, retries=2), "a cat").revised == CAPTION
    assert len(chat_server.requests) == 2


def test_the_timeout_bounds_retries_too(chat_server: ChatServer) -> None:
    chat_server.answer(Reply(status=500, delay_s=0.3))
    started = time.monotonic()
    result = enhance(enhancer(chat_server, timeout_s=0.5, retries=10), "a cat")
    assert result.fallback == "timeout" and time.monotonic() - started < 1.5


def test_an_enhancer_that_is_down_falls_back() -> None:
    settings = EnhancerSettings(url="http://127.0.0.1:9/v1", retries=0)
    result = asyncio.run(PromptEnhancer(settings, Metrics(), 4000).enhance("a cat"))
    assert result.fallback == "unavailable"


def test_no_url_means_disabled() -> None:
    enhancer = PromptEnhancer(EnhancerSettings(), Metrics(), 4000)
    assert not enhancer.enabled and not enhancer.wanted("a cat", None)
    assert asyncio.run(enhancer.enhance("a cat")).fallback == "disabled"


def test_rewrites_are_cached_per_prompt_and_bounded(chat_server: ChatServer) -> None:
    chat_server.answer(Reply(CAPTION))
    metrics = Metrics()
    cached = enhancer(chat_server, metrics, cache_size=2)
    assert enhance(cached, "a cat") == Enhancement(CAPTION)
    assert enhance(cached, "a cat") == Enhancement(CAPTION, cached=True)
    assert enhance(cached, "a cat").header() == "enhanced; cache=hit"
    assert len(chat_server.requests) == 1
    enhance(cached, "a dog")
    enhance(cached, "a bird")  # pushes "a cat" out (least recently used)
    enhance(cached, "a cat")
    assert len(chat_server.requests) == 4
    assert sample(metrics, "cogserve_prompt_enhancement_cache_total", result="hit") == 2
    assert sample(metrics, "cogserve_prompt_enhancement_cache_total", result="miss") == 4
    assert sample(metrics, "cogserve_prompt_enhancement_duration_seconds_count") == 4


def test_failures_are_not_cached(chat_server: ChatServer) -> None:
    chat_server.answer(Reply(status=500), Reply(CAPTION))
    cached = enhancer(chat_server, retries=0)
    assert enhance(cached, "a cat").fallback == "unavailable"
    assert enhance(cached, "a cat").revised == CAPTION


@pytest.mark.parametrize(
    ("mode", "asked", "prompt", "wanted"),
    [
        ("auto", None, "a cat", True),
        ("auto", None, "a cat " * 30, False),
        ("always", None, "a cat " * 30, True),
        ("never", None, "a cat", False),
        ("never", True, "a cat", True),
        ("always", False, "a cat", False),
    ],
)
def test_the_request_decides_else_the_mode(
    chat_server: ChatServer, mode: str, asked: bool | None, prompt: str, wanted: bool
) -> None:
    assert enhancer(chat_server, mode=mode).wanted(prompt, asked) is wanted


def test_an_operator_prompt_file_replaces_the_shipped_one(chat_server: ChatServer, tmp_path: Path) -> None:
    path = tmp_path / "prompt.toml"
    path.write_text('system = "Rewrite."\n[[examples]]\nuser = "a"\nassistant = "an a"\n')
    enhance(enhancer(chat_server, prompt_file=path), "a cat")
    assert [m["content"] for m in chat_server.requests[0].body["messages"]] == [
        "Rewrite.",
        "a",
        "an a",
        "a cat",
    ]
    path.write_text("examples = []\n")
    with pytest.raises(ConfigError, match="system"):
        load_instructions(path)


def test_the_api_key_is_secret() -> None:
    settings = EnhancerSettings(url="http://127.0.0.1:9/v1", api_key="sk-secret")
    assert "sk-secret" not in repr(settings) and "sk-secret" not in json.dumps(
        settings.model_dump(mode="json")
    )
