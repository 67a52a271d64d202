"""Corroboration: a destructive verdict that needs two independent signals (table-driven)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from healer.config import (
    Corroboration,
    EffectiveHealth,
    HealerConfig,
    UnhealthyCondition,
    parse_config,
)
from healer.errors import ConfigError
from healer.health.verdict import evaluate
from healer.model import ConditionObs, EventKind, Health, NodeEvent, NodeKey, NodeObservation

T0 = 10_000.0
HB = "HeartbeatMissing"


def policy(*rules: dict[str, Any]) -> EffectiveHealth:
    return EffectiveHealth(
        unhealthy_conditions=(
            UnhealthyCondition(type="Ready", status="False", timeout=300),
            UnhealthyCondition(type="Ready", status="Unknown", timeout=300),
            UnhealthyCondition(type="NodeDiskFailing", status="True", timeout=60),
        ),
        node_startup_timeout=600,
        reboot_timeout=900,
        corroborate=tuple(Corroboration.model_validate(r) for r in rules),
    )


UNKNOWN_NEEDS_HB = policy(
    {"when": {"type": "Ready", "status": "Unknown"}, "require": "agentHeartbeatMissing"}
)
UNKNOWN_NEEDS_HB_OR_ACT = policy(
    {
        "when": {"type": "Ready", "status": "Unknown"},
        "require": "agentHeartbeatMissing",
        "withoutSignal": "act",
    }
)
PLAIN = policy()


def node(
    *, last_heartbeat: float | None = None, **conditions: tuple[str, float, str]
) -> NodeObservation:
    return NodeObservation(
        cluster="lab",
        node="w-1",
        pool="workers",
        ever_ready=True,
        last_heartbeat=last_heartbeat,
        conditions={
            k: ConditionObs(status=s, since=since, source=src)
            for k, (s, since, src) in conditions.items()
        },
    )


@dataclass(frozen=True)
class Case:
    id: str
    obs: NodeObservation
    now: float
    policy: EffectiveHealth
    health: Health
    reason: str
    next_check_at: float | None
    signals: tuple[str, ...] = ()  # "Ready=Unknown@kube", ... in order
    message: tuple[str, ...] = ()  # fragments the message must contain


READY_UNKNOWN = ("Unknown", T0, "kube")
HB_MISSING = ("True", T0 + 90, "mqtt")
HB_PRESENT = ("False", T0 - 500, "mqtt")

CASES = [
    Case(
        "without a rule one signal is enough",
        node(Ready=READY_UNKNOWN, HeartbeatMissing=HB_PRESENT),
        T0 + 300,
        PLAIN,
        Health.UNHEALTHY,
        "ReadyUnknownTimeout",
        None,
        signals=("Ready=Unknown@kube",),
    ),
    Case(
        "before the timeout the rule does not matter",
        node(Ready=READY_UNKNOWN, HeartbeatMissing=HB_PRESENT),
        T0 + 100,
        UNKNOWN_NEEDS_HB,
        Health.PENDING,
        "ReadyUnknown",
        T0 + 300,
    ),
    Case(
        "past the timeout, agent still heartbeating: uncorroborated, not unhealthy",
        node(Ready=READY_UNKNOWN, HeartbeatMissing=HB_PRESENT, last_heartbeat=T0 + 395),
        T0 + 400,
        UNKNOWN_NEEDS_HB,
        Health.PENDING,
        "Uncorroborated",
        None,  # only an event (of either signal) can change it
        signals=("Ready=Unknown@kube", "HeartbeatMissing=False@mqtt"),
        message=(
            "Ready=Unknown for 400s (limit 300s) but not corroborated",
            "HeartbeatMissing=False for 900s, last agent heartbeat 5s ago",
            "needs HeartbeatMissing=True",
        ),
    ),
    Case(
        "both signals agree: unhealthy, both in the message with their times",
        node(Ready=READY_UNKNOWN, HeartbeatMissing=HB_MISSING, last_heartbeat=T0),
        T0 + 400,
        UNKNOWN_NEEDS_HB,
        Health.UNHEALTHY,
        "ReadyUnknownTimeout",
        None,
        signals=("Ready=Unknown@kube", "HeartbeatMissing=True@mqtt"),
        message=(
            "Ready=Unknown for 400s (limit 300s), corroborated: HeartbeatMissing=True for 310s",
            "last agent heartbeat 400s ago",
        ),
    ),
    Case(
        "the second signal alone is nothing",
        node(Ready=("True", T0, "kube"), HeartbeatMissing=HB_MISSING),
        T0 + 400,
        UNKNOWN_NEEDS_HB,
        Health.HEALTHY,
        "Healthy",
        None,
    ),
    Case(
        "no agent ever heard: hold by default",
        node(Ready=READY_UNKNOWN),
        T0 + 400,
        UNKNOWN_NEEDS_HB,
        Health.PENDING,
        "Uncorroborated",
        None,
        signals=("Ready=Unknown@kube",),
        message=("the node has never reported HeartbeatMissing",),
    ),
    Case(
        "no agent ever heard, withoutSignal: act",
        node(Ready=READY_UNKNOWN),
        T0 + 400,
        UNKNOWN_NEEDS_HB_OR_ACT,
        Health.UNHEALTHY,
        "ReadyUnknownTimeout",
        None,
        signals=("Ready=Unknown@kube",),
    ),
    Case(
        "withoutSignal: act still holds while the agent is heard",
        node(Ready=READY_UNKNOWN, HeartbeatMissing=HB_PRESENT),
        T0 + 400,
        UNKNOWN_NEEDS_HB_OR_ACT,
        Health.PENDING,
        "Uncorroborated",
        None,
    ),
    Case(
        "the rule guards only its condition: Ready=False alone still acts",
        node(Ready=("False", T0, "kube"), HeartbeatMissing=HB_PRESENT),
        T0 + 300,
        UNKNOWN_NEEDS_HB,
        Health.UNHEALTHY,
        "ReadyFalseTimeout",
        None,
    ),
    Case(
        "an unguarded expired condition wins over a held one",
        node(
            Ready=READY_UNKNOWN,
            HeartbeatMissing=HB_PRESENT,
            NodeDiskFailing=("True", T0 + 200, "webhook"),
        ),
        T0 + 400,
        UNKNOWN_NEEDS_HB,
        Health.UNHEALTHY,
        "NodeDiskFailingTrueTimeout",
        None,
        signals=("NodeDiskFailing=True@webhook",),
    ),
    Case(
        "held, with another condition still pending: check again at its deadline",
        node(
            Ready=READY_UNKNOWN,
            HeartbeatMissing=HB_PRESENT,
            NodeDiskFailing=("True", T0 + 380, "webhook"),
        ),
        T0 + 400,
        UNKNOWN_NEEDS_HB,
        Health.PENDING,
        "Uncorroborated",
        T0 + 440,
    ),
    Case(
        "a corroborating condition of another source, not a named signal",
        node(Ready=READY_UNKNOWN, NodeDiskFailing=("True", T0 + 350, "webhook")),
        T0 + 400,
        policy(
            {
                "when": {"type": "Ready", "status": "Unknown"},
                "require": {"type": "NodeDiskFailing", "status": True},
            }
        ),
        Health.UNHEALTHY,
        "ReadyUnknownTimeout",
        None,
        signals=("Ready=Unknown@kube", "NodeDiskFailing=True@webhook"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_corroboration(case: Case) -> None:
    verdict = evaluate(case.obs, case.policy, case.now)
    assert (verdict.health, verdict.reason, verdict.next_check_at) == (
        case.health,
        case.reason,
        case.next_check_at,
    ), verdict.message
    if case.signals:
        assert tuple(f"{s['condition']}@{s['source']}" for s in verdict.signals) == case.signals
        for signal in verdict.signals:
            assert signal["for"] == case.now - signal["since"]
    for fragment in case.message:
        assert fragment in verdict.message


def test_the_verdict_is_pure() -> None:
    obs = node(Ready=READY_UNKNOWN, HeartbeatMissing=HB_MISSING)
    assert evaluate(obs, UNKNOWN_NEEDS_HB, T0 + 400) == evaluate(obs, UNKNOWN_NEEDS_HB, T0 + 400)


# -- configuration -----------------------------------------------------------------------------


def config(
    health: dict[str, Any],
    *,
    pool_health: dict[str, Any] | None = None,
    mqtt: dict[str, Any] | None = None,
) -> HealerConfig:
    pool: dict[str, Any] = {"name": "workers", "size": 3}
    if pool_health is not None:
        pool["health"] = pool_health
    cluster = {"name": "lab", "provider": {"plugin": "lab"}, "health": health, "pools": [pool]}
    top: dict[str, Any] = {"clusters": [cluster]}
    if mqtt is not None:
        top["mqtt"] = mqtt
    return parse_config(top)


RULE = {"when": {"type": "Ready", "status": "Unknown"}, "require": "agentHeartbeatMissing"}


def test_corroborate_reads_as_written_and_pools_inherit_it() -> None:
    cfg = config({"corroborate": [RULE]}, mqtt={})
    cluster = cfg.clusters[0]
    (rule,) = cluster.health_for("workers").corroborate
    assert (str(rule.when), str(rule.require), rule.without_signal) == (
        "Ready=Unknown",
        "HeartbeatMissing=True",
        "hold",
    )
    assert cluster.health_for(None).corroborate == (rule,)
    # A pool can turn it off with an empty list.
    cfg = config({"corroborate": [RULE]}, pool_health={"corroborate": []}, mqtt={})
    assert cfg.clusters[0].health_for("workers").corroborate == ()


CONFIG_ERRORS = [
    (
        {"corroborate": [{**RULE, "require": "heartbeat"}]},
        "unknown signal 'heartbeat'; use one of agentHeartbeatMissing",
    ),
    (
        {"corroborate": [{**RULE, "require": {"type": "Ready", "status": "False"}}]},
        "corroboration needs a second, independent signal",
    ),
    (
        {"corroborate": [{**RULE, "require": {"type": "KernelDeadlock", "status": "True"}}]},
        "KernelDeadlock and Ready both come from the kube source",
    ),
    (
        {"corroborate": [RULE, RULE]},
        "one corroborate rule per condition; repeated: Ready=Unknown",
    ),
    (
        {"corroborate": [{**RULE, "when": {"type": "Ready", "status": "True"}}]},
        "when Ready=True is not one of its unhealthyConditions",
    ),
    ({"corroborate": [{**RULE, "withoutSignal": "maybe"}]}, "withoutSignal"),
    ({"corroborate": [{"when": {"type": "Ready", "status": "Unknown"}}]}, "require"),
]


@pytest.mark.parametrize(("health", "error"), CONFIG_ERRORS)
def test_corroborate_config_errors(health: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config(health, mqtt={})
    assert error in str(raised.value)
    assert "corroborate" in str(raised.value)


def test_a_pool_rule_must_guard_a_condition_of_that_pool() -> None:
    pool_health = {
        "unhealthyConditions": [{"type": "Ready", "status": "False", "timeout": "1m"}],
        "corroborate": [RULE],
    }
    with pytest.raises(ConfigError, match="pool 'workers'"):
        config({}, pool_health=pool_health, mqtt={})
    # Inherited from the cluster, a rule for a condition the pool does not use is harmless.
    cfg = config(
        {"corroborate": [RULE]},
        pool_health={
            "unhealthyConditions": [{"type": "Ready", "status": "False", "timeout": "1m"}]
        },
        mqtt={},
    )
    assert cfg.clusters[0].health_for("workers").corroborate


@pytest.mark.parametrize(
    "mqtt", [None, {"sharedGroup": "healers"}], ids=["no mqtt", "shared subscription"]
)
def test_the_heartbeat_signal_needs_the_heartbeat_watcher(mqtt: dict[str, Any] | None) -> None:
    with pytest.raises(ConfigError, match="needs the mqtt source without sharedGroup"):
        config({"corroborate": [RULE]}, mqtt=mqtt)


# -- end to end in virtual time: kube + agent heartbeats -> tracker -> planner -> audit ----------


def lab_with_mqtt(**overrides: Any) -> HealerConfig:
    """tests.helpers.lab_like_config, with the mqtt source configured."""
    cluster: dict[str, Any] = {
        "name": "lab",
        "provider": {"plugin": "lab"},
        "remediation": {"retry": {"attempts": 3, "initialDelay": 0.1, "maxDelay": 0.2}},
        "pools": [
            {"name": "control-plane", "role": "control-plane", "size": 3},
            {"name": "workers", "size": 5},
        ],
        **overrides,
    }
    return parse_config({"mqtt": {}, "clusters": [cluster]})


async def test_ready_unknown_waits_for_the_agent_to_fall_silent_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from healer.sources.heartbeat import HeartbeatPolicy, HeartbeatWatcher
    from tests import test_planner
    from tests.test_planner import Rig

    health = {
        "unhealthyConditions": [{"type": "Ready", "status": "Unknown", "timeout": "5s"}],
        "corroborate": [RULE],
    }
    # The daemon's config has the mqtt source (the heartbeat watcher needs it).
    monkeypatch.setattr(test_planner, "lab_like_config", lab_with_mqtt)
    rig = Rig(tmp_path, health=health)
    watcher = HeartbeatWatcher(
        clock=rig.clock, emit=rig.tracker.handle, policy=HeartbeatPolicy(1.0, 3)
    )
    tasks = [
        asyncio.create_task(rig.tracker.run()),
        asyncio.create_task(watcher.run()),
    ]
    key = NodeKey("lab", "w-1")

    async def heartbeat() -> None:
        await watcher.observe(NodeEvent("lab", "w-1", EventKind.HEARTBEAT, rig.clock.now(), "mqtt"))

    try:
        await rig.cluster()
        await heartbeat()
        t0 = rig.clock.now()
        await rig.fail("w-1")  # the API says Unknown ...
        for _ in range(20):  # ... but the agent keeps talking for 20 s
            await rig.clock.advance(1.0)
            await heartbeat()
        verdict = rig.tracker.verdict(key)
        assert verdict is not None and verdict.health is Health.PENDING
        assert verdict.reason == "Uncorroborated"
        assert rig.started == []
        assert not rig.store.audit_log(event="node.unhealthy")

        # The agent falls silent: after 3 missed intervals both signals agree.
        silent_at = rig.clock.now()
        await rig.clock.advance(2.9)
        assert rig.started == []
        await rig.clock.advance(0.2)
        [wf] = rig.started
        assert wf.node == "w-1" and wf.reason == "ReadyUnknownTimeout"
        assert "corroborated: HeartbeatMissing=True" in wf.evidence["verdict"]
        signals = wf.evidence["signals"]
        assert [(s["condition"], s["source"]) for s in signals] == [
            ("Ready=Unknown", "kube"),
            ("HeartbeatMissing=True", "mqtt"),
        ]
        assert signals[0]["since"] == pytest.approx(t0)
        assert signals[1]["since"] == pytest.approx(silent_at + 3.0)
        [unhealthy] = rig.store.audit_log(event="node.unhealthy")
        assert [s["condition"] for s in unhealthy.evidence["signals"]] == [
            "Ready=Unknown",
            "HeartbeatMissing=True",
        ]
        [started] = rig.store.audit_log(event="remediation.started")
        assert started.evidence["signals"] == signals
        assert "HeartbeatMissing=True" in started.message
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        rig.store.close()
