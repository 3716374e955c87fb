"""Prompt enhancement through both SDKs against a live ``cogserve serve --enhancer-url`` whose
enhancer is a loopback chat-completions server: revised_prompt reaches the SDKs' own fields."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.components.chat import ChatServer, Reply, chat_server  # noqa: F401  (the fixture)
from tests.e2e.conftest import Server, start_server, stop_server

# A live server per test: tens of seconds.
pytestmark = pytest.mark.slow

CAPTION = "A red panda curled on a mossy branch in a misty bamboo forest, soft light, a detailed photograph."
ZH_CAPTION = "一只小熊猫蜷缩在长满青苔的树枝上，四周是薄雾笼罩的竹林，光线柔和，细节丰富的摄影作品。"


@pytest.fixture
def enhanced_server(tmp_path: Path, models_dir: Path, chat_server: ChatServer) -> Iterator[Server]:  # noqa: F811
    running = start_server(
        tmp_path / "data", models_dir, "--enhancer-url", chat_server.base_url, "--enhancer-mode", "never"
    )
    yield running
    stop_server(running.process)


def test_both_sdks_read_the_rewrite(enhanced_server: Server, chat_server: ChatServer) -> None:  # noqa: F811
    from zhipuai import ZhipuAI

    chat_server.answer(Reply(CAPTION))
    openai_client = OpenAI(base_url=f"{enhanced_server.url}/v1", api_key="anything", max_retries=0)
    response = openai_client.images.generate(
        prompt="a red panda", size="512x512", extra_body={"enhance_prompt": True}
    )
    assert response.data[0].revised_prompt == CAPTION
    # The operator's mode is never: a request that does not ask is not enhanced.
    assert openai_client.images.generate(prompt="a red panda", size="512x512").data[0].revised_prompt is None

    chat_server.answer(Reply(ZH_CAPTION))
    zhipu = ZhipuAI(api_key="any-key", base_url=f"{enhanced_server.url}/api/paas/v4")
    answer = zhipu.images.generations(
        model="cogview-4", prompt="小熊猫", size="512x512", extra_body={"enhance_prompt": True}
    )
    assert answer.data[0].revised_prompt == ZH_CAPTION
    assert len(chat_server.requests) == 2
