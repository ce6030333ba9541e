"""Log lines cannot be forged from the network: control characters are escaped."""

from __future__ import annotations

import io
import logging
import queue

from callengine.logs import LogQueueHandler, escape_controls


def test_escape_controls_keeps_one_line() -> None:
    assert escape_controls("caller 100 -> 200") == "caller 100 -> 200"
    assert escape_controls("x\r\nFailed password") == "x\\x0d\\x0aFailed password"
    assert escape_controls("a\x00b\x1bc\x7fd\x85e\u2028f") == ("a\\x00b\\x1bc\\x7fd\\x85e\\u2028f")
    assert escape_controls("Zoë ☎") == "Zoë ☎"  # printable non-ASCII stays readable


def test_queued_records_are_escaped_message_and_call_id() -> None:
    records: queue.Queue[logging.LogRecord] = queue.Queue()
    handler = LogQueueHandler(records)
    logger = logging.getLogger("test.logs.injection")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning(
            "call %s -> %s",
            "evil\n2026-11-30 00:00:00 WARNING forged",
            "9123\r\nX: 1",
            extra={"call_id": "id\nforged"},
        )
    finally:
        logger.removeHandler(handler)
    record = records.get_nowait()
    out = io.StringIO()
    stream = logging.StreamHandler(out)
    stream.setFormatter(logging.Formatter("[%(call_id)s] %(message)s"))
    stream.handle(record)
    text = out.getvalue()
    assert text.count("\n") == 1, text
    assert text == (
        "[id\\x0aforged] call evil\\x0a2026-11-30 00:00:00 WARNING forged -> 9123\\x0d\\x0aX: 1\n"
    )
