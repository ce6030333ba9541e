"""How ``make test`` shares the machine: most of the suite on two processes
(pytest-xdist, ``-n 2 --dist worksteal -m "not heavy"``), then the heavy tests alone (``-m heavy``).

Most of the suite's time is waiting (calls held for seconds, retransmission timers,
servers starting), so two pytest processes halve its length. The tests that load the
machine (a browser hearing audio in real time, SIPp at hundreds of calls a second,
multi-process nodes) or hold a resource only one program can have at a time
(linphonec's fixed Unix socket ``/tmp/linphonec-<uid>``) are marked ``heavy`` here and
run afterwards, one at a time with nothing beside them, as the whole suite used to.
"""

from __future__ import annotations

import pytest

HEAVY = frozenset(
    {
        # Chromium with fake media, WebRTC legs
        "integration/test_webrtc.py",
        "integration/test_webrtc_api.py",
        "integration/test_webrtc_ivr.py",
        "integration/test_webrtc_opus_bridge.py",
        "media/test_webrtc.py",
        "test_bench_webrtc.py",
        # one linphonec at a time; baresip beside it (audio heard in real time)
        "integration/test_interop_linphone.py",
        "integration/test_interop_baresip.py",
        # SIPp at hundreds of calls a second, multi-process nodes, two-node clusters
        "integration/test_sipp_core.py",
        "integration/test_workers.py",
        "integration/test_kamailio.py",
        "integration/test_garbage.py",
        # `serve` with its default of a worker per core (a front, N workers, N planes),
        # beside pip, a wheel build and mypy
        "integration/test_installer.py",
        "test_packaging.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath / "tests"
    for item in items:
        try:
            name = item.path.relative_to(root).as_posix()
        except ValueError:
            continue
        if name in HEAVY:
            item.add_marker(pytest.mark.heavy)
