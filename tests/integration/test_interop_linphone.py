"""Interop with linphone (linphonec of liblinphone 5.1.65, Debian's ``linphone-cli``), an
independent SIP/RTP stack, against ``callengine serve`` and the demo tenant (issue 13).

linphonec registers as user 100 with the node's default Digest challenges (SHA-256 and
MD5: belle-sip answers the SHA-256 one), calls the demo IVR, presses 3 (RFC 4733),
hears the prompts and speaks into the voicemail; then it is rung through the sales ring
group by a pjsua2 caller, answers (auto-answer), and the audio both ways is checked.

linphone sends a bare STUN Binding Request to the node's RTP and RTCP ports as a NAT
keepalive; the node counted them as malformed RTP/RTCP until this issue (now
``stun_received``; sans-IO test with these bytes in tests/media/test_stream.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from integration.audio import (
    MIN_CORRELATION,
    RATE,
    prompt_pcm,
    read_wav,
    slip_tolerant_correlation,
)
from integration.interop import (
    Account,
    Linphone,
    Softphone,
    call_logs,
    recorded_so_far,
    speech,
    wait_for,
    wait_heard,
    write_wav,
)
from integration.support import ROOT, Daemon

pytestmark = pytest.mark.integration

DaemonFactory = Callable[..., Daemon]
USER_100 = Account("100", "demo100")
MENU_WAV = ROOT / "media" / "prompts" / "menu.wav"
SAYS = 4.0  # seconds of speech the stack sends


def only_log(logs: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(logs) == 1, logs
    log = logs[0]
    assert log["state"] == "final" and log["tenant"] == "demo", log
    assert log["result"] == "completed" and log["q850_cause"] == 16, log  # a clean BYE
    return log


def test_linphone_registers_calls_the_ivr_presses_3_and_leaves_a_voicemail(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    node = daemon_factory()  # default digest_algorithms: SHA-256, MD5
    said = speech()[: int(SAYS * RATE)]
    says = write_wav(tmp_path / "says.wav", said, 1.0)
    heard = tmp_path / "linphone-heard.wav"
    phone = Linphone(tmp_path / "linphone", node, USER_100, record=heard, auto_answer=False)
    try:
        phone.wait_registered()
        sent = [ln for ln in phone.log().splitlines() if ln.startswith("Authorization:")]
        assert sent and "algorithm=SHA-256" in sent[0], sent  # the node's first choice
        phone.send("call sip:1000@demo")
        phone.wait_output(r"Call \d+ with sip:1000@demo connected")
        welcome_end = wait_heard(lambda: heard, prompt_pcm("welcome"))
        phone.send("3")  # a digit typed in a call: an RFC 4733 telephone-event
        greeting_end = wait_heard(
            lambda: heard, prompt_pcm("voicemail_greeting"), after=welcome_end
        )
        # the beep (250 ms) follows the greeting, then the recording starts
        wait_for(
            "the beep",
            lambda: len(recorded_so_far(heard)) > greeting_end + RATE // 2,
            5.0,
            phone.log,
        )
        phone.play(says)
        time.sleep(SAYS + 0.5)  # it plays in real time; linphonec reports no end of file
        phone.send("terminate")
        phone.wait_output(r"Call \d+ with sip:1000@demo ended")
    finally:
        phone.close()

    log = only_log(call_logs(node))
    assert (log["caller"], log["callee"]) == ("100", "1000"), log
    visited = [e for e in log["ivr_path"] if e.get("event") == "step"]
    nodes = [e["node"] for e in visited]
    assert nodes[:4] == ["welcome", "hours", "menu", "vm"], nodes
    assert visited[2]["digits"] == ["3"] and visited[3]["outcome"] == "recorded", visited
    quality = log["rtp_quality"]
    assert quality["dtmf_received"] == 1, quality
    assert quality["malformed"] == 0 and quality["rtcp_malformed"] == 0, quality
    assert quality["stun_received"] > 0, quality  # its keepalives, counted as such

    heard_pcm = read_wav(heard)
    welcome, at_welcome, _ = slip_tolerant_correlation(heard_pcm, prompt_pcm("welcome"))
    greeting, at_greeting, _ = slip_tolerant_correlation(
        heard_pcm, prompt_pcm("voicemail_greeting")
    )
    voicemail = read_wav(node.data_dir / "media" / "demo" / log["voicemail_key"])
    kept, at_speech, _ = slip_tolerant_correlation(voicemail, said)
    print(
        f"linphone heard welcome {welcome:.4f} at {at_welcome / RATE:.2f} s, greeting "
        f"{greeting:.4f} at {at_greeting / RATE:.2f} s; voicemail {len(voicemail) / RATE:.2f} "
        f"s holds its speech at {at_speech / RATE:.2f} s, correlation {kept:.4f}; "
        f"STUN keepalives {quality['stun_received']}"
    )
    assert welcome >= MIN_CORRELATION and greeting >= MIN_CORRELATION
    assert at_greeting > welcome_end  # the greeting came after the digit, not before
    # the message says what the node received and whether the file is all silence
    assert kept >= MIN_CORRELATION, (kept, quality, float(abs(voicemail).max()), visited[3])


def test_linphone_is_rung_by_the_sales_group_and_answers(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    node = daemon_factory()
    said = speech()[: int(SAYS * RATE)]
    says = write_wav(tmp_path / "says.wav", said, 1.0)
    heard = tmp_path / "linphone-heard.wav"
    caller_heard = tmp_path / "caller-heard.wav"
    phone = Linphone(tmp_path / "linphone", node, USER_100, record=heard, auto_answer=True)
    try:
        phone.wait_registered()
        # 1001 "Sales direct" -> ring group sales (100 and 101; only 100 is registered)
        caller = Softphone(
            {
                "uri": f"sip:1001@{node.address}",
                "play": str(MENU_WAV),
                "record": str(caller_heard),
                "duration": 7.5,
            }
        )
        phone.wait_output(r"Call \d+ with \S+ connected", timeout=15)
        phone.play(says)
        result = caller.result()
        phone.wait_output(r"Call \d+ with \S+ ended")  # the caller's BYE reached linphone
    finally:
        phone.close()
    assert result["answered"] and result["hangup_by"] == "local", result

    log = only_log(call_logs(node))
    assert (log["caller"], log["callee"]) == ("softphone", "1001"), log
    menu, at_menu, slip_menu = slip_tolerant_correlation(read_wav(heard), read_wav(MENU_WAV))
    back, at_back, slip_back = slip_tolerant_correlation(read_wav(caller_heard), said)
    print(
        f"linphone rung: it heard the caller's menu.wav {menu:.4f} at {at_menu / RATE:.2f} s "
        f"(slip {slip_menu / RATE * 1000:.0f} ms); the caller heard linphone's speech "
        f"{back:.4f} at {at_back / RATE:.2f} s (slip {slip_back / RATE * 1000:.0f} ms)"
    )
    assert menu >= MIN_CORRELATION and back >= MIN_CORRELATION
