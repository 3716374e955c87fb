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


def padded_prompt_embeds(pipe: Any, prompts: list[str], min_tokens: int) -> Any:
    """The text states ``CogView4Pipeline`` makes for ``prompts``, with the token ids left-padded to
    at least ``min_tokens`` (then to a multiple of 16, as the pipeline pads).

    The pipeline pads only to the next multiple of 16, and its text encoder reads the pad tokens
    (it is given no attention mask), so what a prompt's first words encode to depends on how much
    padding precedes them. A model trained on batches padded to their longest caption needs its
    prompts padded as much at serving (a model folder says so with ``prompt_tokens``).
    """
    tokenizer = pipe.tokenizer
    ids = tokenizer(
        prompts,
        padding="longest",
        max_length=MAX_PROMPT_TOKENS,
        truncation=True,  # the server refused longer prompts already; the pipeline cuts here too
        add_special_tokens=True,
        return_tensors="pt",
    ).input_ids
    ids = left_pad(ids, tokenizer.pad_token_id, min_tokens)
    states = pipe.text_encoder(ids.to(pipe._execution_device), output_hidden_states=True).hidden_states[-2]
    return states.to(pipe.transformer.dtype)


def left_pad(ids: Any, pad_id: int, min_tokens: int) -> Any:
    """Token ids (a batch, one row a prompt) left-padded with ``pad_id`` to at least ``min_tokens``,
    then to a multiple of 16: the pipeline's padding, which training pads its captions with too."""
    import torch

    length = max(ids.shape[1], min_tokens)
    length += -length % 16
    if length == ids.shape[1]:
        return ids
    pad = torch.full((ids.shape[0], length - ids.shape[1]), pad_id, dtype=ids.dtype, device=ids.device)
    return torch.cat([pad, ids], dim=1)
