"""The Grafana dashboard (deploy/grafana/callengine.json) queries only metrics a running
node exposes: every PromQL expression is parsed (promql-parser, the Prometheus grammar)
and each metric it selects must be on the /metrics of a `callengine serve` that has a
trunk and has taken calls.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from integration.support import ROOT, Daemon, free_port, scrape_fresh, sip_call

pytestmark = pytest.mark.integration

DASHBOARD = ROOT / "deploy" / "grafana" / "callengine.json"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$instance": ".*"}
COVERED = {
    # the list: calls in progress, CPS, answer/fail rates, SIP messages, loop
    # lag, GC pauses, media streams and tick lateness, trunk states and channels,
    # outbox depth, offline state, floods and refused calls
    "callengine_active_calls",
    "callengine_calls_total",
    "callengine_sip_requests_in_total",
    "callengine_sip_responses_out_total",
    "callengine_event_loop_lag_ms_bucket",
    "callengine_gc_pause_seconds_total",
    "callengine_media_streams",
    "callengine_media_tick_lateness_ms_bucket",
    "callengine_trunk_state",
    "callengine_trunk_channels_in_use",
    "callengine_outbox_depth",
    "callengine_config_offline",
    "callengine_flood_dropped_total",
    "callengine_calls_refused_total",
}


def expressions(node: Any) -> Iterator[str]:
    """Every ``expr`` of every panel target (rows may nest panels)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def selected_metrics(expr: str) -> set[str]:
    """Metric names an expression selects, once Grafana's variables are substituted."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name or next(
                (m.value for m in node.matchers.matchers if m.name == "__name__"), None
            )
            assert name, f"a selector without a metric name in {expr!r}"
            names.add(name)
        return True

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return names


def exposed(text: str) -> set[str]:
    """Sample names /metrics offers: those with samples, and those of families the node
    declares without a sample yet (a counter of refusals before any refusal)."""
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1].isalpha()}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        # an empty counter family is declared under its sample name (``..._total``)
        base = family.removesuffix("_total") if kind == "counter" else family
        names.update(base + s for s in suffixes.get(kind, ("",)))
    return names


def test_every_metric_the_dashboard_queries_is_exposed(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    board = json.loads(DASHBOARD.read_text())
    exprs = list(expressions(board["panels"]))
    assert len(exprs) > 40
    wanted: set[str] = set()
    for expr in exprs:
        wanted |= selected_metrics(expr)
    assert COVERED <= wanted, COVERED - wanted
    variable = next(v for v in board["templating"]["list"] if v["name"] == "instance")
    wanted.add(re.fullmatch(r"label_values\((\w+), instance\)", variable["definition"])[1])
    assert {v["type"] for v in board["templating"]["list"]} >= {"datasource", "query"}

    gateway = free_port()  # nothing answers there: the trunk is configured, not used
    config = tmp_path / "node.yaml"
    config.write_text(
        f"""
trunks:
  carrier-a:
    carrier: A
    gateway: {{host: 127.0.0.1, port: {gateway}}}
    dids: ["3225550100-3225550199"]
    spans: [{{name: a-e1-1, type: E1}}]
trunk_groups:
  pstn: {{trunks: [carrier-a]}}
outbound_routes:
  - {{prefix: "9", strip: 1, group: pstn}}
trusted_sources: [127.0.0.1/32]
"""
    )
    daemon = daemon_factory("--config", str(config), metrics=True)
    for _ in range(3):
        assert sip_call(daemon.port, "1000", hold=0.1).status == 200
    assert daemon.metrics_port is not None
    # a multi-worker node's workers push their series to the front every second
    figures = scrape_fresh(daemon.metrics_port)
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics") as resp:
        text = resp.read().decode()
    missing = sorted(wanted - exposed(text))
    assert not missing, f"the dashboard queries metrics the node does not expose: {missing}"
    # the calls made above are counted in what the first panels show (summed over the
    # ``worker`` label on a multi-worker node, as the panels sum)
    assert figures['callengine_sip_requests_in_total{method="INVITE"}'] == 3


def test_selected_metrics_reads_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{instance=~"$instance"}'
        '[$__rate_interval]))) / on() group_left max(b) + count({__name__="c_total"})'
    )
    assert selected_metrics(expr) == {"a_bucket", "b", "c_total"}
    with pytest.raises(ValueError):
        selected_metrics("sum(rate(x[5m])")
