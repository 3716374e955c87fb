"""The Content Credentials of a stored image, as a C2PA reader sees them (a cogserve extension).

The playground shows them in a badge under each image. Like ``/files/``, the image id is the
capability: the manifest is inside the image bytes anyway, so the route asks for no key.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request

from cogserve.api.dependencies import context
from cogserve.api.openapi import error_responses
from cogserve.api.paths import CREDENTIALS_PATH
from cogserve.api.protocol import CredentialsAnswer

router = APIRouter()


@router.get(
    CREDENTIALS_PATH,
    response_model=CredentialsAnswer,
    responses=error_responses(404, 500),
    summary="Read and validate a generated image's Content Credentials (cogserve extension)",
)
async def image_credentials(image_id: str, request: Request) -> CredentialsAnswer:
    found = await context(request).service.credentials(image_id)
    if found is None:
        return CredentialsAnswer(present=False)
    return CredentialsAnswer(present=True, **found.as_dict())
