"""Call logs from calls: one record per call, fsynced to the outbox by group commit.

Theory of operation
-------------------
A synchronous LevelDB write costs one fsync (~0.2 ms measured here); two per call
would block the event loop for most of its time at a thousand calls per second. So a
:class:`CallLogWriter` thread owns the outbox writes: the event loop queues records and
gets a future; the thread takes everything queued, writes it as ONE fsynced WriteBatch
(:meth:`Outbox.commit`) and resolves the futures. Under load one fsync serves many calls.

The answer path awaits the "open" record before the 200 OK goes out, so an answered
call always has its record on disk (a ``kill -9`` after that leaves an open record that
the restarted node closes as interrupted). The final record replaces it when the call
ends; the call is forgotten only when that write is on disk.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any

from config_cache import CallLog, Outbox

if TYPE_CHECKING:
    from .call import Call

log = logging.getLogger("callengine.calllogs")

__all__ = ["CallLogHook", "CallLogWriter", "call_log_of"]

_STOP = object()


class CallLogWriter:
    """One thread that group-commits call-log records to the outbox."""

    def __init__(self, outbox: Outbox, *, on_written: Any = None) -> None:
        self.outbox = outbox
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="calllog-writer", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        self.records = 0
        self.on_written = on_written
        self.failures = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    def submit(self, state: str, rec: CallLog) -> asyncio.Future[None]:
        """Queue an ``open`` or ``final`` record; the future resolves once it is on disk."""
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._queue.put((state, rec, fut))
        return fut

    def _run(self) -> None:
        q = self._queue
        while True:
            item = q.get()
            if item is _STOP:
                return
            items = [item]
            stop = False
            while True:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                items.append(nxt)
            opens = [rec for state, rec, _ in items if state == "open"]
            finals = [rec for state, rec, _ in items if state == "final"]
            error: BaseException | None = None
            try:
                self.outbox.commit(opens, finals)
            except Exception as exc:  # an I/O failure must reach the waiting calls
                error = exc
                self.failures += 1
                log.error("call-log write failed: %s", exc)
            self.batches += 1
            self.records += len(items)
            assert self._loop is not None
            self._loop.call_soon_threadsafe(_resolve, [fut for _, _, fut in items], error)
            if finals and self.on_written is not None and error is None:
                self._loop.call_soon_threadsafe(self.on_written)
            if stop:
                return

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout=10)


def _resolve(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for fut in futures:
        if fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


def call_log_of(call: Call, *, node_id: str, final: bool) -> CallLog:
    """The call-log record of a call as it stands now."""
    digits = "".join(call.digits)
    result = call_result(call) if final else "answered"
    rec = CallLog(
        call_id=call.call_id,
        tenant=call.tenant,
        caller=call.caller,
        callee=call.callee,
        did=call.did,
        direction=call.direction,
        start_time=call.started_at,
        answer_time=call.answered_at if (call.answered or not final) else None,
        end_time=call.ended_at if final else None,
        result=result,
        sip_status=call.status or (200 if call.answered else None),
        q850_cause=call.cause if final else None,
        ivr_path=list(call.ivr_path),
        digits=digits,
        trunk_attempts=list(call.trunk_attempts),
        rtp_quality=dict(call.quality),
        node_id=node_id,
    )
    # (calls built by hand in tests and tools may have no engine)
    media = getattr(getattr(call, "engine", None), "media_manager", None)
    locations = []
    for key in call.recordings:
        if key.startswith("voicemail/"):
            rec.voicemail_key = key
        else:
            rec.recording_key = key
        if media is not None:
            locations.append(media.location(call.tenant or "default", key))
    if locations:
        # where each recording is: its blob URL (fixed before the upload) and, until
        # the upload is confirmed, the spool file (docs/storage.md, "Call logs")
        rec.extra["media"] = locations
    return rec


def call_result(call: Call) -> str:
    """``completed`` for answered calls; else why it was not answered."""
    if call.answered:
        return "completed"
    status = call.status
    if call.end_reason == "cancelled":
        return "no_answer"
    if status in (486, 600):
        return "busy"
    if status == 408 or call.end_reason == "timeout":
        return "no_answer"
    if status >= 400:
        return "rejected" if status < 500 else "failed"
    return call.end_reason or "failed"


class CallLogHook:
    """Engine hook: records at answer (awaited before the 200) and at the end."""

    def __init__(self, writer: CallLogWriter, *, node_id: str) -> None:
        self.writer = writer
        self.node_id = node_id
        self.pending: set[asyncio.Future[None]] = set()

    def on_call_started(self, call: Call) -> None:
        return None

    def before_answer(self, call: Call) -> asyncio.Future[None]:
        return self.writer.submit("open", call_log_of(call, node_id=self.node_id, final=False))

    def on_call_answered(self, call: Call) -> None:
        return None

    def on_call_ended(self, call: Call) -> None:
        fut = self.writer.submit("final", call_log_of(call, node_id=self.node_id, final=True))
        self.pending.add(fut)
        fut.add_done_callback(self.pending.discard)
