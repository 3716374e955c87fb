"""Prompt enhancement: an OpenAI-compatible chat model rewrites a short prompt into the long, detailed
caption CogView4 was trained on, as CogView4's own ``prompt_optimize`` does (a system prompt, few-shot
pairs, temperature 0.01, top_p 0.7, max_tokens 300).

Failure is never the user's: an enhancer that is off, down, slow past its timeout or answering junk
(empty, too long, another language, JSON or markdown instead of a caption) leaves the prompt as sent,
and the ``Enhancement`` says why. Good rewrites are cached (bounded LRU) by prompt and enhancer
settings, so retries and SDK re-sends do not pay twice. Prompts never reach the log.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import ssl
import time
import tomllib
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import certifi
import httpx

from cogserve.errors import ConfigError
from cogserve.metrics import Metrics
from cogserve.settings import EnhancerSettings

log = logging.getLogger(__name__)

#: Sampling as CogView4's prompt_optimize.py asks for it: near-greedy, one short paragraph.
TEMPERATURE = 0.01
TOP_P = 0.7
MAX_TOKENS = 300
#: Between retries, doubling; small, because a user is waiting.
RETRY_BACKOFF_S = 0.2

FallbackReason = Literal[
    "disabled",
    "unavailable",
    "timeout",
    "bad_response",
    "empty",
    "too_long",
    "wrong_language",
    "not_a_prompt",
]

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Markdown a caption never holds: fences, headings, list items, bold.
_MARKDOWN = re.compile(r"```|^\s{0,3}#{1,6}\s|^\s*(?:[-*+]|\d+\.)\s|\*\*", re.MULTILINE)


@dataclass(frozen=True)
class Instructions:
    """What the enhancer model is told: a system prompt and (idea, caption) example pairs."""

    system: str
    examples: tuple[tuple[str, str], ...]

    def messages(self, prompt: str) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system}]
        for user, assistant in self.examples:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        messages.append({"role": "user", "content": prompt})
        return messages

    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.system, self.examples]).encode()).hexdigest()


def load_instructions(path: Path | None = None) -> Instructions:
    """The shipped instructions (``path`` None) or the operator's TOML file of the same shape."""
    if path is None:
        text = resources.files("cogserve.service").joinpath("enhancer_prompt.toml").read_text("utf-8")
        source = "built-in enhancer prompt"
    else:
        source = f"enhancer prompt file {path}"
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise ConfigError(f"{source}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
        system = data["system"].strip()
        examples = tuple(
            (pair["user"].strip(), pair["assistant"].strip()) for pair in data.get("examples", [])
        )
    except (tomllib.TOMLDecodeError, KeyError, AttributeError, TypeError) as exc:
        raise ConfigError(
            f'{source}: needs system = "..." and [[examples]] with user and assistant ({exc})'
        ) from None
    if not system:
        raise ConfigError(f"{source}: the system prompt is empty")
    return Instructions(system, examples)


@dataclass(frozen=True)
class Enhancement:
    """What became of one prompt: ``revised`` is the rewrite, or None with ``fallback`` saying why."""

    revised: str | None
    fallback: FallbackReason | None = None
    cached: bool = False

    def header(self) -> str:
        """The X-Prompt-Enhancement header's value."""
        if self.revised is None:
            return f"fallback; reason={self.fallback}"
        return "enhanced; cache=hit" if self.cached else "enhanced"


class _Fallback(Exception):
    def __init__(self, reason: FallbackReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class PromptEnhancer:
    def __init__(self, settings: EnhancerSettings, metrics: Metrics, max_prompt_chars: int) -> None:
        self._settings = settings
        self._metrics = metrics
        self._instructions = load_instructions(settings.prompt_file)
        self._max_chars = min(settings.max_chars, max_prompt_chars)
        # The settings that change a rewrite are part of its cache key.
        self._key_prefix = f"{settings.url}\x00{settings.model}\x00{self._instructions.digest()}\x00"
        self._cache: OrderedDict[str, str] = OrderedDict()
        # Built once: loading the CA bundle per call was most of its overhead (measured on loopback:
        # 64 ms a call with a new context each time, 6 ms with this one).
        self._tls = ssl.create_default_context(cafile=certifi.where())

    @property
    def enabled(self) -> bool:
        return self._settings.url is not None

    def wanted(self, prompt: str, asked: bool | None) -> bool:
        """Whether to enhance: the request's ``enhance_prompt`` if sent, else the operator's mode."""
        if asked is not None:
            return asked
        mode = self._settings.mode
        return self.enabled and (
            mode == "always" or (mode == "auto" and len(prompt) < self._settings.auto_max_chars)
        )

    async def enhance(self, prompt: str) -> Enhancement:
        """The prompt's rewrite, from the cache or the enhancer; a fallback, never an error."""
        if not self.enabled:
            return self.fell_back("disabled", "no enhancer is configured (--enhancer-url)")
        key = self._key_prefix + prompt
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self._metrics.enhancer_cache(hit=True)
            return Enhancement(cached, cached=True)
        self._metrics.enhancer_cache(hit=False)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                answer = await self._ask(prompt)
            revised = self._checked(prompt, answer)
        except TimeoutError:
            return self.fell_back("timeout", f"no answer within {self._settings.timeout_s:g} s")
        except _Fallback as exc:
            return self.fell_back(exc.reason, str(exc))
        finally:
            self._metrics.enhancer_seconds(time.perf_counter() - started)
        if self._settings.cache_size > 0:
            self._cache[key] = revised
            if len(self._cache) > self._settings.cache_size:
                self._cache.popitem(last=False)
        return Enhancement(revised)

    def fell_back(self, reason: FallbackReason, detail: str) -> Enhancement:
        log.warning("prompt enhancement fell back to the prompt as sent: %s (%s)", reason, detail)
        self._metrics.enhancer_fallback(reason)
        return Enhancement(None, reason)

    async def _ask(self, prompt: str) -> dict[str, Any]:
        """The chat-completions answer, retrying connection errors, 429 and 5xx with doubling waits."""
        settings = self._settings
        body = {
            "model": settings.model,
            "messages": self._instructions.messages(prompt),
            "temperature": TEMPERATURE,
            "top_p": TOP_P,
            "max_tokens": MAX_TOKENS,
            "stream": False,
        }
        headers = {}
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        delay = RETRY_BACKOFF_S
        async with httpx.AsyncClient(
            timeout=settings.timeout_s, follow_redirects=False, verify=self._tls
        ) as client:
            for attempt in range(settings.retries + 1):
                last = attempt == settings.retries
                try:
                    response = await client.post(
                        f"{settings.url}/chat/completions", json=body, headers=headers
                    )
                except httpx.TimeoutException:
                    raise TimeoutError from None
                except httpx.HTTPError as exc:
                    reason = f"{type(exc).__name__}"
                else:
                    if response.is_success:
                        return _json_of(response)
                    reason = f"HTTP {response.status_code}"
                    if response.status_code not in (408, 429) and response.status_code < 500:
                        raise _Fallback("unavailable", f"{reason}, not retried")
                if last:
                    raise _Fallback("unavailable", f"{reason} after {attempt + 1} attempt(s)")
                log.info("prompt enhancer: attempt %d failed (%s); retrying", attempt + 1, reason)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # the loop returns or raises

    def _checked(self, prompt: str, answer: dict[str, Any]) -> str:
        """The caption in a chat-completions answer, or _Fallback saying why it is not one."""
        try:
            choice = answer["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _Fallback("bad_response", "no choices[0].message.content") from None
        if not isinstance(content, str):
            raise _Fallback("bad_response", "the content is not a string")
        text = content.strip().strip('"“”').strip()
        if not text:
            raise _Fallback("empty", "an empty caption")
        if choice.get("finish_reason") == "length" or len(text) > self._max_chars:
            raise _Fallback("too_long", f"{len(text)} characters, cut off or over {self._max_chars}")
        if _looks_structured(text):
            raise _Fallback("not_a_prompt", "JSON or markdown instead of a caption")
        if _script(prompt) != _script(text) and None not in (_script(prompt), _script(text)):
            raise _Fallback("wrong_language", f"asked in {_script(prompt)}, answered in {_script(text)}")
        return text


def _json_of(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        raise _Fallback("bad_response", "the answer is not JSON") from None
    if not isinstance(data, dict):
        raise _Fallback("bad_response", "the answer is not a JSON object")
    return data


def _looks_structured(text: str) -> bool:
    if text[0] in "{[":
        try:
            json.loads(text)
        except ValueError:
            pass
        else:
            return True
    return _MARKDOWN.search(text) is not None


def _script(text: str) -> Literal["chinese", "other"] | None:
    """Which writing the text is mostly in; None when mixed (or no letters), where no check applies."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return None
    share = sum(1 for c in letters if _CJK.match(c)) / len(letters)
    if share >= 0.5:
        return "chinese"
    return "other" if share <= 0.1 else None
