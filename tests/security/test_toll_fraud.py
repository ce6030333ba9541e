"""A hostile caller against a node with trunks: malformed and fraudulent numbers.

The node runs `callengine serve` with one carrier (a SIPp UAS answering every call)
and a small span, so that a channel leak shows at once. Callers are raw UDP sockets
(``sip_call``) from a trusted source, the worst case: the source check passes, so
only the number rules stand between the caller and the carrier.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from integration.support import Daemon, free_port, scrape_fresh, sip_call
from integration.test_pri_failover import Carrier

pytestmark = pytest.mark.integration

CHANNELS = 4  # a tiny span: a leak of 4 channels would block every later call


def trunk_config(tmp: Path, carrier_port: int, policy: str = "") -> Path:
    path = tmp / "trunks.yaml"
    path.write_text(
        f"""
trunks:
  carrier-a:
    carrier: A
    gateway: {{host: 127.0.0.1, port: {carrier_port}}}
    dids: ["3225550100-3225550199"]  # calls from the gateway to these are inbound
    spans: [{{name: a-1, type: E1, channels: {CHANNELS}}}]
    health: {{probe_interval: 30}}
trunk_groups:
  pstn: {{trunks: [carrier-a], setup_timeout: 2}}
outbound_routes:
  - {{prefix: "9", strip: 1, group: pstn}}
trusted_sources: [127.0.0.1/32]
{policy}
"""
    )
    return path


@pytest.fixture
def carrier(tmp_path: Path) -> Iterator[Carrier]:
    c = Carrier("A", free_port(both=False), tmp_path / "carrier-a")
    c.start("pri_uas_answer.xml")
    yield c
    c.kill()


def channels_in_use(daemon: Daemon) -> float:
    assert daemon.metrics_port is not None
    return scrape_fresh(daemon.metrics_port)['callengine_trunk_channels_in_use{trunk="carrier-a"}']


# Numbers that once made the node answer 500 and keep the B-channel for good, or that
# would rewrite the carrier's Request-URI: each is refused before a channel is seized.
MALFORMED = [
    "9123%0D%0AX:1",
    "9123%0AVia:%20x",
    "9123%40127.0.0.1:5072",
    "9123%3Btransport=tcp",
    "9%2A%23abc",
    "9" + "1" * 300,
    "9123%00",
    "9%20123",
]


def test_malformed_numbers_never_hold_a_channel(
    tmp_path: Path, daemon_factory: Callable[..., Daemon], carrier: Carrier
) -> None:
    daemon = daemon_factory("--config", str(trunk_config(tmp_path, carrier.port)), metrics=True)
    statuses = []
    for _round in range(3):  # 24 attempts against 4 channels
        for number in MALFORMED:
            statuses.append(sip_call(daemon.port, number, timeout=5).status)
    assert set(statuses) == {484}, statuses
    assert channels_in_use(daemon) == 0
    # every channel is still there: CHANNELS good calls in a row all connect
    for _ in range(CHANNELS + 1):
        assert sip_call(daemon.port, "9123", timeout=10).status == 200
    assert channels_in_use(daemon) == 0
    carrier.stop()
    # nothing malformed reached the carrier; the good calls did
    assert carrier.invites() == CHANNELS + 1
    log = daemon.log()
    assert "Traceback" not in log
    assert "484 for" in log and "invalid number" in log
    # the escaped CR LF in the numbers did not forge log lines (escaped, one line each)
    assert not [line for line in log.splitlines() if line.startswith(("X:", "Via:"))]
    assert "9123\\x0d\\x0aX" in log
    metrics = scrape_fresh(daemon.metrics_port or 0)
    assert metrics['callengine_b2bua_events_total{event="dial_refused_invalid_number"}'] == 24


def test_toll_fraud_destinations_refused_unless_allowed(
    tmp_path: Path, daemon_factory: Callable[..., Daemon], carrier: Carrier
) -> None:
    policy = 'dial_policy: {allow: ["0044"], deny: ["118"]}'
    config = trunk_config(tmp_path, carrier.port, policy)
    daemon = daemon_factory("--config", str(config), metrics=True)
    refused = {
        "9011441234567": 403,  # international (NANP form)
        "90033123456789": 403,  # international, not on the allow list
        "9%2B88212345678": 403,  # +882: international network (premium)
        "919005551234": 403,  # 1-900 premium
        "9118118": 403,  # denied by the node's list
    }
    for number, want in refused.items():
        response = sip_call(daemon.port, number, timeout=5)
        assert response.status == want, (number, response)
        assert "cause=21" in response.headers.get("reason", ""), response.headers
    # the allow list opens one international destination
    assert sip_call(daemon.port, "90044201234567", timeout=10).status == 200
    assert sip_call(daemon.port, "95551234", timeout=10).status == 200
    carrier.stop()
    assert carrier.invites() == 2
    metrics = scrape_fresh(daemon.metrics_port or 0)
    events = 'callengine_b2bua_events_total{event="dial_refused_%s"}'
    assert metrics[events % "international"] == 2
    assert metrics[events % "premium"] == 2
    assert metrics[events % "denied"] == 1
    assert channels_in_use(daemon) == 0
