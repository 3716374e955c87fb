"""--log-format json: every line one JSON object, extras and stack traces included."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from cogserve.logs import JsonFormatter, TextFormatter, configure_logging


def test_json_lines_carry_message_extras_and_the_stack_trace() -> None:
    logger = logging.getLogger("cogserve.test")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logger.makeRecord(
            "cogserve.test",
            logging.ERROR,
            __file__,
            1,
            "request %s failed: %s",
            ("req-1", "ünïcode"),
            exc_info=__import__("sys").exc_info(),
            extra={"request_id": "req-1", "status": 500},
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "request req-1 failed: ünïcode"
    assert entry["level"] == "ERROR" and entry["logger"] == "cogserve.test"
    assert entry["request_id"] == "req-1" and entry["status"] == 500
    assert "ValueError: boom" in entry["exc"]
    assert entry["ts"].endswith("+00:00")


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Put the root logger back as it was after a test that ran ``configure_logging``."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def _record(msg: str, *args: object, name: str = "cogserve.service.generation") -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(name, logging.WARNING, __file__, 1, msg, args, None)


FORGED = "u\n2026-01-01 00:00:00,000 ERROR cogserve: forged\r\x1b[2K\u2028\u202eevil\x85"


def test_a_client_string_cannot_forge_a_text_log_line() -> None:
    line = TextFormatter().format(_record("prompt refused for user_id %s", FORGED))
    assert len(line.splitlines()) == 1
    assert "user_id u\\n2026-01-01" in line and "\\x1b" in line and "\\u2028" in line


def test_a_client_string_cannot_break_a_json_log_line() -> None:
    line = JsonFormatter().format(_record("prompt refused for user_id %s", FORGED))
    assert len(line.splitlines()) == 1
    assert json.loads(line)["message"] == f"prompt refused for user_id {FORGED}"


def test_library_logs_go_through_cogserves_formatter_without_prompt_text(
    capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    from diffusers.utils import logging as diffusers_logging  # noqa: F401  (installs its own handler)

    configure_logging("info", "json")
    pipeline_log = logging.getLogger("diffusers.pipelines.cogview4.pipeline_cogview4")
    pipeline_log.warning(
        "The following part of your input was truncated because `max_sequence_length` is set to "
        " 1024 tokens: ['my secret diagnosis']"
    )
    logging.getLogger("transformers.tokenization_utils_base").warning("tokenizer says %s", "hi")
    logging.getLogger("httpx").info('HTTP Request: POST https://hooks.example/t?token=SECRET "200 OK"')
    lines = capsys.readouterr().err.splitlines()
    entries = [json.loads(line) for line in lines]  # every line is JSON
    assert [entry["logger"] for entry in entries] == [
        "diffusers.pipelines.cogview4.pipeline_cogview4",
        "transformers.tokenization_utils_base",
    ]
    assert "diagnosis" not in "".join(lines) and "cut" in entries[0]["message"]
    assert "SECRET" not in "".join(lines)


def test_alembic_is_quiet_at_the_default_level_and_back_at_debug() -> None:
    from cogserve.logs import configure_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging("info", "text")
        assert not logging.getLogger("alembic.runtime.migration").isEnabledFor(logging.INFO)
        assert logging.getLogger("cogserve.api.app").isEnabledFor(logging.INFO)
        configure_logging("debug", "text")
        assert logging.getLogger("alembic.runtime.migration").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("alembic").setLevel(logging.NOTSET)
