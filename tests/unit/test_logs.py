"""--log-format json: every line one JSON object, extras and stack traces included."""

from __future__ import annotations

import json
import logging

from cogserve.logs import JsonFormatter


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
