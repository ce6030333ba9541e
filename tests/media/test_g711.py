from __future__ import annotations

import warnings

import numpy as np
import pytest

from media.codecs import (
    ALAW_TO_ULAW,
    PCMA,
    PCMU,
    ULAW_TO_ALAW,
    alaw_decode,
    alaw_encode,
    alaw_to_ulaw,
    create_codec,
    ulaw_decode,
    ulaw_encode,
    ulaw_to_alaw,
)

ALL = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)


def test_ulaw_reference_values() -> None:
    # G.711 table 2a: code words and their decoded values (16-bit scale).
    assert ulaw_decode(b"\xff\x7f\x80\x00\xfe\x7e").tolist() == [0, 0, 32124, -32124, 8, -8]
    assert ulaw_encode(np.array([0, -1, 32767, -32768, 1000], dtype=np.int16)) == bytes(
        [0xFF, 0x7E, 0x80, 0x00, 0xCE]
    )


def test_alaw_reference_values() -> None:
    # G.711 table 1a: 0xD5/0x55 are the smallest magnitudes (even bits inverted).
    assert alaw_decode(b"\xd5\x55\xaa\x2a").tolist() == [8, -8, 32256, -32256]
    assert alaw_encode(np.array([0, -1, 32767, -32768, 1000], dtype=np.int16)) == bytes(
        [0xD5, 0x55, 0xAA, 0x2A, 0xFA]
    )


def test_tables_match_reference_implementation() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    raw = ALL.tobytes()
    assert ulaw_encode(ALL) == audioop.lin2ulaw(raw, 2)
    assert alaw_encode(ALL) == audioop.lin2alaw(raw, 2)
    codes = bytes(range(256))
    assert ulaw_decode(codes).tobytes() == audioop.ulaw2lin(codes, 2)
    assert alaw_decode(codes).tobytes() == audioop.alaw2lin(codes, 2)


def test_round_trip_code_words_are_fixed_points() -> None:
    codes = bytes(range(256))
    assert ulaw_encode(ulaw_decode(codes)) == bytes(c if c != 0x7F else 0xFF for c in codes)
    assert alaw_encode(alaw_decode(codes)) == codes


def test_quantisation_error_is_bounded() -> None:
    decoded = ulaw_decode(ulaw_encode(ALL)).astype(np.int32)
    err = np.abs(decoded - ALL.astype(np.int32))
    # Largest mu-law step is 1024 at 16-bit scale -> error about half of it (plus the 14-bit truncation).
    assert err[np.abs(ALL.astype(np.int32)) < 32000].max() <= 520
    decoded_a = alaw_decode(alaw_encode(ALL)).astype(np.int32)
    assert (
        np.abs(decoded_a - ALL.astype(np.int32))[np.abs(ALL.astype(np.int32)) < 32000].max() <= 520
    )


def test_transcoding_tables() -> None:
    codes = bytes(range(256))
    assert ulaw_to_alaw(codes) == alaw_encode(ulaw_decode(codes))
    assert alaw_to_ulaw(codes) == ulaw_encode(alaw_decode(codes))
    assert ULAW_TO_ALAW[0xFF] == 0xD5 and ALAW_TO_ULAW[0xD5] == 0xFE  # +8
    # mu-law -> A-law -> mu-law stays within one quantisation step of the original.
    back = ulaw_decode(alaw_to_ulaw(ulaw_to_alaw(codes))).astype(np.int32)
    orig = ulaw_decode(codes).astype(np.int32)
    assert np.all(np.abs(back - orig) <= np.maximum(16, np.abs(orig) // 16))


def test_codec_objects_encode_20ms_frames() -> None:
    pcmu = create_codec(PCMU)
    pcma = create_codec("pcma")
    assert pcmu.info.samples_per_frame == 160 and pcmu.info.timestamp_step == 160
    frames = pcmu.encode_frames(np.zeros(400, dtype=np.int16))
    assert [len(f) for f in frames] == [160, 160, 160]
    assert frames[2] == b"\xff" * 160
    assert pcma.silence() == b"\xd5" * 160
    assert pcma.info == PCMA
