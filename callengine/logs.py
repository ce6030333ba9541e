"""Log lines, plain or JSON, each carrying the id of the call it is about.

The daemon writes them from a thread of their own: the event loop only puts a record
on a bounded queue (a write to stderr blocks when journald or a pipe is slow, or
the disk flushes, and every call's audio would wait for it). When the queue is full
the record is dropped and counted (``callengine_log_records_dropped_total``).

Values in log lines come from the network (caller names, numbers, Call-IDs, User-Agent):
control characters in them are escaped (``\\x0a``), so that a caller named
``x%0A... Failed password for admin`` cannot forge a line that log readers (fail2ban,
grep, an operator) would take for another.
"""

from __future__ import annotations

import copy
import json
import logging
import logging.handlers
import queue
import sys
import time

from .context import current_call_id

__all__ = ["LogQueueHandler", "escape_controls", "setup_logging"]

# C0 controls, DEL, C1 controls and the Unicode line/paragraph separators
_CONTROLS = {
    c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
}


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (one line, always)."""
    if text.isprintable():
        return text
    return text.translate(_CONTROLS)


class _CallIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "call_id"):
            record.call_id = current_call_id.get()
        return True


def _prepared(record: logging.LogRecord) -> logging.LogRecord:
    """A copy of ``record`` with its message rendered and escaped (and its traceback
    text rendered): safe to format in another thread, one line per value."""
    record = copy.copy(record)
    record.msg = escape_controls(record.getMessage())
    record.args = None
    call_id = getattr(record, "call_id", None)
    if isinstance(call_id, str):
        record.call_id = escape_controls(call_id)
    if record.exc_info:
        record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        record.exc_info = None
    return record


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, call_id, msg (+ exc)."""

    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "call_id": getattr(record, "call_id", "-"),
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            obj["exc"] = record.exc_text
        return json.dumps(obj, ensure_ascii=False)


_TRACEBACKS = logging.Formatter()


class LogQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread; drops (and counts) them when it lags."""

    dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # what must be read in this thread: the message's arguments and the traceback
        return _prepared(record)

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            LogQueueHandler.dropped += 1


def setup_logging(
    fmt: str = "plain", level: str = "INFO", *, queue_size: int = 10_000
) -> logging.handlers.QueueListener:
    """Configure the root logger for the daemon: records go through a bounded queue
    to a thread that formats and writes them to stderr. Returns that thread's
    listener, started; ``stop()`` it at exit to write what is queued."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [%(call_id)s] %(message)s"
        )
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    records: queue.Queue[logging.LogRecord] = queue.Queue(queue_size)
    front = LogQueueHandler(records)
    front.addFilter(_CallIdFilter())  # the call id is a context variable of the caller
    root = logging.getLogger()
    root.handlers[:] = [front]
    root.setLevel(level.upper())
    listener = logging.handlers.QueueListener(records, handler)
    listener.start()
    return listener
