"""``cogserve enhance "..."``: the enhancer's rewrite of a prompt, printed, without generating.

It asks the enhancer configured by the flags and ``COGSERVE_ENHANCER__*`` (as ``serve`` would), so an
operator can try a model or a prompt file before serving with it. A fallback is an error here: the
command exists to show the rewrite.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from cogserve.cli.options import (
    EXIT_FAILED,
    EnhancerModel,
    EnhancerPromptFile,
    EnhancerRetries,
    EnhancerTimeout,
    EnhancerUrl,
    build_settings,
    configure_process,
    enhancer_flags,
    fail,
)
from cogserve.errors import CogserveError


def enhance(
    prompt: Annotated[str, typer.Argument(help="The prompt to rewrite")],
    enhancer_url: EnhancerUrl = None,
    enhancer_model: EnhancerModel = None,
    enhancer_timeout: EnhancerTimeout = None,
    enhancer_retries: EnhancerRetries = None,
    enhancer_prompt_file: EnhancerPromptFile = None,
) -> None:
    """Print the enhancer's rewrite of a prompt (what enhance_prompt would generate from)."""
    from cogserve.metrics import Metrics
    from cogserve.service.enhancer import PromptEnhancer

    settings = build_settings(
        enhancer=enhancer_flags(
            enhancer_url, enhancer_model, enhancer_timeout, enhancer_retries, enhancer_prompt_file
        )
    )
    configure_process(settings, "warning")
    try:
        enhancer = PromptEnhancer(settings.enhancer, Metrics(), settings.model.max_prompt_chars)
    except CogserveError as exc:
        fail(exc.message)
    if not enhancer.enabled:
        fail("no enhancer is configured: pass --enhancer-url or set COGSERVE_ENHANCER__URL")
    result = asyncio.run(enhancer.enhance(prompt))
    if result.revised is None:
        fail(
            f"the enhancer gave no usable rewrite ({result.fallback}); see the warning above",
            code=EXIT_FAILED,
        )
    typer.echo(result.revised)
