"""Prompts within the model's limit: counted in the served model's tokens before queueing, on every
route; over the limit is 400/1261 naming the count and the limit, and nothing reaches the pipeline."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from cogserve.api.paths import ASYNC_PATH, IMAGES_PATH, OPENAI_IMAGES_PATH
from cogserve.engine import Engine
from cogserve.engine.prompt_tokens import MAX_PROMPT_TOKENS, check_prompt_tokens
from cogserve.errors import PromptTooLong
from tests.helpers import CountingEngine

# Under the 4,000-character limit, but 3,992 of the built-in tokenizer's tokens (the case:
# a 3,990-character prompt answered 200 while the pipeline kept only its first 1,024 tokens).
LONG_PROMPT = "x" * 3990


def test_the_count_is_what_the_pipeline_reads(shared_engine: Engine) -> None:
    # CogView4Pipeline tokenizes with special tokens and truncates at max_sequence_length: the
    # count must equal the untruncated length, so "over the limit" means "the pipeline would cut".
    tokenizer = shared_engine._pipe.tokenizer  # type: ignore[attr-defined]
    for prompt in ("a cat", "猫" * 600, LONG_PROMPT):
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        assert shared_engine.count_prompt_tokens(prompt) == len(ids)
    tokens = shared_engine._pipe.tokenizer("a cat", add_special_tokens=False)["input_ids"]  # type: ignore[attr-defined]
    assert shared_engine.count_prompt_tokens("a cat") > len(tokens)  # special tokens counted
    assert shared_engine.info.max_prompt_tokens == MAX_PROMPT_TOKENS == 1024


def test_the_limit_itself_is_allowed() -> None:
    check_prompt_tokens(MAX_PROMPT_TOKENS, MAX_PROMPT_TOKENS)
    with pytest.raises(PromptTooLong) as info:
        check_prompt_tokens(MAX_PROMPT_TOKENS + 1, MAX_PROMPT_TOKENS)
    assert info.value.code == "1261" and info.value.status == 400
    assert "1025 tokens" in info.value.message and "1024" in info.value.message


@pytest.fixture
def counted(make_client: Callable[..., TestClient], counting: CountingEngine) -> TestClient:
    return make_client(engine=counting)


@pytest.mark.parametrize("path", [IMAGES_PATH, ASYNC_PATH])
def test_bigmodel_routes_refuse_before_queueing(
    counted: TestClient, counting: CountingEngine, path: str
) -> None:
    response = counted.post(path, json={"model": "cogview-4", "prompt": LONG_PROMPT, "size": "512x512"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "1261"
    assert "3992 tokens" in error["message"] and "1024" in error["message"]
    assert counting.images == 0


def test_openai_route_refuses_before_queueing(counted: TestClient, counting: CountingEngine) -> None:
    response = counted.post(OPENAI_IMAGES_PATH, json={"prompt": "猫" * 1500, "size": "512x512", "n": 2})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "string_above_max_length" and error["param"] == "prompt"
    assert "3002 tokens" in error["message"] and "1024" in error["message"]
    assert counting.images == 0
