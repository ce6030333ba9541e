"""Prometheus metrics for a node, read at scrape time from plain counters.

The hot path only increments ints in dicts (``UserAgent.counters``, ``Engine.results``);
this collector turns them into metric families when Prometheus scrapes, so no metric
library call sits on the per-message path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from media.spool import SpoolCore
    from media.tenantprompts import PromptSync

    from .engine import Engine
    from .limits import SourceLimiter
    from .realtime import GcStats, LoopLagMonitor
    from .transport import TransportSet

__all__ = [
    "EngineCollector",
    "flood_metrics",
    "loop_metrics",
    "prompt_metrics",
    "serve_metrics",
    "stream_metrics",
]


class EngineCollector(Collector):
    """Exports the engine's counters (and whatever extra collectors add)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.started = time.time()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        engine = self.engine
        ua = engine.ua if engine.started else None
        yield GaugeMetricFamily(
            "callengine_active_calls", "Calls in progress", value=len(engine.calls)
        )
        c = CounterMetricFamily("callengine_calls", "Ended calls by result", labels=["result"])
        for result, n in sorted(engine.results.items()):
            c.add_metric([result], n)
        yield c
        if ua is not None:
            counters = ua.counters
            m = CounterMetricFamily(
                "callengine_sip_requests_in", "SIP requests received", labels=["method"]
            )
            for k, n in sorted(counters.requests_in.items()):
                m.add_metric([k], n)
            yield m
            m = CounterMetricFamily(
                "callengine_sip_requests_out", "SIP requests sent", labels=["method"]
            )
            for k, n in sorted(counters.requests_out.items()):
                m.add_metric([k], n)
            yield m
            m = CounterMetricFamily(
                "callengine_sip_responses_in", "SIP responses received", labels=["status"]
            )
            for s, n in sorted(counters.responses_in.items()):
                m.add_metric([str(s)], n)
            yield m
            m = CounterMetricFamily(
                "callengine_sip_responses_out", "SIP responses sent", labels=["status"]
            )
            for s, n in sorted(counters.responses_out.items()):
                m.add_metric([str(s)], n)
            yield m
            yield CounterMetricFamily(
                "callengine_sip_parse_errors",
                "Malformed SIP messages (answered or dropped)",
                value=counters.parse_errors,
            )
            d = CounterMetricFamily("callengine_sip_dropped", "Messages dropped", labels=["kind"])
            d.add_metric(["response"], counters.dropped_responses)
            d.add_metric(["ack"], counters.dropped_acks)
            d.add_metric(["oversized"], counters.oversized)
            d.add_metric(["internal_error"], counters.internal_errors)
            yield d
            yield CounterMetricFamily(
                "callengine_overload_rejected",
                "INVITEs refused with 503 (limits, draining)",
                value=counters.rejected_overload,
            )
            yield CounterMetricFamily(
                "callengine_sip_transaction_timeouts",
                "Transactions that timed out (Timer B/F/H)",
                value=ua.transactions.timeouts,
            )
            r = CounterMetricFamily(
                "callengine_sip_retransmissions", "Retransmissions", labels=["direction"]
            )
            r.add_metric(["in"], ua.transactions.retransmissions_in)
            r.add_metric(["out"], ua.transactions.retransmissions_out)
            yield r
        yield GaugeMetricFamily(
            "callengine_sip_receive_queue_bytes",
            "Bytes waiting in the fullest UDP receive buffer (at the last lag sample)",
            value=engine.receive_backlog,
        )
        yield CounterMetricFamily(
            "callengine_overload_dropped",
            "New INVITEs dropped unread while the event loop was far behind",
            value=engine.overload_dropped,
        )
        yield CounterMetricFamily(
            "callengine_media_unavailable",
            "Calls refused with 503: no RTP port could be bound",
            value=engine.media_refusals,
        )
        refused = CounterMetricFamily(
            "callengine_calls_refused",
            "New calls refused by a per-source or per-tenant cap (and, in a worker, the node cap)",
            labels=["reason"],
        )
        for reason, n in sorted(engine.caps.refused.items()):
            refused.add_metric([reason.replace(":", "_")], n)
        yield refused
        if engine.limiter is not None:
            yield from flood_metrics(engine.limiter)
        if engine.transports is not None:
            f = CounterMetricFamily(
                "callengine_transport_errors", "Transport errors", labels=["kind"]
            )
            f.add_metric(["send"], engine.transports.send_errors)
            f.add_metric(["framing"], engine.transports.framing_errors)
            f.add_metric(["ws_upgrade"], engine.transports.refused_upgrades)
            yield f
            yield from stream_metrics(engine.transports)
        from .logs import LogQueueHandler

        yield CounterMetricFamily(
            "callengine_log_records_dropped",
            "Log records dropped: the log writer lagged",
            value=LogQueueHandler.dropped,
        )
        yield from loop_metrics(engine.lag, engine.gc.stats)
        mm = engine.media_manager
        if mm is not None:
            if getattr(mm, "remote", False):
                mm.refresh_stats()  # the media plane's figures as of this scrape
            clock = mm.clock
            yield _histogram(
                "callengine_media_tick_lateness_ms",
                "Lateness of the 20 ms media clock ticks",
                clock.lateness_buckets_ms,
                clock.lateness_counts,
                clock.lateness_sum,
            )
            yield _histogram(
                "callengine_media_tick_duration_ms",
                "How long each media clock callback (one slot's streams) held the event loop",
                clock.duration_buckets_ms,
                clock.duration_counts,
                clock.duration_sum,
            )
            yield GaugeMetricFamily(
                "callengine_media_tick_duration_max_ms",
                "Longest media clock callback since the node started",
                value=clock.duration_max,
            )
            yield CounterMetricFamily(
                "callengine_media_tick_errors",
                "Media tick failures (per session)",
                value=clock.errors,
            )
            yield CounterMetricFamily(
                "callengine_media_clock_resyncs",
                "Times the media clock skipped ahead after a stall",
                value=clock.resyncs,
            )
            yield GaugeMetricFamily(
                "callengine_media_streams", "Active RTP streams", value=len(clock)
            )
            drops = clock.drops()
            relatches = drops.pop("relatches")
            rejected = CounterMetricFamily(
                "callengine_rtp_dropped_packets",
                "RTP/RTCP packets dropped, by reason (wrong_source and wrong_ssrc: from an "
                "address that is not the call's latched source, e.g. a hijack attempt; "
                "srtp_failed: SRTP authentication or replay check failed)",
                labels=["reason"],
            )
            for reason, n in drops.items():
                rejected.add_metric([reason], n)
            yield rejected
            yield CounterMetricFamily(
                "callengine_rtp_relatches",
                "Times a call's media moved to a new source address",
                value=relatches,
            )
            yield GaugeMetricFamily(
                "callengine_media_streams_srtp",
                "Active RTP streams protected by SRTP",
                value=clock.secure_sessions(),
            )
            yield CounterMetricFamily(
                "callengine_media_srtp_sessions",
                "RTP sessions keyed for SRTP (SDES)",
                value=clock.srtp_sessions,
            )
            slots = GaugeMetricFamily(
                "callengine_media_clock_slot_streams",
                "Active RTP streams per phase of the 20 ms media clock (each clock "
                "callback sends one slot's packets)",
                labels=["slot"],
            )
            for slot, n in enumerate(clock.slot_loads()):
                slots.add_metric([str(slot)], n)
            yield slots
            yield from _port_pool_metrics(mm.pool_stats())
            if getattr(mm, "remote", False):
                yield GaugeMetricFamily(
                    "callengine_media_plane_loop_lag_max_ms",
                    "The media plane's event loop: the longest it woke late since it started",
                    value=clock.loop_lag_max_ms,
                )
                yield GaugeMetricFamily(
                    "callengine_media_plane_gc_pause_max_ms",
                    "The media plane's longest garbage-collector pause since it started",
                    value=clock.gc_pause_max_ms,
                )
                yield CounterMetricFamily(
                    "callengine_media_plane_restarts",
                    "Times the media plane died and was started again",
                    value=mm.restarts,
                )
                yield GaugeMetricFamily(
                    "callengine_media_plane_realtime",
                    "1 when the media plane runs under SCHED_FIFO (media_priority)",
                    value=1.0 if clock.realtime else 0.0,
                )
                yield CounterMetricFamily(
                    "callengine_media_plane_hung",
                    "Times the media plane stopped answering and was killed (then restarted)",
                    value=mm.hung,
                )
            if mm.spool is not None:
                yield from _spool_metrics(mm.spool.core)
            if getattr(mm, "prompt_sync", None) is not None:
                yield from prompt_metrics(mm.prompt_sync)


