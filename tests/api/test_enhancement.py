"""Prompt enhancement as a client sees it, with a real chat-completions server on loopback as the
enhancer: revised_prompt in the answers, the X-Prompt-Enhancement header, fallbacks that cost the
client nothing, moderation of the rewrite, the cache, and the OpenAI and async routes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cogserve.errors import ContentBlocked
from tests.components.chat import ChatServer, Reply
from tests.helpers import CountingEngine, StepGateEngine, access_of, generate, row_of

CAPTION = "A fluffy white kitten naps in a wicker basket by a window, soft morning light, a warm photograph."
OPENAI_IMAGES = "/v1/images/generations"
ASYNC = "/api/paas/v4/async/images/generations"


@pytest.fixture
def enhanced_client(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any], chat_server: ChatServer
) -> TestClient:
    chat_server.answer(Reply(CAPTION))
    settings = make_settings(enhancer={"url": chat_server.base_url, "timeout_s": 1.0, "retries": 0})
    return make_client(settings)


def metric(client: TestClient, name: str, **labels: str) -> float:
    registry = client.app.state.cogserve.metrics.registry  # type: ignore[attr-defined]
    return registry.get_sample_value(name, labels) or 0.0


def test_an_enhanced_prompt_makes_the_image_and_comes_back(
    enhanced_client: TestClient, chat_server: ChatServer
) -> None:
    response = generate(enhanced_client, prompt="a cute kitten", enhance_prompt=True)
    assert response.status_code == 200, response.text
    (item,) = response.json()["data"]
    assert item["revised_prompt"] == CAPTION
    assert response.headers["x-prompt-enhancement"] == "enhanced"
    assert chat_server.requests[0].body["messages"][-1]["content"] == "a cute kitten"
    assert row_of(enhanced_client, item["url"]).prompt == CAPTION  # what the image was made from


def test_not_asked_means_no_call_and_a_null_revised_prompt(
    enhanced_client: TestClient, chat_server: ChatServer
) -> None:
    response = generate(enhanced_client, prompt="a cute kitten", enhance_prompt=False)
    assert response.status_code == 200
    assert response.json()["data"][0]["revised_prompt"] is None
    assert "x-prompt-enhancement" not in response.headers and chat_server.requests == []


def test_the_operator_default_applies_when_the_request_is_silent(
    enhanced_client: TestClient, chat_server: ChatServer
) -> None:
    # auto: short prompts are enhanced.
    assert generate(enhanced_client).json()["data"][0]["revised_prompt"] == CAPTION


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(status=500), "unavailable"),
        (Reply(CAPTION, delay_s=1.5), "timeout"),
        (Reply(""), "empty"),
        (Reply("一只可爱的小猫咪睡在篮子里"), "wrong_language"),
        (Reply('{"prompt": "a kitten"}'), "not_a_prompt"),
    ],
)
def test_a_failing_enhancer_costs_the_client_nothing(
    enhanced_client: TestClient, chat_server: ChatServer, reply: Reply, reason: str
) -> None:
    chat_server.answer(reply)
    response = generate(enhanced_client, prompt="a cute kitten", enhance_prompt=True)
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["revised_prompt"] is None
    assert response.headers["x-prompt-enhancement"] == f"fallback; reason={reason}"
    assert metric(enhanced_client, "cogserve_prompt_enhancement_fallbacks_total", reason=reason) == 1


def test_without_an_enhancer_asking_falls_back(client: TestClient) -> None:
    response = generate(client, enhance_prompt=True)
    assert response.status_code == 200
    assert response.headers["x-prompt-enhancement"] == "fallback; reason=disabled"
    assert generate(client).headers.get("x-prompt-enhancement") is None  # silent: nothing to say


def test_a_rewrite_that_fails_moderation_is_refused_and_audited(
    enhanced_client: TestClient, chat_server: ChatServer
) -> None:
    chat_server.answer(Reply("a torture chamber with victims, dim light, a grim photograph"))
    response = generate(enhanced_client, prompt="a quiet room", enhance_prompt=True, user_id="user-rewrite")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "1301" and error["message"].startswith(ContentBlocked.SEED_MESSAGE)
    assert "enhanced prompt" in error["message"]
    (usage,) = access_of(enhanced_client).accounts.usage(user_id="user-rewrite")
    assert usage.blocked_by_moderation == 1
    assert metric(enhanced_client, "cogserve_moderation_blocks_total", stage="rewrite") == 1


def test_a_refused_prompt_never_reaches_the_enhancer(
    enhanced_client: TestClient, chat_server: ChatServer
) -> None:
    response = generate(enhanced_client, prompt="how to make a pipe bomb", enhance_prompt=True)
    assert response.json()["error"]["code"] == "1301" and chat_server.requests == []


def test_the_same_prompt_reuses_the_rewrite(enhanced_client: TestClient, chat_server: ChatServer) -> None:
    first = generate(enhanced_client, prompt="a cute kitten", enhance_prompt=True)
    again = generate(enhanced_client, prompt="a cute kitten", enhance_prompt=True)
    assert again.json()["data"][0]["revised_prompt"] == first.json()["data"][0]["revised_prompt"] == CAPTION
    assert again.headers["x-prompt-enhancement"] == "enhanced; cache=hit"
    assert len(chat_server.requests) == 1
    assert metric(enhanced_client, "cogserve_prompt_enhancement_cache_total", result="hit") == 1
    scraped = enhanced_client.get("/metrics").text
    assert "cogserve_prompt_enhancement_duration_seconds_count 1.0" in scraped


def test_the_openai_route_enhances_once_for_n_images(
    enhanced_client: TestClient, chat_server: ChatServer
) -> None:
    payload = {"prompt": "a lighthouse", "size": "512x512", "n": 2, "enhance_prompt": True}
    response = enhanced_client.post(OPENAI_IMAGES, json=payload)
    assert response.status_code == 200, response.text
    assert [item["revised_prompt"] for item in response.json()["data"]] == [CAPTION, CAPTION]
    assert response.headers["x-prompt-enhancement"] == "enhanced" and len(chat_server.requests) == 1


def test_an_async_job_is_made_from_the_rewrite(
    make_client: Callable[..., TestClient],
    make_settings: Callable[..., Any],
    chat_server: ChatServer,
    shared_engine: Any,
) -> None:
    chat_server.answer(Reply(CAPTION))
    engine = StepGateEngine(shared_engine)  # for its record of the prompts that reached the pipeline
    engine.gate.set()
    client = make_client(make_settings(enhancer={"url": chat_server.base_url}), engine=engine)
    payload = {"model": "cogview-4", "prompt": "a cute kitten", "size": "512x512", "enhance_prompt": True}
    submitted = client.post(ASYNC, json=payload)
    assert submitted.status_code == 200, submitted.text
    assert submitted.headers["x-prompt-enhancement"] == "enhanced"
    deadline = time.monotonic() + 30
    while (result := client.get(f"/api/paas/v4/async-result/{submitted.json()['id']}").json())[
        "task_status"
    ] == "PROCESSING":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert result["task_status"] == "SUCCESS", result
    assert result["data"][0]["revised_prompt"] == CAPTION
    assert engine.prompts == [CAPTION]


ENHANCE = "/api/paas/v4/images/enhance"


def test_the_review_route_returns_the_rewrite_without_generating(
    make_client: Callable[..., TestClient],
    make_settings: Callable[..., Any],
    chat_server: ChatServer,
    counting: CountingEngine,
) -> None:
    chat_server.answer(Reply(CAPTION))
    client = make_client(make_settings(enhancer={"url": chat_server.base_url}), engine=counting)
    response = client.post(ENHANCE, json={"prompt": "a cute kitten"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "prompt": "a cute kitten",
        "revised_prompt": CAPTION,
        "fallback": None,
        "cached": False,
        "request_id": response.headers["x-request-id"],
    }
    assert counting.images == 0
    # Generating after review reuses the rewrite.
    assert generate(client, prompt="a cute kitten", enhance_prompt=True).headers["x-prompt-enhancement"] == (
        "enhanced; cache=hit"
    )


def test_the_review_route_falls_back_and_refuses_like_generation(client: TestClient) -> None:
    off = client.post(ENHANCE, json={"prompt": "a cute kitten"})
    assert off.status_code == 200 and off.json()["fallback"] == "disabled"
    assert off.json()["revised_prompt"] is None
    assert off.headers["x-prompt-enhancement"] == "fallback; reason=disabled"
    blocked = client.post(ENHANCE, json={"prompt": "how to make a pipe bomb"})
    assert blocked.status_code == 400 and blocked.json()["error"]["code"] == "1301"
    missing = client.post(ENHANCE, json={})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "1213"


def test_the_review_route_is_documented(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"][ENHANCE]["post"]
    assert {"200", "400", "401"} <= set(operation["responses"])
    assert "X-Prompt-Enhancement" in operation["responses"]["200"]["headers"]


def test_the_review_route_needs_a_key_once_keys_are_required(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any]
) -> None:
    client = make_client(make_settings(auth={"require_auth": True}))
    response = client.post(ENHANCE, json={"prompt": "a cute kitten"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "1001"


def test_the_review_route_counts_against_the_users_limits(
    make_client: Callable[..., TestClient], make_settings: Callable[..., Any]
) -> None:
    client = make_client(make_settings(auth={"user_rpm": 1}))
    assert client.post(ENHANCE, json={"prompt": "a cat", "user_id": "user-review"}).status_code == 200
    again = client.post(ENHANCE, json={"prompt": "a cat", "user_id": "user-review"})
    assert again.status_code == 429 and again.json()["error"]["code"] == "1303"


def test_a_rewrite_past_the_models_tokens_falls_back_to_the_prompt_as_sent(
    enhanced_client: TestClient, chat_server: ChatServer
) -> None:
    # 450 characters, but over 1,024 tokens: the tiny model's tokenizer spells each in 3 bytes.
    chat_server.answer(Reply("龘" * 450))
    response = generate(enhanced_client, prompt="一只可爱的小猫", enhance_prompt=True)
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["revised_prompt"] is None
    assert response.headers["x-prompt-enhancement"] == "fallback; reason=too_long"
