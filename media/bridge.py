"""Bridging two media sessions: what one receives, the other sends.

A bridge is two relays, one per direction. A relay hooks the source session's
``on_audio`` (every audio payload it receives) into a short queue, and has the
destination play that queue, one payload per media-clock tick (silence when the
queue is empty: the far phone keeps hearing a steady stream). The queue holds
``RELAY_DEPTH`` payloads; beyond that the oldest is dropped, so a burst from one side
never turns into lasting delay on the other.

Codecs: the same codec is relayed unchanged; PCMU <-> PCMA goes through a 256-byte
table (G.711 maps sample to sample); anything else (a browser's Opus, G.722) is
decoded, resampled and encoded per payload.

Both the in-process media manager and the media plane (a node's RTP in a process of
its own, ``callengine/mediaplane.py``) bridge with :func:`start_bridge`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from .codecs import CodecInfo

__all__ = ["RELAY_DEPTH", "BridgeSide", "relay", "start_bridge", "stop_bridge"]

RELAY_DEPTH = 4
"""Payloads queued per direction (80 ms) before the oldest is dropped."""


class BridgeSide(Protocol):
    """What a bridge needs of a media session (RTP or WebRTC)."""

    on_audio: Callable[[bytes], None] | None

    @property
    def codec(self) -> CodecInfo: ...

    @property
    def silence(self) -> bytes: ...

    async def play(self, payloads: Any, *, barge_in: bool = True) -> str | None: ...


_TABLES: dict[tuple[str, str], bytes] = {}


def _g711_table(src: str, dst: str) -> bytes | None:
    if (src, dst) not in (("PCMU", "PCMA"), ("PCMA", "PCMU")):
        return None
    table = _TABLES.get((src, dst))
    if table is None:
        from .codecs.g711 import ALAW_TO_ULAW, ULAW_TO_ALAW

        array = ULAW_TO_ALAW if src == "PCMU" else ALAW_TO_ULAW
        table = _TABLES[(src, dst)] = bytes(int(v) for v in array)
    return table


def transcoder(
    src: CodecInfo, dst: CodecInfo, out: Callable[[bytes], None]
) -> Callable[[bytes], None]:
    """An ``on_audio`` between codecs that no byte table maps (Opus, G.722): each
    20 ms payload is decoded, resampled to ``dst``'s rate and encoded."""
    import numpy as np

    from .codecs import create_codec

    decoder, encoder = create_codec(src), create_codec(dst)
    n_in, n_out = src.samples_per_frame, dst.samples_per_frame
    grid = np.linspace(0, n_in - 1, n_out)
    points = np.arange(n_in)

    def transcode(payload: bytes) -> None:
        pcm = decoder.decode(payload)
        if len(pcm) != n_in:
            return
        if n_in % n_out == 0 and n_in != n_out:  # 48 -> 8 kHz: mean of each 6 (low-pass)
            pcm = pcm.reshape(n_out, -1).mean(axis=1).astype(np.int16)
        elif n_in != n_out:
            pcm = np.interp(grid, points, pcm).astype(np.int16)
        out(encoder.encode(pcm))

    return transcode


async def relay(src: BridgeSide, dst: BridgeSide) -> None:
    """Send what ``src`` receives out of ``dst`` (transcoded when codecs differ) until
    cancelled."""
    queue: deque[bytes] = deque(maxlen=RELAY_DEPTH)
    s, d = src.codec.name.upper(), dst.codec.name.upper()
    if s == d:
        src.on_audio = queue.append
    else:
        table = _g711_table(s, d)
        if table is None:
            src.on_audio = transcoder(src.codec, dst.codec, queue.append)
        else:
            src.on_audio = lambda payload: queue.append(payload.translate(table))
    silence = dst.silence

    def payloads() -> Iterator[bytes]:
        while True:
            yield queue.popleft() if queue else silence

    try:
        await dst.play([payloads()], barge_in=False)
    finally:
        src.on_audio = None


def start_bridge(a: BridgeSide, b: BridgeSide) -> list[asyncio.Task[None]]:
    """Relay both ways between ``a`` and ``b``; :func:`stop_bridge` ends it."""
    loop = asyncio.get_running_loop()
    return [loop.create_task(relay(a, b)), loop.create_task(relay(b, a))]


def stop_bridge(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