def loop_metrics(
    lag: LoopLagMonitor, stats: GcStats
) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
    """A process's real-time figures: its event loop's lag and its garbage collections
    (callengine/realtime.py). A multi-worker front exports its own with
    ``worker="front"`` beside the workers'."""
    g = GaugeMetricFamily(
        "callengine_event_loop_lag_seconds",
        "Event-loop lag: how late a 10 ms sleep woke (last, max)",
        labels=["stat"],
    )
    g.add_metric(["last"], lag.last)
    g.add_metric(["max"], lag.max)
    yield g
    yield _histogram(
        "callengine_event_loop_lag_ms",
        "How late the event loop woke from each 10 ms sleep",
        lag.buckets_ms,
        lag.counts,
        lag.sum_ms,
    )
    gens = ("0", "1", "2")
    c = CounterMetricFamily("callengine_gc_collections", "Cyclic GC runs", labels=["generation"])
    p = CounterMetricFamily(
        "callengine_gc_pause_seconds",
        "Time the process stood still in the GC",
        labels=["generation"],
    )
    longest = GaugeMetricFamily(
        "callengine_gc_pause_max_seconds", "Longest GC pause", labels=["generation"]
    )
    o = CounterMetricFamily(
        "callengine_gc_collected_objects",
        "Objects the GC freed (garbage in reference cycles: 0 on a healthy node)",
        labels=["generation"],
    )
    for i, gen in enumerate(gens):
        c.add_metric([gen], stats.collections[i])
        p.add_metric([gen], stats.pause_seconds[i])
        longest.add_metric([gen], stats.pause_max[i])
        o.add_metric([gen], stats.collected[i])
    yield c
    yield p
    yield longest
    yield o


