"""run_flow against an in-memory Call: every node type, no sockets (except the webhook server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest

from ivr import Flow, FlowContext, FlowOutcome, Router, load_flows, run_flow

T = TypeVar("T")
PROMPTS = frozenset({"welcome", "menu_main", "invalid", "timeout", "goodbye", "vm", "account"})
T0 = datetime(2026, 3, 9, 15, 0, tzinfo=UTC).timestamp()  # a Monday, 10:00 in New York


@dataclass(frozen=True)
class RecordResult:
    key: str
    seconds: float
    reason: str


@dataclass(frozen=True)
class TransferResult:
    answered: bool
    status: int
    cause: int
    target: str | None


class FakeCall:
    """The interfaces.md Call in memory.

    ``plays`` maps a prompt list's first name to the results of successive
    plays of it (a barge-in digit or None); ``gathers`` are the results of
    successive gathers ("" = timeout). ``ops`` records every operation.
    """

    def __init__(
        self,
        *,
        plays: Mapping[str, Sequence[str | None]] | None = None,
        gathers: Sequence[str] = (),
        transfers: Sequence[TransferResult] = (),
        block_play: str | None = None,
    ) -> None:
        self.call_id = "c1"
        self.caller = "15550001"
        self.callee = "18005550100"
        self.tenant: str | None = "acme"
        self.headers: dict[str, str] = {}
        self.variables: dict[str, str] = {}
        self._plays = {k: list(v) for k, v in (plays or {}).items()}
        self._gathers = list(gathers)
        self._transfers = list(transfers)
        self.block_play = block_play
        self.blocked = asyncio.Event()
        self.ops: list[tuple[Any, ...]] = []
        self.events: list[dict[str, Any]] = []
        self.recording_error: Exception | None = None

    async def answer(self) -> None:
        self.ops.append(("answer",))

    async def reject(self, status: int, reason: str | None = None) -> None:
        self.ops.append(("reject", status))

    async def hangup(self, cause: int = 16) -> None:
        self.ops.append(("hangup", cause))

    async def wait_hangup(self) -> None:
        await asyncio.Event().wait()

    async def play(self, prompts: Sequence[str], *, barge_in: bool = True) -> str | None:
        self.ops.append(("play", tuple(prompts), barge_in))
        if prompts[0] == self.block_play:
            self.blocked.set()
            await asyncio.Event().wait()
        results = self._plays.get(prompts[0])
        return results.pop(0) if results else None

    async def gather(
        self,
        *,
        max_digits: int,
        timeout: float,
        terminator: str | None = "#",
        inter_digit_timeout: float | None = None,
    ) -> str:
        self.ops.append(("gather", max_digits, timeout, terminator, inter_digit_timeout))
        return self._gathers.pop(0) if self._gathers else ""

    async def record(
        self,
        key: str,
        *,
        max_seconds: float,
        beep: bool = True,
        silence_timeout: float | None = None,
        stop_on_dtmf: bool = True,
    ) -> RecordResult:
        self.ops.append(("record", key, max_seconds, beep, silence_timeout))
        return RecordResult(key, 12.5, "silence")

    async def transfer(
        self, targets: Sequence[str], *, strategy: str = "parallel", timeout: float = 20.0
    ) -> TransferResult:
        self.ops.append(("transfer", tuple(targets), strategy, timeout))
        if self._transfers:
            return self._transfers.pop(0)
        return TransferResult(True, 200, 16, targets[0])

    def start_recording(self) -> str:
        self.ops.append(("start_recording",))
        if self.recording_error is not None:
            raise self.recording_error
        return "recordings/c1.wav"

    def stop_recording(self) -> None:
        self.ops.append(("stop_recording",))

    def log_event(self, kind: str, **fields: Any) -> None:
        assert kind == "ivr"
        json.dumps(fields)  # call logs must be JSON-serialisable
        self.events.append(fields)

    def steps(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "step"]


def make_flow(nodes: dict[str, Any], start: str | None = None, **kw: Any) -> Flow:
    doc = {"start": start or next(iter(nodes)), "nodes": nodes}
    return load_flows("acme", {"main": doc}, prompts=PROMPTS, **kw)["main"]


def run(call: FakeCall, flow: Flow, **kw: Any) -> FlowOutcome:
    kw.setdefault("clock", lambda: T0)
    return asyncio.run(run_flow(call, flow, **kw))


def ops(call: FakeCall, kind: str) -> list[tuple[Any, ...]]:
    return [op for op in call.ops if op[0] == kind]


# -- play, hangup, end of flow, step records -------------------------------------


def test_play_then_hangup_records_steps() -> None:
    flow = make_flow(
        {
            "hello": {"type": "play", "prompts": ["welcome", "tone:beep"], "next": "bye"},
            "bye": {"type": "hangup", "cause": 21},
        }
    )
    ticks = iter(range(100))
    call = FakeCall()
    out = run(call, flow, clock=lambda: float(next(ticks)))
    assert call.ops == [("play", ("welcome", "tone:beep"), True), ("hangup", 21)]
    assert (out.reason, out.hangup_cause, out.path, out.digits) == (
        "hangup",
        21,
        ("hello", "bye"),
        (),
    )
    first, second = out.steps
    assert (first.node, first.type, first.prompts, first.outcome, first.next) == (
        "hello",
        "play",
        ("welcome", "tone:beep"),
        "played",
        "bye",
    )
    assert first.started < first.ended <= second.started < second.ended
    assert call.steps()[0] == {
        "event": "step", "flow": "main", "node": "hello", "type": "play",
        "prompts": ["welcome", "tone:beep"], "digits": [], "outcome": "played", "next": "bye",
        "started": first.started, "ended": first.ended, "details": {},
    }  # fmt: skip
    assert call.events[-1] == {
        "event": "end",
        "flow": "main",
        "reason": "hangup",
        "hangup_cause": 21,
    }


def test_node_without_next_ends_flow_with_normal_clearing() -> None:
    call = FakeCall()
    out = run(call, make_flow({"hello": {"type": "play", "prompts": "welcome"}}))
    assert (out.reason, out.hangup_cause) == ("end", 16)
    assert call.ops[-1] == ("hangup", 16)


# -- menu ------------------------------------------------------------------------

MENU: dict[str, Any] = {
    "menu": {
        "type": "menu",
        "prompt": "menu_main",
        "options": {"1": "sales", "2": "support"},
        "invalid_prompt": "invalid",
        "timeout_prompt": "timeout",
        "timeout": 4,
        "retries": 2,
        "on_failure": "bye",
    },
    "sales": {"type": "hangup", "cause": 16},
    "support": {"type": "hangup", "cause": 17},
    "bye": {"type": "play", "prompts": "goodbye"},
}


def test_menu_choice_by_gather() -> None:
    call = FakeCall(gathers=["2"])
    out = run(call, make_flow(MENU))
    assert call.ops[:2] == [
        ("play", ("menu_main",), True),
        ("gather", 1, 4.0, None, None),
    ]
    assert (out.path, out.digits, out.hangup_cause) == (("menu", "support"), ("2",), 17)
    assert out.steps[0].details == {"attempts": 1, "choice": "2"}


def test_menu_invalid_then_timeout_then_failure() -> None:
    call = FakeCall(gathers=["9", "", ""])
    out = run(call, make_flow(MENU))
    assert [op[1] for op in ops(call, "play")] == [
        ("menu_main",), ("invalid",), ("menu_main",), ("timeout",),
        ("menu_main",), ("timeout",), ("goodbye",),
    ]  # fmt: skip
    assert ops(call, "play")[1][2] is False  # error prompts are not barge-in
    assert out.path == ("menu", "bye")
    assert out.digits == ("9",)
    menu = out.steps[0]
    assert (menu.outcome, menu.next, menu.digits) == ("failure", "bye", ("9",))
    assert menu.details == {"attempts": 3, "error": "timeout"}
    assert menu.prompts == ("menu_main", "invalid", "menu_main", "timeout", "menu_main", "timeout")


def test_menu_retry_then_success() -> None:
    call = FakeCall(gathers=["7", "1"])
    out = run(call, make_flow(MENU))
    assert out.path == ("menu", "sales") and out.digits == ("7", "1")
    assert out.steps[0].details == {"attempts": 2, "error": "invalid", "choice": "1"}


def test_menu_failure_without_on_failure_ends_flow() -> None:
    nodes = {**MENU, "menu": {**MENU["menu"], "retries": 0}}
    del nodes["menu"]["on_failure"]
    del nodes["bye"]
    call = FakeCall()
    out = run(call, make_flow(nodes, start="menu"))
    assert (out.reason, out.path) == ("end", ("menu",))


def test_barge_in_digit_becomes_the_menu_choice() -> None:
    nodes = {"hello": {"type": "play", "prompts": ["welcome"], "next": "menu"}, **MENU}
    call = FakeCall(plays={"welcome": ["2"]})
    out = run(call, make_flow(nodes))
    assert call.ops == [("play", ("welcome",), True), ("hangup", 17)]  # menu prompt skipped
    assert out.path == ("hello", "menu", "support")
    assert out.steps[0].outcome == "barged_in" and out.steps[0].digits == ("2",)
    assert out.steps[1].details == {"attempts": 1, "choice": "2"}
    assert out.digits == ("2",)


def test_barge_in_during_menu_prompt() -> None:
    call = FakeCall(plays={"menu_main": ["1"]})
    out = run(call, make_flow(MENU))
    assert ops(call, "gather") == []
    assert out.path == ("menu", "sales")


def test_play_without_barge_in_ignores_digit() -> None:
    nodes = {"hello": {"type": "play", "prompts": ["welcome"], "barge_in": False, "next": "menu"}}
    call = FakeCall(plays={"welcome": ["2"]}, gathers=["1"])
    out = run(call, make_flow({**nodes, **MENU}))
    assert call.ops[0] == ("play", ("welcome",), False)
    assert out.path == ("hello", "menu", "sales")


# -- gather ----------------------------------------------------------------------

GATHER: dict[str, Any] = {
    "acct": {
        "type": "gather",
        "prompt": "account",
        "variable": "account",
        "min_digits": 4,
        "max_digits": 6,
        "terminator": "#",
        "timeout": 7,
        "inter_digit_timeout": 2,
        "pattern": "9[0-9]+",
        "retries": 1,
        "invalid_prompt": "invalid",
        "next": "ok",
        "on_failure": "bye",
    },
    "ok": {"type": "hangup"},
    "bye": {"type": "hangup", "cause": 31},
}


def test_gather_with_terminator() -> None:
    call = FakeCall(gathers=["9123#"])
    out = run(call, make_flow(GATHER))
    assert ops(call, "gather") == [("gather", 6, 7.0, "#", 2.0)]
    assert call.variables == {"account": "9123"}
    assert out.variables == {"account": "9123"}
    assert (out.path, out.digits) == (("acct", "ok"), ("9123",))
    assert out.steps[0].details == {"attempts": 1, "variable": "account"}


def test_gather_pattern_mismatch_retries_then_fails() -> None:
    call = FakeCall(gathers=["1234", "12"])
    out = run(call, make_flow(GATHER))
    assert [op[1] for op in ops(call, "play")] == [
        ("account",), ("invalid",), ("account",), ("invalid",),
    ]  # fmt: skip
    assert "account" not in call.variables
    assert (out.path, out.hangup_cause, out.digits) == (("acct", "bye"), 31, ("1234", "12"))
    assert out.steps[0].outcome == "failure"


def test_gather_barge_in_digit_is_the_first_digit() -> None:
    call = FakeCall(plays={"account": ["9"]}, gathers=["876"])
    out = run(call, make_flow(GATHER))
    # 5 more digits at most, and the caller is mid-entry: inter-digit timeout.
    assert ops(call, "gather") == [("gather", 5, 2.0, "#", 2.0)]
    assert call.variables["account"] == "9876"
    assert out.steps[0].digits == ("9", "876")


def test_gather_terminator_alone_is_empty_input() -> None:
    nodes = {**GATHER, "acct": {**GATHER["acct"], "min_digits": 0, "pattern": None, "retries": 0}}
    call = FakeCall(plays={"account": ["#"]})
    out = run(call, make_flow(nodes))
    assert ops(call, "gather") == []
    assert call.variables == {"account": ""}
    assert out.path == ("acct", "ok")


# -- time conditions ---------------------------------------------------------------

HOURS = {
    "hours": {
        "type": "time_condition",
        "schedule": {
            day: [["09:00", "17:00"]] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
        },
        "holidays": ["2026-12-25"],
        "open": "open",
        "closed": "closed",
    },
    "open": {"type": "hangup", "cause": 16},
    "closed": {"type": "hangup", "cause": 17},
}


@pytest.mark.parametrize(
    ("instant", "expected", "local"),
    [
        # 08:30 EST, the day before spring forward
        (datetime(2026, 3, 7, 13, 30, tzinfo=UTC), "closed", "2026-03-07T08:30:00-05:00"),
        # 09:30 EDT, after spring forward
        (datetime(2026, 3, 8, 13, 30, tzinfo=UTC), "open", "2026-03-08T09:30:00-04:00"),
        # 09:30 EDT, the day before fall back
        (datetime(2026, 10, 31, 13, 30, tzinfo=UTC), "open", "2026-10-31T09:30:00-04:00"),
        # 08:30 EST, after fall back
        (datetime(2026, 11, 1, 13, 30, tzinfo=UTC), "closed", "2026-11-01T08:30:00-05:00"),
        # a holiday, at noon
        (datetime(2026, 12, 25, 17, 0, tzinfo=UTC), "closed", "2026-12-25T12:00:00-05:00"),
    ],
)
def test_time_condition_in_tenant_zone(instant: datetime, expected: str, local: str) -> None:
    flow = make_flow(HOURS, timezone="America/New_York")
    call = FakeCall()
    out = run(call, flow, clock=instant.timestamp)
    assert out.path == ("hours", expected)
    assert out.steps[0].outcome == expected
    assert out.steps[0].details == {"local": local, "holiday": local.startswith("2026-12-25")}


# -- transfer, voicemail, set, goto ----------------------------------------------

TRANSFER = {
    "xfer": {
        "type": "transfer",
        "targets": ["group:sales", "external:+15551234"],
        "strategy": "sequential",
        "timeout": 12,
        "on_no_answer": "vm",
        "on_busy": "busy",
        "next": "done",
    },
    "vm": {
        "type": "voicemail",
        "greeting": "vm",
        "max_seconds": 60,
        "silence_timeout": 4,
        "next": "done",
    },
    "busy": {"type": "hangup", "cause": 17},
    "done": {"type": "hangup"},
}


def test_transfer_answered_goes_to_next() -> None:
    call = FakeCall()
    out = run(call, make_flow(TRANSFER))
    assert ops(call, "transfer") == [
        ("transfer", ("group:sales", "external:+15551234"), "sequential", 12.0)
    ]
    assert out.path == ("xfer", "done")
    assert out.steps[0].details == {"status": 200, "cause": 16, "target": "group:sales"}


def test_transfer_busy_and_no_answer() -> None:
    call = FakeCall(transfers=[TransferResult(False, 486, 17, None)])
    assert run(call, make_flow(TRANSFER)).path == ("xfer", "busy")
    call = FakeCall(transfers=[TransferResult(False, 480, 19, None)])
    out = run(call, make_flow(TRANSFER))
    assert out.path == ("xfer", "vm", "done")
    assert out.steps[0].outcome == "no_answer"


def test_voicemail_records_to_call_key_and_logs_it() -> None:
    call = FakeCall(transfers=[TransferResult(False, 408, 18, None)])
    out = run(call, make_flow(TRANSFER))
    assert ("play", ("vm",), False) in call.ops
    assert ops(call, "record") == [("record", "voicemail/c1.wav", 60.0, True, 4.0)]
    step = call.steps()[1]
    assert (step["node"], step["outcome"]) == ("vm", "recorded")
    assert step["details"] == {"key": "voicemail/c1.wav", "seconds": 12.5, "reason": "silence"}
    assert out.steps[1].prompts == ("vm",)


def test_set_substitutes_variables_and_call_fields() -> None:
    flow = make_flow(
        {
            "a": {
                "type": "set",
                "variables": {"greeting": "hi ${caller}", "who": "${greeting}!${nope}"},
                "next": "b",
            },
            "b": {"type": "goto", "node": "c"},
            "c": {"type": "hangup"},
        }
    )
    call = FakeCall()
    out = run(call, flow)
    assert call.variables == {"greeting": "hi 15550001", "who": "hi 15550001!"}
    assert out.path == ("a", "b", "c")
    assert [s.outcome for s in out.steps] == ["set", "goto", "hangup"]


def test_goto_loop_guard_hangs_up_and_logs() -> None:
    flow = make_flow({"a": {"type": "goto", "node": "b"}, "b": {"type": "goto", "node": "a"}})
    call = FakeCall()
    out = run(call, flow, max_steps=10)
    assert (out.reason, out.hangup_cause) == ("max_steps", 16)
    assert len(out.path) == 10 and len(out.steps) == 10
    assert call.ops == [("hangup", 16)]
    assert {"event": "max_steps", "flow": "main", "limit": 10, "node": "a"} in call.events


# -- python actions ----------------------------------------------------------------

ACTIONS_FLOW = {
    "act": {
        "type": "python",
        "action": "lookup",
        "allowed_next": ["vip"],
        "next": "plain",
        "on_failure": "failed",
    },
    "plain": {"type": "hangup", "cause": 16},
    "vip": {"type": "hangup", "cause": 17},
    "failed": {"type": "hangup", "cause": 41},
}


def test_python_action_picks_next_node() -> None:
    router = Router()
    seen: list[FlowContext] = []

    @router.action("lookup")
    async def lookup(call: FakeCall, ctx: FlowContext) -> str | None:
        seen.append(ctx)
        ctx.variables["tier"] = "gold"
        return "vip" if call.caller.startswith("1555") else None

    call = FakeCall()
    out = run(call, make_flow(ACTIONS_FLOW), actions=router.actions)
    assert out.path == ("act", "vip")
    assert call.variables == {"tier": "gold"}
    assert (seen[0].node, seen[0].path, seen[0].flow.name) == ("act", ("act",), "main")


def test_python_action_none_means_next() -> None:
    async def lookup(call: FakeCall, ctx: FlowContext) -> str | None:
        return None

    out = run(FakeCall(), make_flow(ACTIONS_FLOW), actions={"lookup": lookup})
    assert out.path == ("act", "plain")


@pytest.mark.parametrize(
    ("actions", "error"),
    [
        ({}, "unknown action 'lookup'"),
        ({"lookup": "boom"}, "RuntimeError: boom"),
        ({"lookup": "failed"}, "action returned 'failed', not in allowed_next"),
    ],
)
def test_python_action_failures_go_to_on_failure(actions: dict[str, str], error: str) -> None:
    def make(kind: str) -> Callable[[FakeCall, FlowContext], Awaitable[str | None]]:
        async def action(call: FakeCall, ctx: FlowContext) -> str | None:
            if kind == "boom":
                raise RuntimeError("boom")
            return kind

        return action

    out = run(FakeCall(), make_flow(ACTIONS_FLOW), actions={k: make(v) for k, v in actions.items()})
    assert out.path == ("act", "failed")
    assert out.steps[0].details == {"error": error}


# -- cancellation on hangup -------------------------------------------------------


def test_cancel_mid_play_closes_step_and_propagates() -> None:
    flow = make_flow(
        {
            "hello": {"type": "play", "prompts": ["welcome"], "next": "long"},
            "long": {"type": "play", "prompts": ["goodbye", "tone:ringback"], "next": "end"},
            "end": {"type": "hangup"},
        }
    )
    call = FakeCall(block_play="goodbye")

    async def scenario() -> None:
        task = asyncio.create_task(run_flow(call, flow, clock=lambda: T0))
        await call.blocked.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    steps = call.steps()
    assert [(s["node"], s["outcome"]) for s in steps] == [
        ("hello", "played"),
        ("long", "cancelled"),
    ]
    assert steps[1]["prompts"] == ["goodbye", "tone:ringback"]
    assert ops(call, "hangup") == []
    assert not any(e["event"] == "end" for e in call.events)


# -- webhook against a local HTTP server ----------------------------------------


class WebhookServer:
    """A tiny asyncio HTTP server on 127.0.0.1 with a scripted reply."""

    def __init__(self, status: int = 200, body: bytes = b"{}", *, stall: bool = False) -> None:
        self.status, self.body, self.stall = status, body, stall
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.release = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        headers = {
            k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((lines[0], headers, body))
        if self.stall:
            await self.release.wait()
        writer.write(
            b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (self.status, len(self.body), self.body)
        )
        await writer.drain()
        writer.close()

    async def run(self, scenario: Callable[[int], Awaitable[T]]) -> T:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await scenario(port)
        finally:
            self.release.set()
            server.close()
            await server.wait_closed()


def webhook_flow(port: int, **extra: Any) -> Flow:
    return make_flow(
        {
            "set": {"type": "set", "variables": {"account": "9123"}, "next": "hook"},
            "hook": {
                "type": "webhook",
                "url": f"http://127.0.0.1:{port}/route?x=1",
                "allowed_next": ["sales", "support"],
                "timeout": 0.3,
                "on_failure": "fallback",
                **extra,
            },
            "sales": {"type": "hangup", "cause": 16},
            "support": {"type": "hangup", "cause": 17},
            "fallback": {"type": "hangup", "cause": 41},
        }
    )


def run_webhook(server: WebhookServer, **extra: Any) -> tuple[FakeCall, FlowOutcome]:
    call = FakeCall()

    async def scenario(port: int) -> FlowOutcome:
        return await run_flow(call, webhook_flow(port, **extra), clock=lambda: T0)

    return call, asyncio.run(server.run(scenario))


def test_webhook_reply_picks_next_and_sets_variables() -> None:
    server = WebhookServer(body=b'{"next": "support", "variables": {"tier": "gold", "n": 3}}')
    call, out = run_webhook(server)
    assert out.path == ("set", "hook", "support")
    assert call.variables == {"account": "9123", "tier": "gold", "n": "3"}
    request_line, headers, body = server.requests[0]
    assert request_line == "POST /route?x=1 HTTP/1.1"
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "call_id": "c1", "caller": "15550001", "callee": "18005550100", "tenant": "acme",
        "flow": "main", "node": "hook", "variables": {"account": "9123"}, "digits": [],
    }  # fmt: skip
    assert out.steps[1].details == {"status": 200}


def test_webhook_body_template_and_get() -> None:
    server = WebhookServer(body=b'{"next": "sales"}')
    _, out = run_webhook(server, body={"acct": "${account}", "from": ["${caller}", 1]})
    assert json.loads(server.requests[0][2]) == {"acct": "9123", "from": ["15550001", 1]}
    assert out.path[-1] == "sales"
    server = WebhookServer(body=b'{"next": "sales"}')
    _, out = run_webhook(server, method="GET")
    assert server.requests[0][0] == "GET /route?x=1 HTTP/1.1" and server.requests[0][2] == b""
    assert out.path[-1] == "sales"


@pytest.mark.parametrize(
    ("server", "error"),
    [
        (WebhookServer(stall=True), "timeout after 0.3s"),
        (WebhookServer(body=b"not json"), "reply is not JSON"),
        (WebhookServer(body=b"[1]"), "reply is not a JSON object"),
        (WebhookServer(status=500, body=b"{}"), "HTTP 500"),
        (
            WebhookServer(body=b'{"next": "fallback"}'),
            "reply next 'fallback' is not in allowed_next",
        ),
        (WebhookServer(body=b"{}"), "reply has no next node"),
        (
            WebhookServer(body=b'{"next": "sales", "variables": {"a": [1]}}'),
            "reply variables must be an object of strings and numbers",
        ),
    ],
    ids=[
        "timeout",
        "bad-json",
        "not-object",
        "http-500",
        "not-allowed",
        "no-next",
        "bad-variables",
    ],
)
def test_webhook_failures_go_to_on_failure(server: WebhookServer, error: str) -> None:
    _, out = run_webhook(server)
    assert out.path == ("set", "hook", "fallback")
    assert out.steps[1].outcome == "failure"
    assert out.steps[1].details["error"] == error


def test_webhook_reply_without_next_uses_node_next() -> None:
    _, out = run_webhook(WebhookServer(body=b"{}"), next="sales")
    assert out.path[-1] == "sales"


def test_webhook_connection_refused() -> None:
    async def scenario() -> FlowOutcome:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        return await run_flow(FakeCall(), webhook_flow(port), clock=lambda: T0)

    out = asyncio.run(scenario())
    assert out.path[-1] == "fallback"
    assert out.steps[1].details["error"].startswith("connection failed: ")


def test_record_option_starts_and_stops_the_call_recording() -> None:
    flow = make_flow(
        {
            "hello": {"type": "play", "prompts": ["welcome"], "next": "talk"},
            "talk": {"type": "play", "prompts": ["menu_main"], "next": "bye", "record": True},
            "bye": {"type": "play", "prompts": ["goodbye"], "next": "end", "record": False},
            "end": {"type": "hangup"},
        }
    )
    call = FakeCall()
    run(call, flow)
    assert [op[:2] for op in call.ops] == [
        ("play", ("welcome",)),
        ("start_recording",),
        ("play", ("menu_main",)),
        ("stop_recording",),
        ("play", ("goodbye",)),
        ("hangup", 16),
    ]


def test_a_recording_that_cannot_start_is_logged_and_the_flow_goes_on() -> None:
    flow = make_flow(
        {
            "talk": {"type": "play", "prompts": ["welcome"], "next": "end", "record": True},
            "end": {"type": "hangup"},
        }
    )
    call = FakeCall()
    call.recording_error = OSError("media spool full")
    out = run(call, flow)
    assert out.path == ("talk", "end")
    assert {"event": "recording_failed", "flow": "main", "error": "OSError: media spool full"} in (
        call.events
    )
