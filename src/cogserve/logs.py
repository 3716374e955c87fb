"""Logging set-up: human-readable lines, or one JSON object per line for log collectors.

Log lines carry strings clients chose (user ids, paths, webhook hosts). The text format escapes
control and line-breaking characters in them, so a client cannot write a line of its own into
the log; JSON escapes them by being JSON. Libraries that install their own handler (diffusers,
transformers) are routed through the same formatter (``adopt_library_loggers``), and diffusers'
notice of a cut prompt, which quotes the cut text, is logged without it (prompts may hold
personal data).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is kept.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# C0 and C1 controls (newline, CR, ESC...), Unicode line and paragraph separators, and the
# bidirectional overrides and isolates that make a line read differently than it is.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# Libraries that give their logger a handler of its own and stop propagation.
_LIBRARIES = ("diffusers", "transformers", "torch")
# diffusers' "The following part of your input was truncated because ...: <the cut prompt text>".
_CUT_PROMPT = "The following part of your input was truncated"


def escape_controls(text: str) -> str:
    """``text`` with each unsafe character written as its Python escape (``\\n``, ``\\x1b``...)."""
    return _UNSAFE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT`` lines whose message part cannot break the line or fake another one.

    A stack trace keeps its lines: it is the server's own text, below the escaped message.
    """

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))


class CutPromptFilter(logging.Filter):
    """Rewrites diffusers' notice of a truncated prompt so it no longer quotes the prompt."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("diffusers") and str(record.msg).startswith(_CUT_PROMPT):
            record.msg = "a prompt was longer than the model's token limit and was cut (text not logged)"
            record.args = None
        return True


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", ...extra, "exc"?}``: one line, never a broken one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        line = json.dumps(entry, ensure_ascii=False, default=str)
        # JSON leaves C1 controls and U+2028/9 raw, and line-splitting tools break lines there.
        return _UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", line)


#: Libraries whose INFO lines say nothing an operator acts on (Alembic: a dozen lines of plugins and
#: "Context impl SQLiteImpl" at every start); shown again with --log-level debug.
QUIET_AT_INFO = ("alembic",)


def configure_logging(level: str, log_format: LogFormat) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(CutPromptFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for name in QUIET_AT_INFO:
        logging.getLogger(name).setLevel(logging.NOTSET if level.lower() == "debug" else logging.WARNING)
    # httpx logs each request's full URL at INFO; a webhook URL may carry the receiver's token.
    # cogserve logs the webhook's host itself (service/webhooks.py).
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)  # Python warnings too, not raw lines on stderr
    adopt_library_loggers()


def adopt_library_loggers() -> None:
    """Send diffusers' and transformers' records to the root handler, not to their own.

    Only libraries already imported are changed (importing them here would cost seconds to every
    command); the engine calls this again once it has imported them, before the imports that log.
    """
    for library in _LIBRARIES:
        if library not in sys.modules:
            continue
        library_logging = sys.modules.get(f"{library}.utils.logging")
        if library_logging is not None:  # diffusers, transformers: their own switches, so they stay off
            library_logging.disable_default_handler()
            library_logging.enable_propagation()
        logger = logging.getLogger(library)
        logger.handlers.clear()
        logger.propagate = True
