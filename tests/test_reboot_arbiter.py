"""Reboot arbitration: the pure decision (table-driven), the grants' life cycle in virtual time,
and the request/permit wire format."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from healer.clock import VirtualClock
from healer.config import MaintenanceWindow, RebootPolicy
from healer.health.tracker import HealthTracker
from healer.model import LABEL_POOL, EventKind, NodeEvent, Permit, RebootRequest
from healer.planner import reboots
from healer.planner.alert_blocks import AlertBlocks
from healer.planner.reboots import Decision, RebootArbiter, Situation, decide
from healer.sources.mqtt_payload import Rejection
from healer.sources.mqtt_reboot import (
    control_channel,
    parse_reboot_request,
    permit_payload,
)
from healer.store.sqlite import RUNNING, Store, WorkflowRecord
from tests.helpers import lab_like_config

# Wednesday 2023-11-15 12:00 UTC
NOON = dt.datetime(2023, 11, 15, 12, 0, tzinfo=dt.UTC).timestamp()
OK = Situation(cluster="lab", node="w-1", pool="workers", known=True, now=NOON)
ANY_TIME = RebootPolicy()
NIGHTS = RebootPolicy(windows=(MaintenanceWindow(start="22:00", end="04:00"),))


@pytest.mark.parametrize(
    ("situation", "policy", "reason", "retry"),
    [
        (OK, ANY_TIME, reboots.GRANTED, None),
        (replace(OK, known=False), ANY_TIME, reboots.UNKNOWN_NODE, 300.0),
        (replace(OK, frozen="503"), ANY_TIME, reboots.API_UNREACHABLE, 60.0),
        (replace(OK, synced=False), ANY_TIME, reboots.NOT_SYNCED, 30.0),
        (replace(OK, breaker="TooManyFailures"), ANY_TIME, reboots.BREAKER_OPEN, 300.0),
        (
            replace(OK, bad_upgrade="TooManyRebootFailures: 2 nodes"),
            ANY_TIME,
            reboots.BAD_UPGRADE_BREAKER_OPEN,
            600.0,
        ),
        (
            replace(OK, breaker="TooManyFailures", bad_upgrade="TooManyRebootFailures"),
            ANY_TIME,
            reboots.BREAKER_OPEN,
            300.0,
        ),
        (replace(OK, paused="global"), ANY_TIME, reboots.PAUSED, 300.0),
        (replace(OK, blocking_alerts=("KubeAPIDown",)), ANY_TIME, reboots.BLOCKED_BY_ALERT, 120.0),
        (OK, NIGHTS, reboots.OUTSIDE_WINDOW, 10 * 3600.0),  # opens at 22:00: capped at 1 h
        (replace(OK, now=NOON + 11 * 3600), NIGHTS, reboots.GRANTED, None),  # 23:00
        (replace(OK, now=NOON + 21.5 * 3600), NIGHTS, reboots.OUTSIDE_WINDOW, 12.5 * 3600),
        (replace(OK, now=NOON + 9.75 * 3600), NIGHTS, reboots.OUTSIDE_WINDOW, 900.0),  # 21:45
        (replace(OK, remediating_in_pool=("w-2",)), ANY_TIME, reboots.REMEDIATION_IN_FLIGHT, 60.0),
        (replace(OK, busy_in_pool=("w-3",)), ANY_TIME, reboots.POOL_BUSY, 60.0),
        # order: the first check that refuses answers
        (replace(OK, frozen="x", breaker="y", paused="z"), ANY_TIME, reboots.API_UNREACHABLE, None),
        (
            replace(OK, blocking_alerts=("A",), busy_in_pool=("w-3",)),
            NIGHTS,
            reboots.BLOCKED_BY_ALERT,
            None,
        ),
        (
            replace(OK, remediating_in_pool=("w-2",), busy_in_pool=("w-3",)),
            ANY_TIME,
            reboots.REMEDIATION_IN_FLIGHT,
            None,
        ),
    ],
)
def test_decide(
    situation: Situation, policy: RebootPolicy, reason: str, retry: float | None
) -> None:
    decision = decide(situation, policy)
    assert decision.reason == reason
    assert decision.granted is (reason == reboots.GRANTED)
    if decision.granted:
        assert decision.expires_at == situation.now + policy.permit_ttl
    elif retry is not None:
        assert decision.retry_after == min(retry, reboots.MAX_RETRY_AFTER)
    assert situation.node in decision.message or situation.cluster in decision.message


def test_every_reason_is_documented() -> None:
    assert reboots.__doc__ is not None
    for reason in (*reboots.RETRY_AFTER, reboots.OUTSIDE_WINDOW, reboots.GRANTED):
        assert f"``{reason}``" in reboots.__doc__


# -- the arbiter in virtual time -----------------------------------------------------------------


@dataclass
class Arb:
    clock: VirtualClock
    store: Store
    tracker: HealthTracker
    arbiter: RebootArbiter
    answers: list[tuple[str, Permit]]
    blocks: AlertBlocks

    async def ask(self, node: str, request_id: str = "r1") -> Decision:
        return await self.arbiter.on_request(
            RebootRequest("lab", node, request_id, self.clock.now())
        )

    async def event(self, node: str, kind: EventKind) -> None:
        event = NodeEvent("lab", node, kind, self.clock.now(), "mqtt")
        await self.tracker.handle(event)
        await self.arbiter.observe(event)

    def rebuild(self) -> RebootArbiter:
        return RebootArbiter(
            config=self.tracker._config,
            store=self.store,
            clock=self.clock,
            tracker=self.tracker,
            publish=_noop,
        )


async def _noop(cluster: str, node: str, permit: Permit) -> None:
    pass


@pytest.fixture
async def arb(tmp_path: Path) -> AsyncIterator[Arb]:
    config = lab_like_config(reboots={"permitTtl": "10m"})
    clock = VirtualClock(start=NOON)
    store = Store.open(tmp_path)
    tracker = HealthTracker(config=config, store=store, clock=clock)
    # The first list, folded whole: the arbiter grants nothing before the SYNCED marker.
    await tracker.handle(NodeEvent("lab", "", EventKind.LIST_STARTED, clock.now(), "kube"))
    for node, pool in (("w-1", "workers"), ("w-2", "workers"), ("c-1", "control-plane")):
        await tracker.handle(
            NodeEvent(
                "lab", node, EventKind.NODE_ADDED, clock.now(), "kube", labels={LABEL_POOL: pool}
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
    answers: list[tuple[str, Permit]] = []

    async def publish(cluster: str, node: str, permit: Permit) -> None:
        answers.append((node, permit))

    blocks = AlertBlocks()
    arbiter = RebootArbiter(
        config=config, store=store, clock=clock, tracker=tracker, publish=publish, blocks=blocks
    )
    yield Arb(clock, store, tracker, arbiter, answers, blocks)
    store.close()


async def test_one_reboot_per_pool_other_pools_independent(arb: Arb) -> None:
    assert (await arb.ask("w-1")).granted
    second = await arb.ask("w-2")
    assert (second.granted, second.reason) == (False, reboots.POOL_BUSY)
    assert (await arb.ask("c-1")).granted  # another pool
    assert [(n, p.granted, p.id) for n, p in arb.answers] == [
        ("w-1", True, "r1"),
        ("w-2", False, "r1"),
        ("c-1", True, "r1"),
    ]


async def test_asking_again_while_holding_a_grant_gets_it_back(arb: Arb) -> None:
    first = await arb.ask("w-1", "a")
    await arb.clock.advance(60)
    again = await arb.ask("w-1", "b")
    assert again.granted and again.expires_at == first.expires_at
    assert arb.answers[-1][1].id == "b"
    assert len(arb.store.audit_log(event="reboot.granted")) == 1


async def test_an_unused_grant_lapses(arb: Arb) -> None:
    await arb.ask("w-1")
    await arb.clock.advance(599)
    assert not (await arb.ask("w-2")).granted
    await arb.clock.advance(1)
    assert (await arb.ask("w-2")).granted
    released = arb.store.audit_log(event="reboot.released")
    assert [(e.node, e.reason) for e in released] == [("w-1", "Expired")]


async def test_a_started_reboot_holds_the_pool_until_booted_or_its_timeout(arb: Arb) -> None:
    await arb.ask("w-1")
    await arb.event("w-1", EventKind.REBOOT_STARTED)
    await arb.clock.advance(11)  # rebootTimeout in lab_like_config is 12s
    assert (await arb.ask("w-2")).reason == reboots.POOL_BUSY
    await arb.event("w-1", EventKind.BOOTED)
    assert (await arb.ask("w-2", "r2")).granted
    await arb.event("w-2", EventKind.REBOOT_STARTED)
    await arb.clock.advance(12)
    # Never came back: the grant goes (the verdict, RebootTimeout, takes over from here).
    assert arb.arbiter.grants() == []
    assert arb.store.audit_log(event="reboot.released")[-1].reason == "RebootTimeout"


async def test_a_rebooting_node_makes_the_pool_busy_even_without_a_grant(arb: Arb) -> None:
    await arb.tracker.handle(
        NodeEvent("lab", "w-2", EventKind.REBOOT_STARTED, arb.clock.now(), "kube")
    )
    assert (await arb.ask("w-1")).reason == reboots.POOL_BUSY


async def test_stop_switches_come_from_the_store_and_the_alerts(arb: Arb) -> None:
    arb.store.open_breaker("lab", "TooManyFailures: 3", arb.clock.now())
    assert (await arb.ask("w-1")).reason == reboots.BREAKER_OPEN
    arb.store.reset_breaker("lab")
    arb.store.set_paused("pool:lab/workers", True, at=arb.clock.now())
    assert (await arb.ask("w-1")).reason == reboots.PAUSED
    assert (await arb.ask("c-1")).granted  # the pause is the workers pool's only
    arb.store.set_paused("pool:lab/workers", False, at=arb.clock.now())
    arb.blocks.fire(
        cluster="lab", alert="KubeAPIDown", fingerprint="x", since=0, now=arb.clock.now(), ttl=60
    )
    assert (await arb.ask("w-1")).reason == reboots.BLOCKED_BY_ALERT
    arb.blocks.resolve(cluster="lab", alert="KubeAPIDown", fingerprint="x", now=arb.clock.now())
    arb.store.create_workflow(
        WorkflowRecord(
            id="wf1",
            cluster="lab",
            pool="workers",
            node="w-2",
            role="worker",
            state=RUNNING,  # type: ignore[arg-type]
            step="drain",
            reason="ReadyUnknownTimeout",
            evidence={},
            replacement_name="lab-workers-x",
            started_at=arb.clock.now(),
            updated_at=arb.clock.now(),
        )
    )
    assert (await arb.ask("w-1")).reason == reboots.REMEDIATION_IN_FLIGHT
    assert (await arb.ask("stranger")).reason == reboots.UNKNOWN_NODE


async def test_refusals_are_audited_once_per_reason(arb: Arb) -> None:
    await arb.ask("w-1")
    for i in range(5):
        await arb.ask("w-2", f"r{i}")
    assert len(arb.store.audit_log(event="reboot.refused")) == 1


async def test_a_restarted_daemon_remembers_outstanding_grants(arb: Arb) -> None:
    await arb.ask("w-1")
    await arb.event("w-1", EventKind.REBOOT_STARTED)
    await arb.ask("c-1")
    await arb.event("c-1", EventKind.REBOOT_STARTED)
    await arb.event("c-1", EventKind.BOOTED)
    restored = arb.rebuild()
    assert [(g.node, g.started_at is not None) for g in restored.grants()] == [("w-1", True)]
    decision = await restored.on_request(RebootRequest("lab", "w-2", "x", arb.clock.now()))
    assert decision.reason == reboots.POOL_BUSY


async def test_a_failed_answer_is_logged_not_raised(arb: Arb) -> None:
    async def broken(cluster: str, node: str, permit: Permit) -> None:
        raise OSError("not connected")

    arb.arbiter._publish = broken
    assert (await arb.ask("w-1")).granted  # the grant stands; the agent will ask again


# -- the wire format ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        ("healer/v1/lab/w-1/reboot-request", b'{"v": 1, "id": "abc-1", "reason": "kernel"}', "ok"),
        ("healer/v1/lab/w-1/reboot-request", b'{"v": 1, "id": "abc", "ts": 100}', "ok"),
        ("healer/v1/lab/w-1/reboot-request", b'{"v": 1}', "bad_schema"),
        ("healer/v1/lab/w-1/reboot-request", b'{"v": 1, "id": "a b"}', "bad_schema"),
        ("healer/v1/lab/w-1/reboot-request", b'{"v": 1, "id": "x", "reason": 5}', "bad_schema"),
        ("healer/v1/lab/w-1/reboot-request", b'{"v": 2, "id": "x"}', "unsupported_version"),
        ("healer/v1/lab/w-1/reboot-request", b"nope", "bad_json"),
        ("healer/v1/other/w-1/reboot-request", b'{"v": 1, "id": "x"}', "unknown_cluster"),
        ("healer/v1/lab/W_1/reboot-request", b'{"v": 1, "id": "x"}', "bad_topic"),
        ("healer/v1/lab/w-1/heartbeat", b'{"v": 1, "id": "x"}', "bad_topic"),
    ],
)
def test_parse_reboot_request(topic: str, payload: bytes, expected: str) -> None:
    result = parse_reboot_request(
        topic, payload, prefix="healer/v1/", now=1000.0, max_payload=512, known_clusters={"lab"}
    )
    if expected == "ok":
        assert isinstance(result, RebootRequest) and (result.cluster, result.node) == ("lab", "w-1")
    else:
        assert isinstance(result, Rejection) and result.reason == expected


def test_control_channel_and_permit_payload() -> None:
    assert control_channel("healer/v1/lab/w-1/reboot-permit", "healer/v1") == "reboot-permit"
    assert control_channel("healer/v1/lab/w-1/heartbeat", "healer/v1") is None
    assert control_channel("other/lab/w-1/reboot-request", "healer/v1") is None
    granted = json.loads(
        permit_payload(Permit("a", True, "Granted", "ok", expires_at=1600.0), now=1000.0)
    )
    assert granted == {
        "v": 1,
        "id": "a",
        "granted": True,
        "reason": "Granted",
        "message": "ok",
        "ts": 1000.0,
        "expiresAt": 1600.0,
    }
    denied = json.loads(
        permit_payload(Permit("a", False, "PoolBusy", "busy", retry_after=60.0), now=1000.0)
    )
    assert denied["retryAfter"] == 60.0 and "expiresAt" not in denied


async def test_no_grant_before_the_node_list_is_read_whole(arb: Arb) -> None:
    """A re-list (or a restart) opens the barrier again: the peers the arbiter must count are
    not all known until SYNCED, so it refuses rather than grant on a partial view."""
    await arb.tracker.handle(NodeEvent("lab", "", EventKind.LIST_STARTED, arb.clock.now(), "kube"))
    refused = await arb.ask("w-1")
    assert (refused.granted, refused.reason) == (False, reboots.NOT_SYNCED)
    await arb.tracker.handle(NodeEvent("lab", "", EventKind.SYNCED, arb.clock.now(), "kube"))
    granted = await arb.ask("w-1", "r2")
    assert (granted.granted, granted.reason) == (True, reboots.GRANTED)
