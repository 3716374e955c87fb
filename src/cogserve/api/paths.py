"""Every route path the API serves, in one place (the OpenAPI refinements and audit rows use them)."""

from __future__ import annotations

#: BigModel's images API.
IMAGES_PATH = "/api/paas/v4/images/generations"
ASYNC_PATH = "/api/paas/v4/async/images/generations"
#: cogserve extension: the enhancer's rewrite of a prompt, without generating (review it first).
ENHANCE_PATH = "/api/paas/v4/images/enhance"
RESULT_PATH = "/api/paas/v4/async-result/{job_id}"
CANCEL_PATH = ASYNC_PATH + "/{job_id}/cancel"
#: Where a generated image is fetched (its link, unless presigned S3 URLs are on).
FILES_PATH = "/files/{name}"
#: cogserve extension: a stored image's Content Credentials (C2PA manifest), read and validated.
CREDENTIALS_PATH = "/files/{image_id}/credentials"

#: OpenAI's API lives below this prefix; errors there use OpenAI's envelope (api.errors).
OPENAI_PREFIX = "/v1"
OPENAI_IMAGES_PATH = f"{OPENAI_PREFIX}/images/generations"
OPENAI_MODELS_PATH = f"{OPENAI_PREFIX}/models"


def is_openai(path: str) -> bool:
    """Whether ``path`` (below any mount prefix) belongs to the OpenAI-compatible API."""
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")
