"""The playground: a single page at ``/`` that drives the async images API from a browser.

The page, its script and its stylesheet ship inside the package (``cogserve/web/``) and are served
from a fixed list of names, so no request path ever reaches the file system. Nothing is loaded from
outside the server: the page works on an air-gapped machine.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from cogserve.api.dependencies import context
from cogserve.api.openapi import error_responses
from cogserve.api.protocol import CLOSED
from cogserve.engine.builtin import SHAPES_EXAMPLES, SHAPES_NOTE, TINY_NOTE
from cogserve.errors import NotFound
from cogserve.service.sizes import DEFAULT_SIZE, MAX_PIXELS, MAX_SIDE, MIN_SIDE, MULTIPLE, RECOMMENDED_SIZES
from cogserve.settings import ModelSettings

CONFIG_PATH = "/playground/config.json"

#: Every file the playground serves, with its content type. Nothing else under web/ is reachable.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}

# The page talks only to this server; images may come from --public-url, which can be another host.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob: http: https:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    # Revalidate each time: the assets change with the installed version, and they are tiny.
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class SizeLimits(BaseModel):
    model_config = CLOSED

    min: int = Field(description="Smallest side, in px.")
    max: int = Field(description="Largest side, in px.")
    multiple: int = Field(description="Each side must be a multiple of this.")
    max_pixels: int = Field(description="Largest width*height, in px.")


class PlaygroundConfig(BaseModel):
    model_config = CLOSED

    auth_required: bool = Field(description="Whether requests need an API key (Authorization: Bearer).")
    models: list[str] = Field(description="Model codes a request may name.")
    recommended_sizes: list[str] = Field(description="The recommended sizes, WIDTHxHEIGHT.")
    default_size: str = Field(description="The size used when a request names none.")
    max_prompt_chars: int = Field(description="Longest prompt accepted, in characters (code points).")
    sizes: SizeLimits = Field(description="The rules a custom size must follow.")
    model_note: str | None = Field(
        None, description="What the served model can draw, when it is a built-in model with limits."
    )
    example_prompts: list[str] = Field(
        default_factory=list, description="Prompts the served model draws well (may be empty)."
    )
    enhancer: bool = Field(
        False, description="Whether the server can rewrite prompts (POST /api/paas/v4/images/enhance)."
    )


router = APIRouter()


def _read_asset(name: str) -> bytes:
    return resources.files("cogserve").joinpath("web", name).read_bytes()


async def _asset(name: str) -> Response:
    body = await asyncio.to_thread(_read_asset, name)
    headers = dict(_HEADERS)
    if name.endswith(".html"):
        headers["Content-Security-Policy"] = _CSP
    return Response(body, media_type=ASSETS[name], headers=headers)


@router.get("/", include_in_schema=False)
async def playground_page() -> Response:
    return await _asset("index.html")


@router.get(
    CONFIG_PATH,
    response_model=PlaygroundConfig,
    summary="What the playground page needs to know: models, sizes, limits, whether a key is needed",
    responses=error_responses(500),
)
async def playground_config(request: Request) -> PlaygroundConfig:
    ctx = context(request)
    model = ctx.settings.model
    return PlaygroundConfig(
        auth_required=await asyncio.to_thread(ctx.access.auth_required),
        models=list(model.codes),
        recommended_sizes=list(RECOMMENDED_SIZES),
        default_size=DEFAULT_SIZE,
        max_prompt_chars=model.max_prompt_chars,
        sizes=SizeLimits(min=MIN_SIDE, max=MAX_SIDE, multiple=MULTIPLE, max_pixels=MAX_PIXELS),
        enhancer=ctx.settings.enhancer.url is not None,
        **_model_guide(model),
    )


def _model_guide(model: ModelSettings) -> dict[str, Any]:
    """Say what a built-in model draws: the shapes model, a small world (with prompts from it); the
    tiny random one, noise. A CogView4 checkpoint needs no note."""
    if model.model_family == "shapes":
        return {"model_note": SHAPES_NOTE, "example_prompts": list(SHAPES_EXAMPLES)}
    if model.model_family == "tiny-random":
        return {"model_note": TINY_NOTE}
    return {}


@router.get("/playground/{name}", include_in_schema=False)
async def playground_asset(name: str) -> Response:
    if name not in ASSETS:
        raise NotFound(f"no playground file named '{name}'")
    return await _asset(name)
