"""How end-user ids (``user_id``, OpenAI's ``user``) are matched: blocks and per-user limits.

Ids are stored and echoed as the client sent them, but compared by ``match_key``, so that
``USER-123456``, `` user-123456 ``, ``user\u200b-123456`` or full-width ``ｕｓｅｒ-123456`` cannot
escape a block of ``user-123456`` or get limits of their own.
"""

from __future__ import annotations

import unicodedata

# Characters that show as nothing but are not format characters (category Cf, dropped as a
# class): the combining grapheme joiner and the Hangul fillers.
_INVISIBLE_LETTERS = frozenset("\u034f\u115f\u1160\u3164\uffa0")


def match_key(user_id: str) -> str:
    """``user_id`` as compared: NFKC, invisible characters dropped, trimmed, case-folded."""
    text = unicodedata.normalize("NFKC", user_id)
    visible = "".join(
        char for char in text if unicodedata.category(char) != "Cf" and char not in _INVISIBLE_LETTERS
    )
    # Case folding can leave text that NFKC would change again (e.g. U+0130); normalise once more.
    return unicodedata.normalize("NFKC", visible.strip().casefold())
