"""Prompt moderation: a keyword policy matched against a normalised prompt.

A policy is a TOML file of categories. Each category has a severity level on BigModel's
``content_filter`` scale (0 most severe ... 3 clean or mild) and a list of terms in any language::

    # my-policy.toml
    extends = "builtin"          # optional: add to the shipped policy instead of replacing it

    [categories.drugs]           # a category the shipped policy has: these terms are added to it,
    terms = ["lean", "紫药水"]    # and `level`, when given, replaces its level

    [categories.gambling]        # a new category needs both fields
    level = 2                    # integer 0..3; 3 records hits without raising the result's level
    description = "online casinos"   # optional, for people reading the file
    terms = ["online casino", "网络赌博"]

Without ``extends`` the file replaces the shipped policy entirely. Keys other than these are
refused, so a typo ("term =") fails at start-up rather than silently matching nothing.

How terms match (each term is written once, in plain form):

- Case and width are ignored (NFKC + casefold): ``ＢＯＭＢ`` and ``Bomb`` read as ``bomb``.
  Zero-width characters and Hangul fillers are dropped; accents on narrow letters are folded
  (NFKD, marks dropped: ``bómb`` reads ``bomb``); Cyrillic and Greek look-alikes read as the
  Latin letters they imitate; ``@`` reads as ``a`` or ``o``.
- Between wide characters, one or two Latin letters or digits and the prolonged-sound mark are
  separators: ``炸x弹``, ``炸1弹`` and ``炸ｰ弹`` contain ``炸弹``.
- A term with Chinese (or other wide) characters matches anywhere in the prompt, ignoring spaces,
  punctuation, symbols and emoji between its characters and repeated characters:
  ``炸 弹``, ``炸.弹``, ``炸💣弹`` and ``炸炸弹弹`` all contain ``炸弹``.
- Other terms match whole words, so ``rape`` does not fire inside ``grape`` or ``therapist``; the
  last word may carry -s, -d, -ed or -ing. Within a word, letters may be spelled out or broken by
  punctuation (``b.o.m.b``, ``k i l l``, ``bo-mb``), a letter may be stretched to three or more
  (``kiiiill``), and digits stand for letters in words that mix both (``k1ll``). Words of a
  multi-word term may be joined or hyphenated (``self harm``, ``self-harm``, ``selfharm``).

The result's level is the most severe level hit (3 when nothing matched); a caller refuses the
prompt when ``result.blocked(threshold)``, i.e. when that level is at or below the threshold.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cogserve.errors import ConfigError

CLEAN_LEVEL = 3
#: Levels 0 and 1 refuse a request, as BigModel's own filter does for severe content.
DEFAULT_BLOCK_THRESHOLD = 1

_BUILTIN = "builtin"
_TOP_KEYS = frozenset({"extends", "categories"})
_CATEGORY_KEYS = frozenset({"level", "description", "terms"})

# Latin-side markers in the normalised text: a gap that held only punctuation or symbols, and the
# gap between two spelled-out single letters. Both are non-word characters, so \b-style lookarounds
# treat them as word edges while term patterns may step over them.
_TIGHT = "\x02"
_SPELL = "\x01"
_IN_WORD = f"[{_SPELL}{_TIGHT}]?"
_BETWEEN_WORDS = f"[ {_SPELL}{_TIGHT}]?"
_SUFFIX = f"(?:{_IN_WORD}(?:s|d|ed|ing))?"
_LEET = str.maketrans("013457", "oieast")
_DROPPED = frozenset({"Cf", "Mn", "Me"})  # zero-width and format characters, combining marks
# Letters that show as nothing (Hangul fillers, after NFKC) or that only lengthen a sound between
# wide characters (the prolonged-sound mark): dropped like format characters.
_INVISIBLE = frozenset("\u115f\u1160\uffa0\u30fc")
# Cyrillic and Greek letters that look like Latin ones (lower case: matching is after casefold),
# hand-picked, mostly from Unicode's confusables data: a word spelled with them reads as the Latin word.
_CONFUSABLES = str.maketrans(
    "аеорсухіјѕԁһӏԛԝкмтвпьαοερτυχικνβ",
    "aeopcyxijsdhlqwkmtbnbaoeptuxikvb",
)
# Latin letters and digits this short between two wide characters are stray: separators there.
_STRAY = re.compile(
    r"(?<=[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff])[a-z0-9]{1,2}(?=[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff])"
)


@dataclass(frozen=True)
class Category:
    name: str
    level: int
    terms: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class Hit:
    category: str
    level: int
    #: The policy term as written in the policy file (not the text that matched it).
    term: str


@dataclass(frozen=True)
class ModerationResult:
    level: int = CLEAN_LEVEL
    hits: list[Hit] = field(default_factory=list)

    def blocked(self, threshold: int = DEFAULT_BLOCK_THRESHOLD) -> bool:
        """Whether to refuse: the most severe hit is at or below ``threshold`` (-1 never blocks)."""
        return self.level <= threshold


@dataclass(frozen=True)
class _Matcher:
    hit: Hit
    pattern: re.Pattern[str] | None  # a word term, matched on the Latin view
    skeleton: str  # a wide (CJK) term, matched as a substring of the skeleton view


class Policy:
    """A compiled policy: terms are normalised and compiled once, here."""

    def __init__(self, categories: Iterable[Category]) -> None:
        self.categories = tuple(categories)
        self._matchers = [_compile(cat, term) for cat in self.categories for term in cat.terms]

    def check(self, prompt: str) -> ModerationResult:
        cleaned = _clean(prompt)
        # "@" stands for "a" or "o" (c@caine, b@mb): each reading is matched.
        readings = [cleaned.replace("@", "a"), cleaned.replace("@", "o")] if "@" in cleaned else [cleaned]
        latins, skeleton = [_latin_view(text) for text in readings], _skeleton(cleaned)
        hits = [
            m.hit
            for m in self._matchers
            if (
                any(m.pattern.search(latin) for latin in latins)
                if m.pattern is not None
                else m.skeleton in skeleton
            )
        ]
        return ModerationResult(min((h.level for h in hits), default=CLEAN_LEVEL), hits)


def load_policy(path: Path | None = None) -> Policy:
    """The shipped policy (``path`` None), or the operator's file, replacing or extending it."""
    builtin = _categories(_parse_builtin(), {}, "built-in policy")
    if path is None:
        return Policy(builtin.values())
    data = _read(path)
    source = f"moderation policy {path}"
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; allowed: extends, categories")
    extends = data.get("extends")
    if extends not in (None, _BUILTIN):
        raise ConfigError(f'{source}: extends must be "{_BUILTIN}", got {extends!r}')
    if "categories" not in data:
        raise ConfigError(f"{source}: no [categories.NAME] tables")
    base = builtin if extends == _BUILTIN else {}
    return Policy(_categories(data["categories"], base, source).values())


