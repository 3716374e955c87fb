"""A prompt's length in the text encoder's tokens, counted the way CogView4Pipeline counts it.

``CogView4Pipeline._get_glm_embeds`` tokenizes the bare prompt (no chat template: the pipeline adds
none) with the tokenizer's special tokens, and cuts everything past ``max_sequence_length`` with only
a log warning. The server checks the same count before queueing, so nothing is cut: an over-long
prompt is refused with ``PromptTooLong`` naming the count and the limit.
"""

from __future__ import annotations

from typing import Any

from cogserve.errors import PromptTooLong

#: CogView4Pipeline's ``max_sequence_length`` default; the runner passes it explicitly, so the
#: limit checked here and the length the pipeline keeps cannot drift apart.
MAX_PROMPT_TOKENS = 1024


def count_prompt_tokens(tokenizer: Any, prompt: str) -> int:
    """Tokens the text encoder sees for ``prompt``, special tokens included (the pipeline's padding
    to a multiple of 16 comes after, and is not the prompt's)."""
    return len(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def check_prompt_tokens(count: int, limit: int) -> None:
    if count > limit:
        raise PromptTooLong(
            f"prompt is {count} tokens; the model reads at most {limit} "
            "(shorten it: nothing past the limit would be drawn)"
        )
