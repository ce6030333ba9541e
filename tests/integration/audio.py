"""Audio helpers shared by the media and IVR integration tests: read WAVs, align and
correlate signals (numpy), decode the G.711 audio of SIPp's RTP captures."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile

from media.codecs import alaw_decode
from media.prompts import PromptCache
from media.rtp import RtpPacket

CAPTURES = Path("/usr/share/sip-tester")
RATE = 8000
MIN_CORRELATION = 0.9


def read_wav(path: Path | str) -> npt.NDArray[np.float64]:
    """A mono WAV as float64 (asserting the 8 kHz rate both sides use)."""
    data, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    assert rate == RATE, f"{path}: {rate} Hz, expected {RATE}"
    return np.asarray(data[:, 0], dtype=np.float64)


def align(signal: npt.NDArray[np.float64], reference: npt.NDArray[np.float64]) -> int:
    """The offset in ``signal`` where ``reference`` fits best (FFT cross-correlation).

    Negative when ``signal`` starts after the beginning of ``reference``."""
    n = len(signal) + len(reference) - 1
    size = 1 << (n - 1).bit_length()
    xc = np.fft.irfft(np.fft.rfft(signal, size) * np.conj(np.fft.rfft(reference, size)), size)
    # xc[k] = sum signal[i + k] * reference[i]; negative lags wrap to the end.
    lags = np.concatenate([np.arange(0, len(signal)), np.arange(-(len(reference) - 1), 0)])
    values = np.concatenate([xc[: len(signal)], xc[size - (len(reference) - 1) :]])
    return int(lags[int(np.argmax(values))])


def correlation(
    signal: npt.NDArray[np.float64], reference: npt.NDArray[np.float64]
) -> tuple[float, int]:
    """Normalised cross-correlation of ``reference`` with ``signal`` at the best alignment.

    Samples of ``reference`` the signal does not cover count as zeros (so a truncated
    recording scores lower). Returns ``(ncc, offset)``."""
    offset = align(signal, reference)
    window = np.zeros(len(reference))
    lo, hi = max(offset, 0), min(offset + len(reference), len(signal))
    if hi > lo:
        window[lo - offset : hi - offset] = signal[lo:hi]
    denom = float(np.sqrt(np.dot(window, window) * np.dot(reference, reference)))
    return (float(np.dot(window, reference)) / denom if denom else 0.0), offset


def prompt_pcm(name: str) -> npt.NDArray[np.float64]:
    """A bundled prompt as the engine plays it (8 kHz), in [-1, 1]."""
    return PromptCache(None).pcm(name, RATE).astype(np.float64) / 32768.0


def pcap_rtp(path: Path) -> list[RtpPacket]:
    """The RTP packets of a classic pcap file (Ethernet or Linux cooked, IPv4/UDP)."""
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data, 0)[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    link_len = {1: 14, 113: 16, 101: 0}[linktype]
    packets: list[RtpPacket] = []
    pos = 24
    while pos + 16 <= len(data):
        incl = struct.unpack_from(endian + "I", data, pos + 8)[0]
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        ip = frame[link_len:]
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        udp = ip[(ip[0] & 0x0F) * 4 :]
        packets.append(RtpPacket.parse(udp[8:]))
    return packets


def capture_audio(path: Path) -> npt.NDArray[np.float64]:
    """The decoded A-law audio of a capture, laid out by RTP timestamp, in [-1, 1]."""
    packets = [p for p in pcap_rtp(path) if p.payload_type == 8]
    base = packets[0].timestamp
    end = max((p.timestamp - base) + len(p.payload) for p in packets)
    out = np.zeros(end)
    for p in packets:
        at = p.timestamp - base
        out[at : at + len(p.payload)] = alaw_decode(p.payload) / 32768.0
    return out


def active_span(signal: npt.NDArray[np.float64], threshold_dbfs: float = -40.0) -> int:
    """Samples from the first to the last 20 ms window louder than ``threshold_dbfs``."""
    n = RATE // 50
    frames = signal[: len(signal) // n * n].reshape(-1, n)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = np.flatnonzero(rms > 10 ** (threshold_dbfs / 20))
    return 0 if len(loud) == 0 else int((loud[-1] - loud[0] + 1) * n)


def slip_tolerant_correlation(
    signal: npt.NDArray[np.float64],
    reference: npt.NDArray[np.float64],
    *,
    window: float = 0.25,
    max_slip: float = 0.2,
) -> tuple[float, int, int]:
    """Normalised correlation of ``reference`` with ``signal`` where each ``window``
    seconds of the reference may sit up to ``max_slip`` seconds off the overall
    alignment. Returns ``(ncc, offset, worst_slip)`` in samples.

    Why: an audio path through two jitter buffers on a loaded machine inserts or drops
    a 20 ms frame now and then (measured here: the engine's RTP to baresip had no
    sequence or timestamp gap, arrival gaps up to 62 ms, and baresip's recording held
    40 ms more audio from the second second on). One slip shifts everything after it,
    and a plain correlation of 6 s of speech then drops to 0.6-0.8 although every
    frame arrived intact. Here a slip costs at most the window it falls in, so the
    figure still says "this is that audio" (>= 0.9) and not "some other audio".
    Quarter-second windows: linphone once heard the voicemail greeting's first part
    27 ms late, every frame intact and the rest exact; the half-second window holding
    the slip scored 0.616 and the whole 0.8986 (a failed test), 0.9987 in quarters."""
    _, base = correlation(signal, reference)
    size, drift = int(window * RATE), int(max_slip * RATE)
    dot_sum = energy = 0.0
    worst = 0
    for start in range(0, len(reference), size):
        piece = reference[start : start + size]
        at = base + start
        lo, hi = at - drift, at + len(piece) + drift
        segment = np.zeros(hi - lo)
        s_lo, s_hi = max(lo, 0), min(hi, len(signal))
        if s_hi > s_lo:
            segment[s_lo - lo : s_hi - lo] = signal[s_lo:s_hi]
        dots = np.correlate(segment, piece, mode="valid")  # one per lag -drift..+drift
        squares = np.concatenate([[0.0], np.cumsum(segment**2)])
        energies = squares[len(piece) :] - squares[: len(segment) - len(piece) + 1]
        scores = dots / np.sqrt(np.maximum(energies, 1e-12))
        lag = int(np.argmax(scores))
        dot_sum += float(dots[lag])
        energy += float(energies[lag])
        if float(np.dot(piece, piece)) > 1e-6:
            worst = max(worst, abs(lag - drift))
    denom = float(np.sqrt(energy * np.dot(reference, reference)))
    return (dot_sum / denom if denom else 0.0), base, worst


def windowed_correlation(
    signal: npt.NDArray[np.float64],
    reference: npt.NDArray[np.float64],
    *,
    window: float = 1.0,
    slack: float = 0.1,
    threshold_dbfs: float = -40.0,
) -> tuple[float, list[float]]:
    """The median normalised cross-correlation of ``reference``'s ``window``-second
    pieces (the silent ones skipped), each aligned on its own within ``slack`` seconds
    of where the whole reference fits best; and the list of them.

    For paths with an adaptive jitter buffer (a browser's NetEq stretches or shortens
    audio when packets arrive unevenly, and a relay fills an underrun with 20 ms of
    silence): one such shift, inaudible, puts everything after it out of phase for a
    single whole-signal correlation, while each piece still matches."""
    base = align(signal, reference)
    size, reach = int(window * RATE), int(slack * RATE)
    scores: list[float] = []
    for start in range(0, len(reference) - size + 1, size):
        piece = reference[start : start + size]
        if np.sqrt(np.mean(piece**2)) < 10 ** (threshold_dbfs / 20):
            continue
        lo = max(0, base + start - reach)
        hi = min(len(signal), base + start + size + reach)
        if hi - lo < size:
            scores.append(0.0)
            continue
        ncc, _ = correlation(signal[lo:hi], piece)
        scores.append(ncc)
    return (float(np.median(scores)) if scores else 0.0), scores


def envelope_correlation(
    signal: npt.NDArray[np.float64], reference: npt.NDArray[np.float64], *, frame: float = 0.02
) -> tuple[float, int]:
    """Correlation (Pearson) of the loudness envelopes (RMS per ``frame`` seconds) of
    ``reference`` and ``signal`` at their best alignment; ``(r, offset in samples)``.

    For paths through a perceptual codec and a browser's adaptive jitter buffer (Opus
    and NetEq): they keep the speech's timing and loudness but not its waveform, and
    NetEq's time stretches under load move it by a few ms here and there. Measured on
    4 s of speech that went browser -> Opus -> G.711: 0.90-0.93 for the speech sent,
    0.15-0.37 for other speech."""
    n = int(frame * RATE)

    def envelope(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        frames = x[: len(x) // n * n].reshape(-1, n)
        return np.asarray(np.sqrt(np.mean(frames**2, axis=1)), dtype=np.float64)

    es, er = envelope(signal), envelope(reference)
    if len(es) < len(er) or len(er) < 2:
        return 0.0, 0
    windows = np.lib.stride_tricks.sliding_window_view(es, len(er))
    ws = windows - windows.mean(axis=1, keepdims=True)
    rs = er - er.mean()
    denom = np.sqrt((ws**2).sum(axis=1) * float(np.dot(rs, rs)))
    scores = np.where(denom > 0, ws @ rs / np.where(denom > 0, denom, 1.0), 0.0)
    best = int(np.argmax(scores))
    return float(scores[best]), best * n