def _parse_builtin() -> Any:
    text = resources.files("cogserve.safety").joinpath("policy.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)["categories"]


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read moderation policy {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"moderation policy {path} is not valid TOML: {exc}") from exc


def _categories(raw: Any, base: Mapping[str, Category], source: str) -> dict[str, Category]:
    """Validate ``[categories.*]`` and merge it over ``base`` (empty when the file replaces)."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: categories must be a table of [categories.NAME] tables")
    merged = dict(base)
    for name, table in raw.items():
        where = f"{source}: categories.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table with level and terms")
        unknown = set(table) - _CATEGORY_KEYS
        if unknown:
            allowed = ", ".join(sorted(_CATEGORY_KEYS))
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {allowed}")
        old = merged.get(name)
        level = _level(table["level"], where) if "level" in table else None
        terms = _terms(table["terms"], where) if "terms" in table else ()
        description = table.get("description", old.description if old else "")
        if not isinstance(description, str):
            raise ConfigError(f"{where}.description must be a string")
        if old is None:
            if level is None or not terms:
                raise ConfigError(f"{where}: a new category needs both level (0..3) and terms")
            merged[name] = Category(name, level, terms, description)
        else:
            added = tuple(t for t in terms if t not in old.terms)
            level = old.level if level is None else level
            merged[name] = Category(name, level, old.terms + added, description)
    return merged


def _level(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= CLEAN_LEVEL:
        raise ConfigError(f"{where}.level must be an integer 0..3 (0 most severe), got {value!r}")
    return value


def _terms(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}.terms must be a non-empty list of strings")
    for term in value:
        if not isinstance(term, str):
            raise ConfigError(f"{where}.terms: every term must be a string, got {term!r}")
        if not _skeleton(_clean(term)):
            raise ConfigError(f"{where}.terms: {term!r} has no letters or digits to match")
    return tuple(dict.fromkeys(value))


def _compile(category: Category, term: str) -> _Matcher:
    hit = Hit(category.name, category.level, term)
    cleaned = _clean(term)
    if any(_is_wide(ch) and ch.isalnum() for ch in cleaned):
        return _Matcher(hit, None, _skeleton(cleaned))
    words = _latin_view(cleaned).replace(_SPELL, "").replace(_TIGHT, " ").split()
    body = _BETWEEN_WORDS.join(_word_pattern(w) for w in words)
    return _Matcher(hit, re.compile(rf"(?<![^\W_]){body}{_SUFFIX}(?![^\W_])"), "")


def _word_pattern(word: str) -> str:
    """Each run of a letter matches itself or a longer stretch; a single letter needs three or more
    to count as stretched, so ``raping`` does not also match ``rapping``."""
    parts = []
    for run in re.finditer(r"(.)\1*", word):
        ch, count = re.escape(run.group(1)), len(run.group())
        step = f"(?:{_IN_WORD}{ch})"
        # Possessive repeats: a prompt of 4000 identical letters must not backtrack quadratically.
        more = f"(?:{step}{{2,}}+)?+" if count == 1 else f"{step}{{{count - 1},}}+"
        parts.append(ch + more)
    return _IN_WORD.join(parts)


def _clean(text: str) -> str:
    """Case, width and accents folded, invisible characters dropped, look-alikes read as Latin.

    Accents come off (NFKD, marks dropped) after a narrow letter only, so ``ó`` reads as ``o``
    while a wide character keeps its marks (``が`` stays ``が``, not ``か``).
    """
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    kept: list[str] = []
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cf" or ch in _INVISIBLE:
            continue
        if category in _DROPPED and not (kept and _is_wide(kept[-1])):
            continue
        kept.append(ch)
    return unicodedata.normalize("NFC", "".join(kept)).translate(_CONFUSABLES)


def _is_wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


def _skeleton(cleaned: str) -> str:
    """Letters and digits only, runs of one character collapsed: the view wide terms match in."""
    letters = _STRAY.sub("", "".join(ch for ch in cleaned if ch.isalnum()))
    return re.sub(r"(.)\1+", r"\1", letters)


def _latin_view(cleaned: str) -> str:
    """Words separated by a space (a gap with whitespace or a wide character) or by _TIGHT (a gap of
    punctuation only); consecutive one-character words joined by _SPELL, so b.o.m.b stays findable."""
    marked = "".join(
        ch if ch.isalnum() and not _is_wide(ch) else " " if ch.isspace() or _is_wide(ch) else _TIGHT
        for ch in cleaned
    )
    pieces = re.split(f"([ {_TIGHT}]+)", marked.strip(f" {_TIGHT}"))
    words = [_unleet(w) for w in pieces[0::2]]
    gaps = [" " if " " in g else _TIGHT for g in pieces[1::2]]
    out = [words[0]]
    for gap, prev, word in zip(gaps, words[:-1], words[1:], strict=True):
        out.append(_SPELL if len(prev) == 1 and len(word) == 1 else gap)
        out.append(word)
    return "".join(out)


def _unleet(word: str) -> str:
    has_digit = any(ch.isdigit() for ch in word)
    return word.translate(_LEET) if has_digit and any(ch.isalpha() for ch in word) else word
