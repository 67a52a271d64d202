"""The alert webhook end to end through aiohttp's test client (and once on real listeners).

An Alertmanager notification reaches the health tracker and marks the node; every refusal
(401, 413, 400/422, 404, a replayed signature) is answered with its status and counted; blocking
alerts stop the planner with ``BlockedByAlert``. Time is a :class:`VirtualClock`.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from healer.clock import VirtualClock
from healer.config import ConfigError, WebhookConfig, parse_config
from healer.config.types import SecretRef
from healer.health.tracker import HealthTracker
from healer.model import LABEL_POOL, BlockChange, EventKind, Health, NodeEvent, NodeKey
from healer.planner import guards
from healer.planner.alert_blocks import AlertBlocks, block_handler
from healer.planner.planner import Planner
from healer.sources.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ReplayCache,
    WebhookServer,
    check_signature,
    sign,
)
from healer.sources.webhook_payload import (
    AlertRules,
    Parsed,
    Rejection,
    parse_alertmanager,
    strip_port,
)
from healer.store.sqlite import Store, WorkflowRecord
from healer.telemetry.metrics import REGISTRY
from tests.helpers import lab_like_config
from tests.plugins.mqtt import _write_certs

TOKEN = "t0ken-for-tests"
HMAC_KEY = "hmac-key-for-tests"
NODES = [f"w-{i}" for i in range(1, 6)]


def rejected(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "healer_events_rejected_total", {"source": "webhook", "reason": reason}
    )
    return value or 0.0


def received() -> float:
    return REGISTRY.get_sample_value("healer_events_received_total", {"source": "webhook"}) or 0.0


def alert(
    name: str,
    status: str = "firing",
    *,
    starts: str = "2023-11-14T22:13:00Z",
    ends: str = "0001-01-01T00:00:00Z",
    fingerprint: str | None = None,
    **labels: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "status": status,
        "labels": {"alertname": name, **labels},
        "annotations": {"summary": f"{name} on {labels}"},
        "startsAt": starts,
        "endsAt": ends,
        "generatorURL": "http://prometheus.example/graph",
    }
    if fingerprint is not None:
        out["fingerprint"] = fingerprint
    return out


def notification(*alerts: dict[str, Any], version: Any = "4") -> dict[str, Any]:
    return {
        "version": version,
        "groupKey": '{}:{alertname="NodeDiskFailing"}',
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": "healer",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example",
        "alerts": list(alerts),
    }


@dataclass
class Stack:
    clock: VirtualClock
    store: Store
    tracker: HealthTracker
    planner: Planner
    server: WebhookServer
    client: TestClient  # type: ignore[type-arg]
    started: list[WorkflowRecord]
    token_file: Path
    blocks: AlertBlocks

    def auth(self, token: str = TOKEN) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


def webhook_config(tmp_path: Path, **extra: Any) -> WebhookConfig:
    token_file = tmp_path / "token"
    if not token_file.exists():
        token_file.write_text(TOKEN + "\n")
    data: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "token": {"file": str(token_file)},
        "maxBody": 4096,
        "blockingAlerts": ["KubeAPIDown"],
        # The condition types the webhook owns (healer.config.provenance): alerts and generic
        # events may set these and nothing else.
        "conditions": {"node_disk_failing": "NodeDiskFailing", "NvidiaXid79": "GpuFailed"},
        **extra,
    }
    return WebhookConfig.model_validate(data)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    config = lab_like_config(
        health={
            "unhealthyConditions": [
                {"type": "Ready", "status": "Unknown", "timeout": "5m"},
                {"type": "NodeDiskFailing", "status": "True", "timeout": "2m"},
            ]
        }
    )
    # The daemon's tracker and webhook share one config: the tracker checks again that the
    # webhook owns each condition it sets (healer.config.provenance).
    config = config.model_copy(update={"webhook": webhook_config(tmp_path)})
    clock = VirtualClock()
    store = Store.open(tmp_path / "state")
    started: list[WorkflowRecord] = []

    async def on_change(obs, verdict, previous):  # type: ignore[no-untyped-def]
        await planner.on_health_change(obs, verdict, previous)

    async def start(wf: WorkflowRecord) -> None:
        started.append(wf)

    blocks = AlertBlocks(store=store)
    tracker = HealthTracker(config=config, store=store, clock=clock, on_change=on_change)
    planner = Planner(
        config=config, store=store, clock=clock, tracker=tracker, start=start, blocks=blocks
    )
    assert config.webhook is not None
    # Wired as the daemon wires it (healer.app): the planner side applies the block changes.
    server = WebhookServer(
        config=config.webhook,
        known_clusters=["lab"],
        clock=clock,
        emit=tracker.handle,
        is_known_node=tracker.knows,
        on_block=block_handler(
            blocks,
            store=store,
            clock=clock,
            ttl=config.webhook.block_ttl,
            consider=planner.consider,
        ),
    )
    # The cluster as the Kubernetes source lists it (only "kube" may set Ready), as one list.
    await tracker.handle(NodeEvent("lab", "", EventKind.LIST_STARTED, clock.now(), "kube"))
    for node in NODES:
        await tracker.handle(
            NodeEvent(
                "lab",
                node,
                EventKind.NODE_ADDED,
                clock.now(),
                "kube",
                labels={LABEL_POOL: "workers"},
            )
        )
        await tracker.handle(
            NodeEvent(
                "lab",
                node,
                EventKind.CONDITION,
                clock.now(),
                "kube",
                condition="Ready",
                status="True",
            )
        )
    await tracker.handle(NodeEvent("lab", "", EventKind.SYNCED, clock.now(), "kube"))
    task = asyncio.create_task(tracker.run())
    client = TestClient(TestServer(server.app()))
    await client.start_server()
    try:
        yield Stack(
            clock, store, tracker, planner, server, client, started, tmp_path / "token", blocks
        )
    finally:
        await client.close()
        task.cancel()
        store.close()


async def post(stack: Stack, path: str, doc: Any, **kw: Any) -> aiohttp.ClientResponse:
    headers = kw.pop("headers", stack.auth())
    return await stack.client.post(path, data=json.dumps(doc).encode(), headers=headers, **kw)


# -- the happy path --------------------------------------------------------------------------


async def test_an_alertmanager_notification_marks_the_node(stack: Stack) -> None:
    before = received()
    now_text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stack.clock.now()))
    body = notification(
        alert("NodeDiskFailing", instance="W-2:9100", starts=now_text),
        alert("NodeDiskFailing", "resolved", node="w-3", ends=now_text),
    )
    resp = await post(stack, "/v1/alertmanager/lab", body)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"accepted": 2, "blocks": [], "rejected": []}
    assert received() == before + 2

    obs = stack.tracker.observation(NodeKey("lab", "w-2"))
    assert obs is not None and obs.conditions["NodeDiskFailing"].status == "True"
    verdict = stack.tracker.verdict(NodeKey("lab", "w-2"))
    assert verdict is not None and verdict.health is Health.PENDING
    assert verdict.reason == "NodeDiskFailingTrue"
    w3 = stack.tracker.observation(NodeKey("lab", "w-3"))
    assert w3 is not None and w3.conditions["NodeDiskFailing"].status == "False"

    # Past the configured timeout the alert alone makes the node unhealthy, and it is replaced.
    await stack.clock.advance(120.0)
    assert stack.tracker.verdict(NodeKey("lab", "w-2")).health is Health.UNHEALTHY  # type: ignore[union-attr]
    assert [wf.node for wf in stack.started] == ["w-2"]


async def test_resolved_clears_the_condition(stack: Stack) -> None:
    await post(stack, "/v1/alertmanager/lab", notification(alert("NodeDiskFailing", node="w-1")))
    resp = await post(
        stack,
        "/v1/alertmanager/lab",
        notification(alert("NodeDiskFailing", "resolved", node="w-1")),
    )
    assert resp.status == 200
    verdict = stack.tracker.verdict(NodeKey("lab", "w-1"))
    assert verdict is not None and verdict.health is Health.HEALTHY


async def test_cluster_from_a_label_and_per_alert_rejections(stack: Stack) -> None:
    before = {
        r: rejected(r) for r in ("no_node", "unknown_node", "unknown_cluster", "bad_condition")
    }
    body = notification(
        alert("node_disk_failing", cluster="lab", kubernetes_node="w-4"),  # mapped name
        alert("NodeDiskFailing", cluster="lab"),  # no node label
        alert("NodeDiskFailing", cluster="lab", node="stranger"),
        alert("NodeDiskFailing", cluster="other", node="w-1"),
        alert("NodeDiskFailing", node="w-1"),  # no cluster label, none in the URL
        alert("disk-failing", cluster="lab", node="w-1"),  # not a condition type
    )
    resp = await post(stack, "/v1/alertmanager", body)
    assert resp.status == 200
    answer = await resp.json()
    assert answer["accepted"] == 1
    assert [(r["alert"], r["reason"]) for r in answer["rejected"]] == [
        (1, "no_node"),
        (2, "unknown_node"),
        (3, "unknown_cluster"),
        (4, "unknown_cluster"),
        (5, "bad_condition"),
    ]
    assert rejected("no_node") == before["no_node"] + 1
    assert rejected("unknown_node") == before["unknown_node"] + 1
    assert rejected("unknown_cluster") == before["unknown_cluster"] + 2
    assert rejected("bad_condition") == before["bad_condition"] + 1
    obs = stack.tracker.observation(NodeKey("lab", "w-4"))
    assert obs is not None and obs.conditions["NodeDiskFailing"].status == "True"
    assert stack.tracker.observation(NodeKey("lab", "stranger")) is None


async def test_generic_format(stack: Stack) -> None:
    doc = {
        "cluster": "lab",
        "node": "w-5",
        "condition": "GpuFailed",
        "status": True,
        "reason": "Xid79",
    }
    resp = await post(stack, "/v1/events", doc)
    assert resp.status == 200
    obs = stack.tracker.observation(NodeKey("lab", "w-5"))
    assert obs is not None and obs.conditions["GpuFailed"].status == "True"
    assert obs.recent[-1]["detail"] == {"reason": "Xid79"}


async def test_the_webhook_cannot_set_a_kubernetes_condition(stack: Stack) -> None:
    # Only the Kubernetes API sets Ready (healer.config.provenance): a forged generic event is
    # refused with 403, counted and logged; an alert named like it is left out of the rest.
    before = rejected("condition_not_owned")
    with capture_logs() as logs:
        forged = {"cluster": "lab", "node": "w-1", "condition": "Ready", "status": "False"}
        resp = await post(stack, "/v1/events", forged)
    assert resp.status == 403
    assert (await resp.json())["error"] == "condition_not_owned"
    refused = [e for e in logs if e["event"] == "webhook.rejected"]
    assert [(e["reason"], e["node"], e["condition"], e["source"]) for e in refused] == [
        ("condition_not_owned", "w-1", "Ready", "webhook")
    ]
    resp = await post(
        stack,
        "/v1/alertmanager/lab",
        notification(alert("Ready", node="w-2"), alert("NodeDiskFailing", node="w-2")),
    )
    assert resp.status == 200
    answer = await resp.json()
    assert answer["accepted"] == 1
    assert [r["reason"] for r in answer["rejected"]] == ["condition_not_owned"]
    assert rejected("condition_not_owned") == before + 2
    for node in ("w-1", "w-2"):
        obs = stack.tracker.observation(NodeKey("lab", node))
        assert obs is not None and obs.conditions["Ready"].status == "True"
        assert obs.conditions["Ready"].source == "kube"


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "what"),
    [
        ({}, "no credentials"),
        ({"Authorization": "Bearer wrong"}, "a wrong token"),
        ({"Authorization": f"Bearer {TOKEN}x"}, "a token with a suffix"),
        ({"Authorization": f"Basic {TOKEN}"}, "another scheme"),
        ({"Authorization": "Bearer"}, "an empty token"),
    ],
)
async def test_401_without_valid_credentials(
    stack: Stack, headers: dict[str, str], what: str
) -> None:
    before = rejected("unauthorized")
    resp = await post(
        stack,
        "/v1/alertmanager/lab",
        notification(alert("NodeDiskFailing", node="w-1")),
        headers=headers,
    )
    assert resp.status == 401, what
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await resp.json())["error"] == "unauthorized"
    assert rejected("unauthorized") == before + 1
    assert "NodeDiskFailing" not in stack.tracker.observation(NodeKey("lab", "w-1")).conditions  # type: ignore[union-attr]


async def test_a_rotated_token_file_takes_effect_on_reload_not_per_request(stack: Stack) -> None:
    stack.token_file.write_text("rotated-token")
    doc = notification(alert("NodeDiskFailing", "resolved", node="w-1"))
    # Read once: until the daemon reloads (SIGHUP), the token in force is the one read at start.
    assert (await post(stack, "/v1/alertmanager/lab", doc)).status == 200
    assert stack.server.reload_secrets()
    assert (await post(stack, "/v1/alertmanager/lab", doc)).status == 401
    resp = await post(stack, "/v1/alertmanager/lab", doc, headers=stack.auth("rotated-token"))
    assert resp.status == 200


async def test_an_accepted_request_is_counted_and_logged_at_debug_only(stack: Stack) -> None:
    before = received()
    doc = notification(alert("NodeDiskFailing", "resolved", node="w-1"))
    with capture_logs() as logs:
        assert (await post(stack, "/v1/alertmanager/lab", doc)).status == 200
    ours = [(e["event"], e["log_level"]) for e in logs if e["event"].startswith("webhook.")]
    assert ours == [("webhook.received", "debug")]
    assert received() == before + 1


async def test_no_request_reads_the_token_file(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[object] = []
    real = SecretRef.reveal

    def counted(self: SecretRef) -> str:
        reads.append(self)
        return real(self)

    monkeypatch.setattr(SecretRef, "reveal", counted)
    doc = notification(alert("NodeDiskFailing", "resolved", node="w-1"))
    for _ in range(5):
        assert (await post(stack, "/v1/alertmanager/lab", doc)).status == 200
    assert reads == []


async def test_a_missing_secret_is_503_not_a_crash_until_it_is_back(stack: Stack) -> None:
    stack.token_file.unlink()
    with capture_logs() as logs:
        assert not stack.server.reload_secrets()  # the daemon's reload (SIGHUP)
    assert [e["event"] for e in logs] == ["webhook.secret_unavailable"]
    resp = await post(stack, "/v1/alertmanager/lab", notification())
    assert resp.status == 503
    assert (await resp.json())["error"] == "credentials_unavailable"
    # Unreadable, each request tries again: restoring the file is enough, no second reload.
    stack.token_file.write_text(TOKEN + "\n")
    doc = notification(alert("NodeDiskFailing", "resolved", node="w-1"))
    assert (await post(stack, "/v1/alertmanager/lab", doc)).status == 200


async def test_413_over_the_body_limit(stack: Stack) -> None:
    before = rejected("too_large")
    big = notification(*[alert("NodeDiskFailing", node="w-1")] * 40)
    assert len(json.dumps(big)) > 4096
    # Declared too large: refused before any authentication or reading.
    resp = await post(stack, "/v1/alertmanager/lab", big, headers={})
    assert resp.status == 413
    assert rejected("too_large") == before + 1

    # Streamed without a Content-Length: counted as it arrives and cut off at the limit.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" " * 1000

    resp = await stack.client.post("/v1/alertmanager/lab", data=chunks(), headers=stack.auth())
    assert resp.status == 413
    assert rejected("too_large") == before + 2


@pytest.mark.parametrize(
    ("path", "body", "status", "reason"),
    [
        ("/v1/alertmanager/lab", b"{not json", 400, "bad_json"),
        ("/v1/alertmanager/lab", b"\xff\xfe", 400, "bad_json"),
        ("/v1/alertmanager/lab", b'{"version": "4", "alerts": [NaN]}', 400, "bad_json"),
        ("/v1/alertmanager/lab", b"[]", 422, "bad_schema"),
        ("/v1/alertmanager/lab", b'{"alerts": []}', 422, "bad_schema"),
        ("/v1/alertmanager/lab", b'{"version": "3", "alerts": []}', 422, "unsupported_version"),
        ("/v1/alertmanager/lab", b'{"version": 4, "alerts": []}', 422, "unsupported_version"),
        ("/v1/alertmanager/lab", b'{"version": "4", "alerts": {}}', 422, "bad_schema"),
        (
            "/v1/alertmanager/lab",
            b'{"version": "4", "alerts": [{"status": "on"}]}',
            422,
            "bad_schema",
        ),
        (
            "/v1/alertmanager/lab",
            b'{"version": "4", "alerts": [{"status": "firing", "labels": {"alertname": "X"},'
            b' "startsAt": "yesterday"}]}',
            422,
            "bad_schema",
        ),
        ("/v1/alertmanager/nowhere", b'{"version": "4", "alerts": []}', 404, "unknown_cluster"),
        (
            "/v1/events",
            b'{"cluster": "nowhere", "node": "w-1", "condition": "X", "status": "True"}',
            404,
            "unknown_cluster",
        ),
        (
            "/v1/events",
            b'{"cluster": "lab", "node": "nobody", "condition": "X", "status": "True"}',
            404,
            "unknown_node",
        ),
        (
            "/v1/events",
            b'{"cluster": "lab", "node": "w-1", "condition": "x y", "status": "True"}',
            422,
            "bad_schema",
        ),
        (
            "/v1/events",
            b'{"cluster": "lab", "node": "w-1", "condition": "Xy", "status": "yes"}',
            422,
            "bad_schema",
        ),
    ],
)
async def test_malformed_bodies(
    stack: Stack, path: str, body: bytes, status: int, reason: str
) -> None:
    before = rejected(reason)
    resp = await stack.client.post(path, data=body, headers=stack.auth())
    assert resp.status == status
    answer = await resp.json()
    assert answer["error"] == reason
    assert 0 < len(answer["message"]) <= 200
    assert rejected(reason) == before + 1


# -- HMAC signatures -------------------------------------------------------------------------


@pytest.fixture
async def signed(tmp_path: Path) -> AsyncIterator[tuple[TestClient, list[NodeEvent], VirtualClock]]:  # type: ignore[type-arg]
    key = tmp_path / "hmac"
    key.write_text(HMAC_KEY)
    clock = VirtualClock()
    events: list[NodeEvent] = []

    async def emit(event: NodeEvent) -> None:
        events.append(event)

    server = WebhookServer(
        config=WebhookConfig.model_validate(
            {
                "hmacSecret": {"file": str(key)},
                "maxSkew": "5m",
                "conditions": {"NodeDiskFailing": "NodeDiskFailing"},
            }
        ),
        known_clusters=["lab"],
        clock=clock,
        emit=emit,
    )
    async with TestClient(TestServer(server.app())) as client:
        yield client, events, clock


def signed_headers(body: bytes, at: float, key: str = HMAC_KEY) -> dict[str, str]:
    ts = str(int(at))
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sign(key, ts, body)}


GENERIC = b'{"cluster": "lab", "node": "w-1", "condition": "NodeDiskFailing", "status": "True"}'


async def test_a_signed_request_is_accepted_once_and_a_replay_is_rejected(signed) -> None:  # type: ignore[no-untyped-def]
    client, events, clock = signed
    headers = signed_headers(GENERIC, clock.now())
    resp = await client.post("/v1/events", data=GENERIC, headers=headers)
    assert resp.status == 200, await resp.text()
    assert len(events) == 1
    before = rejected("replayed")
    await clock.advance(30)
    resp = await client.post("/v1/events", data=GENERIC, headers=headers)
    assert resp.status == 401
    assert (await resp.json())["error"] == "replayed"
    assert rejected("replayed") == before + 1
    assert len(events) == 1
    # Re-signed with a new timestamp, the same body is a new request.
    resp = await client.post(
        "/v1/events", data=GENERIC, headers=signed_headers(GENERIC, clock.now())
    )
    assert resp.status == 200
    assert len(events) == 2


@pytest.mark.parametrize(
    ("what", "make"),
    [
        ("no headers", lambda now: {}),
        ("a stale timestamp", lambda now: signed_headers(GENERIC, now - 301)),
        ("a timestamp from the future", lambda now: signed_headers(GENERIC, now + 301)),
        ("another key", lambda now: signed_headers(GENERIC, now, key="other")),
        ("another body", lambda now: signed_headers(GENERIC + b" ", now)),
        (
            "a timestamp that is not a number",
            lambda now: {TIMESTAMP_HEADER: "soon", SIGNATURE_HEADER: "sha256=00"},
        ),
    ],
)
async def test_bad_signatures(signed, what: str, make) -> None:  # type: ignore[no-untyped-def]
    client, events, clock = signed
    resp = await client.post("/v1/events", data=GENERIC, headers=make(clock.now()))
    assert resp.status == 401, what
    assert (await resp.json())["error"] == "unauthorized"
    assert events == []


def test_replay_cache_forgets_only_after_the_window() -> None:
    cache = ReplayCache(max_skew=10)
    assert not cache.seen("a", 100.0)
    assert cache.seen("a", 119.9)
    assert not cache.seen("a", 120.1)  # by now the timestamp fails the skew check anyway


def test_replay_cache_refuses_when_full_of_live_entries() -> None:
    cache = ReplayCache(max_skew=10, limit=3)
    assert [cache.seen(s, 0.0) for s in "abc"] == [False, False, False]
    assert cache.seen("d", 1.0)  # full: refused rather than forgetting a live signature
    assert not cache.seen("d", 25.0)  # the others expired and were purged


def test_check_signature_needs_both_headers() -> None:
    result = check_signature(
        secret="k",
        timestamp="1",
        signature=None,
        body=b"",
        now=1.0,
        max_skew=5,
        replays=ReplayCache(5),
    )
    assert result is not None and result.reason == "unauthorized"


# -- blocking alerts --------------------------------------------------------------------------


async def test_a_blocking_alert_stops_remediation_until_resolved(stack: Stack) -> None:
    firing = notification(
        alert("KubeAPIDown", fingerprint="f1"), alert("KubeAPIDown", fingerprint="f2")
    )
    with capture_logs() as logs:
        resp = await post(stack, "/v1/alertmanager/lab", firing)
    assert (await resp.json())["blocks"] == ["lab/KubeAPIDown=firing", "lab/KubeAPIDown=firing"]
    assert stack.blocks.active("lab", stack.clock.now()) == ("KubeAPIDown",)
    # Recorded once (the second instance changes nothing): a log line and an audit row.
    [line] = [e for e in logs if e["event"] == "alert.blocking"]
    assert (line["cluster"], line["alert"], line["reason"]) == (
        "lab",
        "KubeAPIDown",
        "BlockedByAlert",
    )
    [row] = stack.store.audit_log(event="alert.blocking")
    assert row.evidence == {"alert": "KubeAPIDown", "fingerprint": "f1"}

    await post(stack, "/v1/alertmanager/lab", notification(alert("NodeDiskFailing", node="w-1")))
    await stack.clock.advance(120.0)
    assert stack.tracker.verdict(NodeKey("lab", "w-1")).health is Health.UNHEALTHY  # type: ignore[union-attr]
    assert stack.started == []
    refusals = stack.store.audit_log(event="remediation.refused")
    assert [r.reason for r in refusals] == [guards.BLOCKED_BY_ALERT]
    assert "KubeAPIDown" in refusals[0].message

    # One of two instances resolved: still blocked.
    await post(
        stack,
        "/v1/alertmanager/lab",
        notification(alert("KubeAPIDown", "resolved", fingerprint="f1")),
    )
    assert stack.started == []
    await post(
        stack,
        "/v1/alertmanager/lab",
        notification(alert("KubeAPIDown", "resolved", fingerprint="f2")),
    )
    assert stack.blocks.active("lab", stack.clock.now()) == ()
    assert [wf.node for wf in stack.started] == ["w-1"]
    [lifted] = stack.store.audit_log(event="alert.unblocked")
    assert (lifted.reason, lifted.evidence["fingerprint"]) == ("AlertResolved", "f2")


async def test_the_webhook_passes_every_block_change_on_and_keeps_none(tmp_path: Path) -> None:
    """A source only emits: each firing and resolved notification goes to ``on_block`` in
    order, repeats included; deciding what blocks is the planner's."""
    changes: list[BlockChange] = []

    async def on_block(change: BlockChange) -> None:
        changes.append(change)

    server = WebhookServer(
        config=webhook_config(tmp_path),
        known_clusters=["lab"],
        clock=VirtualClock(),
        emit=lambda event: asyncio.sleep(0),
        on_block=on_block,
    )
    client = TestClient(TestServer(server.app()))
    await client.start_server()
    try:
        for doc in (
            notification(alert("KubeAPIDown", fingerprint="f1")),
            notification(alert("KubeAPIDown", fingerprint="f1")),
            notification(alert("KubeAPIDown", "resolved", fingerprint="f1")),
        ):
            resp = await client.post(
                "/v1/alertmanager/lab",
                data=json.dumps(doc).encode(),
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert resp.status == 200
    finally:
        await client.close()
    assert [(c.cluster, c.alert, c.fingerprint, c.firing) for c in changes] == [
        ("lab", "KubeAPIDown", "f1", True),
        ("lab", "KubeAPIDown", "f1", True),
        ("lab", "KubeAPIDown", "f1", False),
    ]
    assert not hasattr(server, "blocks")


# -- ops endpoints and real listeners ---------------------------------------------------------


async def test_healthz_and_metrics_are_not_served_on_the_webhook_port(stack: Stack) -> None:
    # Their own listener serves them (webhook.metricsListen or metrics.listen, healer.app).
    for path in ("/healthz", "/metrics"):
        resp = await stack.client.get(path)
        assert resp.status in (404, 405), path


async def test_a_real_tls_listener(tmp_path: Path) -> None:
    ca = _write_certs(tmp_path)
    config = webhook_config(
        tmp_path, tlsCert=str(tmp_path / "server.pem"), tlsKey=str(tmp_path / "server.key")
    )
    events: list[NodeEvent] = []

    async def emit(event: NodeEvent) -> None:
        events.append(event)

    server = WebhookServer(config=config, known_clusters=["lab"], clock=VirtualClock(), emit=emit)
    ctx = ssl.create_default_context(cafile=str(ca))
    await server.start()
    try:
        port = server.addresses[0][1]
        async with asyncio.timeout(10), aiohttp.ClientSession() as http:
            url = f"https://127.0.0.1:{port}"
            doc = {
                "cluster": "lab",
                "node": "w-1",
                "condition": "NodeDiskFailing",
                "status": "True",
            }
            async with http.post(
                f"{url}/v1/events", json=doc, ssl=ctx, headers={"Authorization": f"Bearer {TOKEN}"}
            ) as resp:
                assert resp.status == 200
            # The webhook listener never serves the ops endpoints.
            async with http.get(f"{url}/metrics", ssl=ctx) as resp:
                assert resp.status in (404, 405)
            # Plain HTTP to the TLS listener is not served.
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/v1/events"):
                    pass
        assert [e.node for e in events] == ["w-1"]
    finally:
        await server.stop()


# -- configuration and pure helpers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("webhook", "message"),
    [
        ({}, "the webhook needs 'token' and/or 'hmacSecret'"),
        ({"token": {"env": "T"}, "tlsCert": "/c.pem"}, "TLS needs both 'tlsCert' and 'tlsKey'"),
        ({"token": {"env": "T"}, "listen": "9095"}, "invalid listen address"),
        ({"token": {"env": "T"}, "maxBody": 10}, "webhook.maxBody"),
    ],
)
def test_config_errors_name_the_field(webhook: dict[str, Any], message: str) -> None:
    cluster = {"name": "lab", "provider": {"plugin": "lab"}, "pools": [{"name": "w", "size": 1}]}
    with pytest.raises(ConfigError) as err:
        parse_config({"webhook": webhook, "clusters": [cluster]}, source="healer.yaml")
    assert "healer.yaml" in str(err.value)
    assert message in str(err.value)


