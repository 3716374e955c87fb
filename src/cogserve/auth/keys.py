"""API keys: ``<id>.<secret>``, as BigModel issues them.

The id is public (it travels in every JWT's payload) and names the row; the secret is what proves
the caller holds the key. It is shown once, at creation, and stored only sealed (``crypto``).
Neither part may contain a dot: the SDKs split the key on "." and expect exactly two parts.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cogserve.auth.crypto import SecretBox
from cogserve.auth.identity import ApiKey
from cogserve.engine.lora import NAME_PATTERN, valid_name
from cogserve.errors import InvalidField

if TYPE_CHECKING:
    from cogserve.storage.accounts import AccountStore

_ID_HEX_BYTES = 12  # 24 hex characters
_SECRET_BYTES = 24  # 192 bits, 32 URL-safe base64 characters
# What an id in a request may look like before it is worth a database lookup.
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ApiKeys:
    """Creates keys and recovers their secrets; the ``AccountStore`` keeps the rows."""

    def __init__(self, store: AccountStore, box: SecretBox) -> None:
        self._store = store
        self._box = box

    def create(
        self,
        name: str = "",
        *,
        rpm_limit: int | None = None,
        concurrency_limit: int | None = None,
        allow_no_watermark: bool = False,
        loras: Sequence[str] | None = None,
    ) -> tuple[ApiKey, str]:
        """Make and store a key; returns it and the full ``<id>.<secret>`` string, shown only now.

        A limit of None means the server's default applies; 0 means unlimited for this key.
        ``loras``: the only LoRA adapters the key may use (None: any; empty: none).
        """
        if loras is not None:
            bad = [name for name in loras if not valid_name(name)]
            if bad:
                raise InvalidField("loras", f"'{bad[0]}' is not an adapter name ({NAME_PATTERN})")
        if len(name) > 128:
            raise InvalidField("name", "at most 128 characters")
        for field, limit in (("rpm_limit", rpm_limit), ("concurrency_limit", concurrency_limit)):
            if limit is not None and limit < 0:
                raise InvalidField(field, "must be 0 (unlimited) or more")
        # Not at the top: storage.accounts imports this package (``identity``), see there.
        from cogserve.storage.accounts import ApiKeyRow

        key_id = secrets.token_hex(_ID_HEX_BYTES)
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        row = ApiKeyRow(
            id=key_id,
            name=name,
            sealed_secret=self._box.seal(secret.encode(), key_id=key_id),
            created_at=time.time(),
            revoked_at=None,
            rpm_limit=rpm_limit,
            concurrency_limit=concurrency_limit,
            allow_no_watermark=allow_no_watermark,
            loras=None if loras is None else json.dumps(sorted(set(loras))),
        )
        self._store.add_key(row)
        return row.api_key(), f"{key_id}.{secret}"

    def lookup(self, key_id: str) -> tuple[ApiKey, bytes] | None:
        """The key and its secret, or None if there is no such key. Reads the row every time, so
        a revocation holds from the next request on."""
        if not KEY_ID_PATTERN.fullmatch(key_id):
            return None
        row = self._store.get_key(key_id)
        if row is None:
            return None
        return row.api_key(), self._box.open(row.sealed_secret, key_id=row.id)
