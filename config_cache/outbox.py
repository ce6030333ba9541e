"""The durable call-log outbox (LevelDB, synchronous writes).

Theory of operation: each answered call has exactly one key ``o/<call id>``.
:meth:`Outbox.open_call` writes a ``"open"`` record at answer time;
:meth:`Outbox.close_call` overwrites it with the ``"final"`` record (a single
key write is atomic). Both use ``sync=True``: when they return, the record
survives ``kill -9`` and power loss. At start-up :meth:`recover_interrupted`
turns records still ``"open"`` (the previous process died mid-call) into final
ones marked ``interrupted``. The shipper reads final records oldest first and,
once the History DB acknowledged them, :meth:`mark_shipped` deletes them and
appends them to the bounded ``s/`` ring in the same WriteBatch.

Unreadable records (damaged JSON) are never deleted: they are logged, listed
in :attr:`Outbox.unreadable` and left on disk for an operator.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
from collections.abc import Collection, Sequence
from typing import Any

from ._leveldb import LocalDB
from .calllog import CallLog
from .metrics import CacheMetrics

__all__ = ["Outbox"]

log = logging.getLogger("config_cache.outbox")

P_OUTBOX = b"o/"
P_SHIPPED = b"s/"


def _okey(call_id: str) -> bytes:
    return P_OUTBOX + call_id.encode("utf-8", "surrogatepass")


def _skey(seq: int) -> bytes:
    return P_SHIPPED + b"%016x" % seq


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _encode(state: str, rec: CallLog) -> bytes:
    return json.dumps({"state": state, "log": rec.to_dict()}, separators=(",", ":")).encode()


class Outbox:
    """Call logs not yet acknowledged by the History DB. Thread-safe."""

    def __init__(
        self, db: LocalDB, *, metrics: CacheMetrics | None = None, shipped_keep: int = 1000
    ) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._metrics = metrics or CacheMetrics.private()
        self._keep = max(0, shipped_keep)
        self._open: set[str] = set()
        #: call id -> end time (ordering key for shipping)
        self._final: dict[str, float] = {}
        #: Keys of outbox records that could not be decoded (kept on disk).
        self.unreadable: list[bytes] = []
        for key, value in db.items(P_OUTBOX):
            try:
                state, rec = self._decode(value)
            except ValueError as exc:
                log.error("unreadable outbox record %r kept on disk: %s", key, exc)
                self.unreadable.append(key)
                continue
            if state == "open":
                self._open.add(rec.call_id)
            else:
                self._final[rec.call_id] = rec.end_time or rec.start_time
        first = next(db.keys(P_SHIPPED), None)
        last = next(db.keys(P_SHIPPED, reverse=True), None)
        self._ship_first = int(first[2:], 16) if first else 0
        self._ship_next = int(last[2:], 16) + 1 if last else 0
        self._gauges()

    @staticmethod
    def _decode(value: bytes) -> tuple[str, CallLog]:
        try:
            data = json.loads(value)
            if not isinstance(data, dict) or not isinstance(data.get("log"), dict):
                raise ValueError("not an outbox record")
            state = data["state"]
            if state not in ("open", "final"):
                raise ValueError(f"bad state {state!r}")
            rec = CallLog.from_dict(data["log"])
        except (KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(str(exc)) from exc
        # The shipper orders by these times: a damaged record must not reach it.
        if not isinstance(rec.call_id, str) or not _is_time(rec.start_time):
            raise ValueError("call_id or start_time of the wrong type")
        if rec.end_time is not None and not _is_time(rec.end_time):
            raise ValueError("end_time of the wrong type")
        return state, rec

    def _gauges(self) -> None:
        self._metrics.outbox_depth.set(len(self._final))
        self._metrics.outbox_open.set(len(self._open))

    # -- the call path -------------------------------------------------------

    def open_call(self, rec: CallLog) -> None:
        """Write the "started" record of an answered call (fsynced)."""
        self._db.put(_okey(rec.call_id), _encode("open", rec), sync=True)
        with self._lock:
            self._open.add(rec.call_id)
            self._final.pop(rec.call_id, None)
            self._gauges()

    def close_call(self, rec: CallLog) -> None:
        """Write the final record, replacing the open one (fsynced, atomic).

        Fills ``end_time`` from ``start_time`` if the caller left it None.
        Closing twice overwrites; the History DB keeps one document per id.
        """
        if rec.end_time is None:
            rec.end_time = rec.answer_time or rec.start_time
        self._db.put(_okey(rec.call_id), _encode("final", rec), sync=True)
        with self._lock:
            self._open.discard(rec.call_id)
            self._final[rec.call_id] = rec.end_time
            self._gauges()

    def commit(self, opens: Sequence[CallLog], finals: Sequence[CallLog]) -> None:
        """Group commit: write many open and final records in one fsynced batch.

        The engine's call-log writer calls this from its own thread so that one
        fsync serves every call that answered or ended meanwhile."""
        puts: list[tuple[bytes, bytes]] = [(_okey(r.call_id), _encode("open", r)) for r in opens]
        for rec in finals:
            if rec.end_time is None:
                rec.end_time = rec.answer_time or rec.start_time
            puts.append((_okey(rec.call_id), _encode("final", rec)))
        if not puts:
            return
        self._db.write(puts=puts, sync=True)
        with self._lock:
            for rec in opens:
                # An open record replaces a final one with the same Call-ID
                # (an INVITE answered again after a restart): not shippable.
                self._open.add(rec.call_id)
                self._final.pop(rec.call_id, None)
            for rec in finals:
                self._open.discard(rec.call_id)
                self._final[rec.call_id] = rec.end_time or rec.start_time
            self._gauges()

    def recover_interrupted(self, now: float, *, only: Collection[str] | None = None) -> list[str]:
        """Finalise records left open by a previous process (call at start-up,
        before taking calls), or with ``only``, the open records of those call ids (a
        worker of the node died). They get ``result="interrupted"``,
        ``interrupted=True`` and ``end_time=now`` unless one was recorded.
        Returns their call ids."""
        puts: list[tuple[bytes, bytes]] = []
        recovered: list[CallLog] = []
        if only is None:
            items = list(self._db.items(P_OUTBOX))
        else:
            items = []
            for call_id in only:
                raw = self._db.get(_okey(call_id))
                if raw is not None:
                    items.append((_okey(call_id), raw))
        for key, value in items:
            try:
                state, rec = self._decode(value)
            except ValueError:
                continue
            if state != "open":
                continue
            rec.interrupted = True
            rec.result = "interrupted"
            if rec.end_time is None:
                rec.end_time = now
            puts.append((key, _encode("final", rec)))
            recovered.append(rec)
        if puts:
            self._db.write(puts, sync=True)
            log.warning("%d call log(s) left open by a previous run marked interrupted", len(puts))
        with self._lock:
            for rec in recovered:
                self._open.discard(rec.call_id)
                self._final[rec.call_id] = rec.end_time or now
            self._gauges()
        return [rec.call_id for rec in recovered]

    # -- the shipper ---------------------------------------------------------

    def depth(self) -> int:
        """Final records waiting to be shipped."""
        return len(self._final)

    def oldest_end_time(self) -> float | None:
        """End time of the oldest record waiting, or None."""
        with self._lock:
            return min(self._final.values(), default=None)

    def pending(self, limit: int) -> list[CallLog]:
        """Up to ``limit`` final records, oldest first."""
        with self._lock:
            ids = heapq.nsmallest(limit, self._final.items(), key=lambda kv: kv[1])
        out: list[CallLog] = []
        for call_id, _end in ids:
            value = self._db.get(_okey(call_id))
            if value is None:
                continue
            try:
                state, rec = self._decode(value)
            except ValueError as exc:
                log.error("outbox record %r became unreadable: %s", call_id, exc)
                continue
            if state == "final":
                out.append(rec)
        return out

    def mark_shipped(self, records: Sequence[CallLog], *, shipped_at: float) -> None:
        """Delete acknowledged records and append them to the recently shipped
        ring, in one fsynced WriteBatch; trims the ring to ``shipped_keep``."""
        if not records:
            return
        with self._lock:
            puts: list[tuple[bytes, bytes]] = []
            deletes: list[bytes] = []
            for rec in records:
                deletes.append(_okey(rec.call_id))
                if self._keep:
                    doc = {"shipped_at": shipped_at, "log": rec.to_dict()}
                    puts.append((_skey(self._ship_next), json.dumps(doc).encode()))
                    self._ship_next += 1
            first = max(self._ship_first, self._ship_next - self._keep)
            deletes += [_skey(s) for s in range(self._ship_first, first)]
            self._db.write(puts, deletes, sync=True)
            self._ship_first = first
            for rec in records:
                self._final.pop(rec.call_id, None)
            self._gauges()

    # -- inspection ----------------------------------------------------------

    def open_calls(self) -> list[CallLog]:
        """Records of calls in progress (or interrupted, before recovery)."""
        return [rec for state, rec in self._entries() if state == "open"]

    def entries(self) -> list[tuple[str, CallLog]]:
        """Every readable outbox record as ``(state, log)``, in key order."""
        return list(self._entries())

    def _entries(self) -> list[tuple[str, CallLog]]:
        out = []
        for _key, value in self._db.items(P_OUTBOX):
            try:
                out.append(self._decode(value))
            except ValueError:
                continue
        return out

    def recently_shipped(self, limit: int | None = None) -> list[tuple[float, CallLog]]:
        """``(shipped_at, log)`` of the ring, oldest first (the last ``limit``)."""
        rows: list[tuple[float, CallLog]] = []
        for _key, value in self._db.items(P_SHIPPED, reverse=True):
            if limit is not None and len(rows) >= limit:
                break
            try:
                data: dict[str, Any] = json.loads(value)
                rows.append((float(data["shipped_at"]), CallLog.from_dict(data["log"])))
            except (KeyError, TypeError, ValueError):
                continue
        rows.reverse()
        return rows

    def recent_json(self, limit: int) -> list[bytes]:
        """The newest ``limit`` call logs, oldest first, each as the JSON object
        ``{"state": ..., "log": {...}}`` (``shipped_at`` too for ``shipped``): shipped
        ones from the ring, then final records waiting in the outbox, then open ones
        (calls in progress). The stored JSON is spliced, never decoded (a call log with
        its IVR path is kilobytes: decoding a page of them would take a running node's
        CPU), and at most about ``3 * limit`` records are read whatever the outbox holds."""
        if limit <= 0:
            return []
        shipped: list[bytes] = []
        for _key, value in self._db.items(P_SHIPPED, reverse=True):
            if len(shipped) >= limit:
                break
            if value[:1] == b"{" and value[-1:] == b"}":
                shipped.append(b'{"state":"shipped",' + value[1:])
        shipped.reverse()
        with self._lock:
            final_ids = heapq.nlargest(limit, self._final.items(), key=lambda kv: kv[1])
            open_ids = list(self._open)[:limit]
        waiting: list[bytes] = []
        for call_id in [cid for cid, _end in reversed(final_ids)] + open_ids:
            stored = self._db.get(_okey(call_id))
            if stored is not None and stored[:1] == b"{" and stored[-1:] == b"}":
                waiting.append(stored)  # stored as {"state": "open"|"final", "log": {...}}
        return (shipped + waiting)[-limit:]

    def find(self, call_id: str) -> tuple[str, float | None, CallLog] | None:
        """One call's log: its outbox record, else the newest entry of the shipped ring
        with that call id; None when neither holds it."""
        value = self._db.get(_okey(call_id))
        if value is not None:
            try:
                state, rec = self._decode(value)
            except ValueError:
                return None
            return state, None, rec
        for at, rec in reversed(self.recently_shipped()):
            if rec.call_id == call_id:
                return "shipped", at, rec
        return None
