"""``ApiKey``: what an authenticated request knows about its key.

``storage.accounts`` stores keys as this type, so importing it loads this package (its
``__init__`` first): no module here may import ``storage.accounts`` at load time, or the two would
wait on each other. ``keys`` imports it where it uses it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ApiKey:
    """An API key's public record (never the secret)."""

    id: str
    name: str
    created_at: float
    revoked_at: float | None
    rpm_limit: int | None
    concurrency_limit: int | None
    allow_no_watermark: bool
    #: The LoRA adapters requests with this key may use; None: any the server serves.
    loras: tuple[str, ...] | None = None