def flood_metrics(limiter: SourceLimiter) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """The per-source flood limit's series (a multi-worker node's front exports them)."""
    yield CounterMetricFamily(
        "callengine_flood_dropped",
        "Messages dropped unread by the per-source limit",
        value=limiter.dropped,
    )
    yield CounterMetricFamily(
        "callengine_flood_bans", "Source addresses banned for flooding", value=limiter.bans
    )
    yield GaugeMetricFamily(
        "callengine_flood_tracked_sources",
        "Source addresses the limiter tracks",
        value=len(limiter),
    )


def stream_metrics(transports: TransportSet) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """The TCP/TLS/WS connections' series (a multi-worker node's front holds them)."""
    yield GaugeMetricFamily(
        "callengine_stream_connections",
        "TCP/TLS connections peers opened, now open",
        value=transports.accepted,
    )
    closed = CounterMetricFamily(
        "callengine_stream_connections_closed",
        "TCP/TLS connections refused (caps) or closed for silence",
        labels=["reason"],
    )
    closed.add_metric(["refused"], transports.refused_connections)
    closed.add_metric(["idle"], transports.idle_closed)
    yield closed


def prompt_metrics(
    sync: PromptSync, *, plays: bool = True
) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """Tenant prompts cached from Media Storage (docs/storage.md, "Tenant prompts"): the
    cache and its fetches from the process that fetches (a multi-worker node's front),
    the fallbacks from the processes that play (``plays``)."""
    if getattr(sync, "fetching", True):
        yield GaugeMetricFamily(
            "callengine_prompt_cache_bytes",
            "Bytes of tenant prompts cached",
            value=sync.core.bytes,
        )
        yield GaugeMetricFamily(
            "callengine_prompt_cache_files", "Tenant prompts cached", value=len(sync.core.index)
        )
        fetches = CounterMetricFamily(
            "callengine_prompt_fetches",
            "Tenant prompt fetches from Media Storage (missing: not in storage)",
            labels=["result"],
        )
        fetches.add_metric(["ok"], sync.fetches_ok)
        fetches.add_metric(["failed"], sync.fetches_failed)
        fetches.add_metric(["missing"], sync.fetches_missing)
        yield fetches
    if plays:
        yield CounterMetricFamily(
            "callengine_prompt_fallbacks",
            "Configured tenant prompts not cached when a call asked (bundled played)",
            value=sync.cache.fallbacks,
        )


