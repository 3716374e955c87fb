"""The Content Credentials of a stored image, as a C2PA reader sees them (a cogserve extension).

The playground shows them in a badge under each image. Like ``/files/``, the image id is the
capability: the manifest is inside the image bytes anyway, so the route asks for no key.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.requests import Request

from cogserve.api.dependencies import context
from cogserve.api.openapi import error_responses
from cogserve.api.paths import CREDENTIALS_PATH
from cogserve.api.protocol import CLOSED

router = APIRouter()


class CredentialsAnswer(BaseModel):
    model_config = CLOSED

    present: bool = Field(description="Whether the image carries a C2PA manifest at all.")
    state: str | None = Field(
        None,
        description="c2pa's verdict: Trusted (valid, signer on the trust list), Valid (signature and "
        "hash binding check out; signer on no trust list, e.g. a development certificate) or Invalid.",
    )
    valid: bool = Field(False, description="Signature and hash binding check out (state Valid or Trusted).")
    trusted: bool = Field(False, description="The signer chains to a trust anchor the server's reader has.")
    signature_valid: bool = Field(False, description="The claim signature verifies.")
    binding_valid: bool = Field(False, description="The hash of the image bytes matches the manifest.")
    ai_generated: bool = Field(
        False, description="The manifest says trainedAlgorithmicMedia (made by a trained model)."
    )
    failures: list[str] = Field(default_factory=list, description="c2pa's failure codes, if any.")
    claims: dict[str, Any] = Field(
        default_factory=dict,
        description="What the manifest says: generator, action, digital_source_type, model, image_id, "
        "server, signed_by, issuer (prompt and user_id only when the operator puts them in).",
    )


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