def test_unauthenticated_must_be_explicit() -> None:
    cfg = WebhookConfig.model_validate({"allowUnauthenticated": True, "listen": "[::1]:9000"})
    assert cfg.listen == ("::1", 9000)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("w-1:9100", "w-1"),
        ("w-1", "w-1"),
        ("10.0.0.7:9100", "10.0.0.7"),
        ("[fd00::1]:9100", "fd00::1"),
        ("fd00::1", "fd00::1"),
        ("host:port", "host:port"),
    ],
)
def test_strip_port(value: str, expected: str) -> None:
    assert strip_port(value) == expected


@pytest.mark.parametrize(
    ("labels", "node"),
    [
        ({"node": "w-1", "instance": "w-2:9100"}, "w-1"),  # the first configured label wins
        ({"instance": "W-2.Example.COM:9100"}, "w-2.example.com"),
        ({"node": "", "hostname": "w-3"}, "w-3"),
        ({"node": "not a name", "hostname": "w-3"}, "w-3"),
        ({"job": "node"}, None),
    ],
)
def test_node_from_labels(labels: dict[str, str], node: str | None) -> None:
    body = json.dumps(notification(alert("NodeDiskFailing", **labels))).encode()
    result = parse_alertmanager(
        body,
        path_cluster="lab",
        rules=AlertRules(conditions={"NodeDiskFailing": "NodeDiskFailing"}),
        known_clusters={"lab"},
        now=1_700_000_000.0,
        max_body=1 << 20,
    )
    assert isinstance(result, Parsed)
    if node is None:
        assert [r.reason for _, r in result.rejections] == ["no_node"]
    else:
        assert [e.node for e in result.events] == [node]


def test_firing_wins_and_since_is_the_earliest_start() -> None:
    body = json.dumps(
        notification(
            alert("NodeDiskFailing", "resolved", node="w-1", ends="2023-11-14T22:13:20Z"),
            alert("NodeDiskFailing", node="w-1", starts="2023-11-14T22:10:00Z", fingerprint="a"),
            alert("NodeDiskFailing", node="w-1", starts="2023-11-14T22:05:00.5Z", fingerprint="b"),
            alert(
                "NodeDiskFailing", node="w-2", starts="2099-01-01T00:00:00Z"
            ),  # sender clock ahead
        )
    ).encode()
    now = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    result = parse_alertmanager(
        body,
        path_cluster="lab",
        rules=AlertRules(conditions={"NodeDiskFailing": "NodeDiskFailing"}),
        known_clusters={"lab"},
        now=now,
        max_body=1 << 20,
    )
    assert isinstance(result, Parsed)
    assert [(e.node, e.status, e.since) for e in result.events] == [
        ("w-1", "True", now - 499.5),  # 22:05:00.5, the earlier of the two firing
        ("w-2", "True", now),
    ]


def test_rejection_statuses() -> None:
    assert Rejection("too_large", "").status == 413
    assert Rejection("replayed", "").status == 401