def _port_pool_metrics(stats: dict[str, int]) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """The pre-bound RTP port pairs (media/portpool.py), summed over media addresses."""
    pairs = GaugeMetricFamily(
        "callengine_rtp_port_pool_pairs",
        "Pre-bound RTP port pairs in the pool: ready to take, or resting after a call",
        labels=["state"],
    )
    pairs.add_metric(["ready"], stats["ready"])
    pairs.add_metric(["resting"], stats["resting"])
    yield pairs
    for name, doc, key in (
        ("callengine_rtp_port_pool_hits", "Calls that took a ready pair", "hits"),
        (
            "callengine_rtp_port_pool_misses",
            "Calls that found the pool empty and bound a pair on the answer path",
            "misses",
        ),
        ("callengine_rtp_port_pool_bound", "Pairs the pool bound ahead of calls", "bound"),
        (
            "callengine_rtp_port_pool_bind_failures",
            "Pool refills that found no free pair in the port range",
            "failures",
        ),
        (
            "callengine_rtp_port_pool_early_reuses",
            "Resting pairs given to a call before their quarantine ended (no free port "
            "or descriptor left to bind a fresh one)",
            "early",
        ),
        (
            "callengine_rtp_port_pool_stale_dropped",
            "Datagrams drained from a reused pair before its new call got it",
            "stale_dropped",
        ),
    ):
        yield CounterMetricFamily(name, doc, value=stats[key])


def _spool_metrics(core: SpoolCore) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """The media spool (docs/storage.md): what waits for upload, and how uploads go."""
    for name, doc, value in (
        ("callengine_media_spool_files", "Recordings waiting in the spool", core.files),
        ("callengine_media_spool_bytes", "Bytes waiting in the spool", core.bytes),
        ("callengine_media_spool_quota_bytes", "The spool's quota", core.quota),
        (
            "callengine_media_spool_oldest_seconds",
            "Age of the oldest spooled recording",
            core.oldest_age(time.time()),
        ),
        ("callengine_media_uploads_active", "Uploads in flight", core.in_flight),
        (
            "callengine_media_spool_near_quota",
            "1 while the spool holds spool_near of its quota or more (new recordings are"
            " refused at the quota)",
            int(core.near_quota),
        ),
    ):
        yield GaugeMetricFamily(name, doc, value=value)
    yield CounterMetricFamily(
        "callengine_media_spool_refused",
        "Recordings (voicemail, call recordings) not made because the spool held its quota",
        value=core.refusals,
    )
    c = CounterMetricFamily(
        "callengine_media_uploads",
        "Uploads by outcome (present: the same blob was already stored; rejected: refused"
        " for good, file kept; vanished: spool file deleted by hand)",
        labels=["result"],
    )
    c.add_metric(["ok"], core.uploads_ok)
    c.add_metric(["present"], core.uploads_present)
    c.add_metric(["failed"], core.uploads_failed)
    c.add_metric(["rejected"], core.rejected)
    c.add_metric(["vanished"], core.vanished)
    yield c
    yield CounterMetricFamily(
        "callengine_media_uploaded_bytes",
        "Bytes of the files uploaded (uploads ok): the upload rate",
        value=core.uploaded_bytes,
    )


def _histogram(
    name: str, documentation: str, bounds: Sequence[float], counts: Sequence[int], total: float
) -> HistogramMetricFamily:
    """A histogram family from per-bucket counts (not cumulative; the last is +Inf)."""
    buckets = []
    acc = 0
    for bound, count in zip(bounds, counts, strict=False):
        acc += count
        buckets.append((f"{bound:g}", acc))
    acc += counts[-1]
    buckets.append(("+Inf", acc))
    h = HistogramMetricFamily(name, documentation)
    h.add_metric([], buckets, total)
    return h


def serve_metrics(
    engine: Engine,
    host: str,
    port: int,
    *,
    registry: CollectorRegistry | None = None,
) -> CollectorRegistry:
    """Start the /metrics HTTP endpoint (prometheus-client's own server thread)."""
    registry = registry if registry is not None else CollectorRegistry()
    registry.register(EngineCollector(engine))
    start_http_server(port, addr=host, registry=registry)
    return registry
