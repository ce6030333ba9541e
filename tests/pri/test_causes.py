"""RFC 3398 cause table (both directions) and the RFC 3326 Reason header."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pri.causes import (
    CAUSE_TABLE,
    Direction,
    Reason,
    cause_for_status,
    format_reason,
    parse_reason,
    parse_reasons,
    q850_cause,
    status_for_cause,
)

# RFC 3398 §7.2.4.1, written out independently of the module's table.
Q850_TO_SIP = [
    (1, 404), (2, 404), (3, 404), (16, None), (17, 486), (18, 408), (19, 480),
    (20, 480), (21, 403), (22, 410), (23, 410), (26, 404), (27, 502), (28, 484),
    (29, 501), (31, 480), (34, 503), (38, 503), (41, 503), (42, 503), (47, 503),
    (55, 403), (57, 403), (58, 503), (65, 488), (70, 488), (79, 501), (87, 403),
    (88, 503), (102, 504), (111, 500), (127, 500),
]  # fmt: skip

# RFC 3398 §8.2.6.1; 487, 488 and 606 have no fixed RFC value (project choice).
SIP_TO_Q850 = [
    (400, 41), (401, 21), (402, 21), (403, 21), (404, 1), (405, 63), (406, 79),
    (407, 21), (408, 102), (410, 22), (413, 127), (414, 127), (415, 79),
    (416, 127), (420, 127), (421, 127), (423, 127), (480, 18), (481, 41),
    (482, 25), (483, 25), (484, 28), (485, 1), (486, 17), (487, 16), (488, 127),
    (500, 41), (501, 79), (502, 38), (503, 41), (504, 102), (505, 127),
    (513, 127), (600, 17), (603, 21), (604, 1), (606, 127),
]  # fmt: skip


@pytest.mark.parametrize(("cause", "status"), Q850_TO_SIP)
def test_q850_to_sip_rows(cause: int, status: int | None) -> None:
    assert status_for_cause(cause) == status


@pytest.mark.parametrize(("status", "cause"), SIP_TO_Q850)
def test_sip_to_q850_rows(status: int, cause: int) -> None:
    assert cause_for_status(status) == cause


def test_table_has_exactly_the_rfc_rows() -> None:
    q2s = {r.source for r in CAUSE_TABLE if r.direction is Direction.Q850_TO_SIP}
    s2q = {r.source for r in CAUSE_TABLE if r.direction is Direction.SIP_TO_Q850}
    assert q2s == {c for c, _ in Q850_TO_SIP}
    assert s2q == {s for s, _ in SIP_TO_Q850}


def test_rows_without_rfc_value_explain_themselves() -> None:
    no_rfc = {r.source for r in CAUSE_TABLE if r.rfc_value is None}
    assert no_rfc == {16, 487, 488, 606}
    assert all(r.note for r in CAUSE_TABLE if r.rfc_value != r.value)


def test_cause_21_with_user_location_is_603() -> None:
    assert status_for_cause(21, location_user=True) == 603
    assert status_for_cause(17, location_user=True) == 486


@pytest.mark.parametrize(
    ("cause", "status"),
    [
        (69, 501),  # class "not implemented": as 79
        (44, 503),  # class "resource unavailable": as 47
        (5, 480),  # normal event class: as 31
        (100, 500),  # protocol error class: as 111
        (99, 500),  # invalid message class: 95 has no row, interworking
        (63, 500),  # service not available: 63 has no row
        (200, 500),  # not a Q.850 cause
        (-1, 500),
    ],
)
def test_unlisted_cause_uses_its_class(cause: int, status: int) -> None:
    assert status_for_cause(cause) == status


@pytest.mark.parametrize("status", [409, 411, 422, 429, 491, 580, 699])
def test_unlisted_status_is_31(status: int) -> None:
    # §8.2.6.1: statuses not listed map to 31 "Normal, unspecified".
    assert cause_for_status(status) == 31


def test_success_status_maps_to_normal_clearing() -> None:
    assert cause_for_status(200) == 16


# --- Reason header -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('Q.850;cause=34;text="No circuit/channel available"',
         Reason("Q.850", 34, "No circuit/channel available")),
        ("Q.850;cause=16", Reason("Q.850", 16, None)),
        ("q.850 ; CAUSE = 17 ; Text = \"User busy\"", Reason("q.850", 17, "User busy")),
        ("  Q.850;cause=41  ", Reason("Q.850", 41, None)),
        ('Q.850;cause=34;text="a \\"quoted\\" word"', Reason("Q.850", 34, 'a "quoted" word')),
        ('Q.850;cause=34;text="comma, semicolon; inside"',
         Reason("Q.850", 34, "comma, semicolon; inside")),
        ("Q.850;cause=31;text=bare", Reason("Q.850", 31, "bare")),
        ("Q.850;cause=34;foo=bar;flag", Reason("Q.850", 34, None)),
        ("SIP;cause=200;text=\"Call completed elsewhere\"",
         Reason("SIP", 200, "Call completed elsewhere")),
        ('SIP;cause=600;text="Busy", Q.850;cause=17', Reason("SIP", 600, "Busy")),
        ("Q.850;cause=0", Reason("Q.850", 0, None)),
        ("Q.850;cause=127", Reason("Q.850", 127, None)),
    ],
)  # fmt: skip
def test_parse_reason(value: str, expected: Reason) -> None:
    assert parse_reason(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "Q.850",
        "Q.850;",
        "Q.850;cause",
        "Q.850;cause=",
        "Q.850;cause=abc",
        "Q.850;cause=-1",
        "Q.850;cause=128",
        "Q.850;cause=999999999999999999999",
        "Q.850;cause=3 4",
        "Q.850;cause=٣٤",  # Unicode digits are not DIGIT
        'Q.850;cause=34;text="unterminated',
        'Q.850;cause=34;text="bad"quote"',
        "Q.850;cause=34;text",
        "Q.850;;cause=34",
        ";cause=34",
        "Q 850;cause=34",
        "SIP;cause=99",
        "SIP;cause=700",
        "\x00\xff",
        "Q.850;cause=34" + ";x=y" * 2000,
    ],
)
def test_parse_reason_garbage_is_none(value: str) -> None:
    assert parse_reason(value) is None


def test_parse_reasons_keeps_the_good_values() -> None:
    got = parse_reasons('SIP;cause=503, garbage;;, Q.850;cause=34;text="x, y"')
    assert got == (Reason("SIP", 503), Reason("Q.850", 34, "x, y"))


def test_q850_cause_picks_the_q850_value() -> None:
    assert q850_cause('SIP;cause=503;text="x", Q.850;cause=42') == 42
    assert q850_cause("SIP;cause=503") is None
    assert q850_cause(None) is None


def test_non_string_input_is_none() -> None:
    assert parse_reason(b"Q.850;cause=34") is None  # type: ignore[arg-type]


@given(st.text(max_size=200))
def test_parse_reason_never_raises(value: str) -> None:
    result = parse_reason(value)
    assert result is None or isinstance(result, Reason)


def test_format_reason() -> None:
    assert format_reason(34) == 'Q.850;cause=34;text="No circuit/channel available"'
    assert format_reason(34, text="") == "Q.850;cause=34"
    assert format_reason(200, protocol="SIP") == "SIP;cause=200"
    assert format_reason(17, text='say "hi"\\') == 'Q.850;cause=17;text="say \\"hi\\"\\\\"'
    assert format_reason(17, text="a\r\nInjected: 1") == 'Q.850;cause=17;text="aInjected: 1"'
    assert format_reason(250) == "Q.850;cause=250"


@given(
    st.integers(min_value=0, max_value=127),
    st.one_of(st.none(), st.text(alphabet=st.characters(min_codepoint=32), max_size=40)),
)
@example(0, "\x7f")  # nothing printable left: no text parameter (found by hypothesis)
def test_format_then_parse_round_trips(cause: int, text: str | None) -> None:
    value = format_reason(cause, text=text if text is not None else "")
    parsed = parse_reason(value)
    assert parsed is not None
    assert parsed.cause == cause
    expected = (text or "").replace("\x7f", "") or None
    assert parsed.text == expected
    assert str(parsed) == value
