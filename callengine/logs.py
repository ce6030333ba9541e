"""Log lines, plain or JSON, each carrying the id of the call it is about.

The daemon writes them from a thread of their own: the event loop only puts a record
on a bounded queue (a write to stderr blocks when journald or a pipe is slow, or
the disk flushes, and every call's audio would wait for it). When the queue is full
the record is dropped and counted (``callengine_log_records_dropped_total``).
"""

from __future__ import annotations

import copy
import json
import logging
import logging.handlers
import queue
import sys
import time

from .engine import current_call_id

__all__ = ["LogQueueHandler", "setup_logging"]


class _CallIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "call_id"):
            record.call_id = current_call_id.get()
        return True


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
        record = copy.copy(record)
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
            record.exc_info = None
        return record

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
