"""Lab scenarios for signal provenance: a condition only its owner may set.

``forged-ready``: the MQTT messages that once replaced a healthy node (``Ready=False``) and hid a
dead one (``Ready=True``) are published on healthy nodes' topics with the agents' credentials.
Only the Kubernetes API owns ``Ready``, so both must be rejected (``condition_not_owned``,
counted in ``healer_events_rejected_total``) and nothing may be remediated.

``forged-ready-crash``: a node really crashes and someone keeps publishing ``Ready=True`` for it
over MQTT; the dead node must be replaced anyway.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from healer.config import Corroboration, HealerConfig
from healer.config.provenance import CONDITION_NOT_OWNED
from healer.lab.report import remediations
from healer.lab.scenario_kit import SETTLE_TIMEOUT, TARGET_POOL, Context, Scenario, replaced, until
from healer.model import Health, NodeKey
from healer.telemetry.metrics import REGISTRY

log = structlog.get_logger("healer.lab")

FORGED_FALSE = {"condition": "Ready", "status": "False", "reason": "Forged"}
FORGED_TRUE = {"condition": "Ready", "status": "True", "reason": "Forged"}
MARGIN = 3.0  # seconds watched past the longest condition timeout


def rejected_not_owned() -> float:
    """``healer_events_rejected_total{source="mqtt",reason="condition_not_owned"}`` now."""
    value = REGISTRY.get_sample_value(
        "healer_events_rejected_total", {"source": "mqtt", "reason": CONDITION_NOT_OWNED}
    )
    return value or 0.0


def _longest_timeout(ctx: Context) -> float:
    health = ctx.cluster.health_for(TARGET_POOL)
    return max((c.timeout for c in health.unhealthy_conditions), default=0.0)


def _node_view(ctx: Context, node: str) -> dict[str, Any]:
    """What the running daemon believes about ``node``: its Ready condition (with the source
    that set it) and its verdict."""
    daemon = ctx.daemon
    tracker = getattr(daemon, "tracker", None) if daemon is not None else None
    if tracker is None:
        return {}
    key = NodeKey(ctx.cluster.name, node)
    obs = tracker.observation(key)
    verdict = tracker.verdict(key)
    ready = obs.conditions.get("Ready") if obs is not None else None
    return {
        "ready": ready.status if ready else None,
        "ready_source": ready.source if ready else None,
        "health": str(verdict.health) if verdict else None,
        "reason": verdict.reason if verdict else None,
    }


async def scenario_forged_ready(ctx: Context) -> dict[str, Any]:
    pool = ctx.harness.pool_nodes(TARGET_POOL)
    target, other = pool[0], pool[1]
    before = rejected_not_owned()
    injected_at = time.time()
    injected = [
        {"node": target, "failure": "mqtt health Ready=False (forged)", "at": injected_at},
        {"node": other, "failure": "mqtt health Ready=True (forged)", "at": injected_at},
    ]
    log.info("lab.injected", node=target, failure="forged Ready=False over MQTT")
    await ctx.harness.publish_as_agent(target, "health", FORGED_FALSE)
    log.info("lab.injected", node=other, failure="forged Ready=True over MQTT")
    await ctx.harness.publish_as_agent(other, "health", FORGED_TRUE)

    async def both_rejected() -> bool:
        return rejected_not_owned() - before >= len(injected)

    await until(both_rejected, timeout=15.0, what="forged messages rejected")
    # Watch past every condition timeout: an accepted Ready=False would have fired by then.
    await asyncio.sleep(_longest_timeout(ctx) + ctx.harness.node_monitor.grace + MARGIN)
    rejected = rejected_not_owned() - before
    rems = remediations(ctx.store, ctx.cluster.name, injected_at)
    views = {node: _node_view(ctx, node) for node in (target, other)}
    ready = await ctx.harness.ready_nodes()
    return {
        "injected": injected,
        "remediations": rems,
        "rejected_condition_not_owned": rejected,
        "daemon_view": views,
        "expectations": {
            "no_remediation": not rems,
            "forged_messages_rejected": rejected >= len(injected),
            "ready_still_from_kube": all(
                v.get("ready") == "True" and v.get("ready_source") == "kube" for v in views.values()
            ),
            "targets_healthy": all(v.get("health") == Health.HEALTHY for v in views.values()),
            "targets_still_ready": {target, other} <= ready,
        },
        "since": injected_at,
    }


async def scenario_forged_ready_crash(ctx: Context) -> dict[str, Any]:
    target = ctx.harness.pool_nodes(TARGET_POOL)[0]
    before = rejected_not_owned()
    injected_at = time.time()
    log.info("lab.injected", node=target, failure="crash, then forged Ready=True over MQTT")
    ctx.harness.crash(target)
    stop = asyncio.Event()

    async def keep_forging() -> None:
        # The crashed machine's agent is silent; someone else keeps saying "Ready".
        while not stop.is_set():
            await ctx.harness.publish_as_agent(target, "health", FORGED_TRUE)
            await asyncio.sleep(0.5)

    forger = asyncio.create_task(keep_forging(), name="lab-forger")
    try:
        await until(
            lambda: replaced(ctx, target), timeout=SETTLE_TIMEOUT, what=f"{target} replaced"
        )
    finally:
        stop.set()
        await forger
    rejected = rejected_not_owned() - before
    rems = [
        r for r in remediations(ctx.store, ctx.cluster.name, injected_at) if r["node"] == target
    ]
    return {
        "injected": [{"node": target, "failure": "crash + forged Ready=True", "at": injected_at}],
        "remediations": rems,
        "rejected_condition_not_owned": rejected,
        "expectations": {
            "forged_messages_rejected": rejected >= 1,
            "dead_node_replaced_once": len(rems) == 1,
            "succeeded": bool(rems) and rems[-1]["result"] == "succeeded",
        },
        "since": injected_at,
    }


# The rule the `corroborate` scenario switches on (as a SIGHUP reload would).
CORROBORATE = {"when": {"type": "Ready", "status": "Unknown"}, "require": "agentHeartbeatMissing"}


def _with_corroboration(config: HealerConfig, cluster: str) -> HealerConfig:
    rule = Corroboration.model_validate(CORROBORATE)
    clusters = tuple(
        c.model_copy(update={"health": c.health.model_copy(update={"corroborate": (rule,)})})
        if c.name == cluster
        else c
        for c in config.clusters
    )
    return config.model_copy(update={"clusters": clusters})


async def scenario_corroborate(ctx: Context) -> dict[str, Any]:
    """The API loses a worker (its kubelet is cut off: Ready=Unknown) while its agent keeps
    sending heartbeats: one signal, no remediation (``Uncorroborated``). Then the agent falls
    silent too: both signals agree, and the node is replaced with both in the audit log."""
    daemon = ctx.daemon
    assert daemon is not None, "the corroborate scenario needs the running daemon"
    original = daemon.config
    daemon.reconfigure(_with_corroboration(original, ctx.cluster.name))
    mqtt = daemon.config.mqtt
    assert mqtt is not None, "the corroborate scenario needs the lab's MQTT broker"
    window = mqtt.heartbeat_interval * mqtt.heartbeat_miss_after
    target = ctx.harness.pool_nodes(TARGET_POOL)[0]
    key = NodeKey(ctx.cluster.name, target)
    injected_at = time.time()
    log.info("lab.injected", node=target, failure="kubelet cut off, agent still heartbeating")
    ctx.harness.partition([target])
    agent_alive = asyncio.Event()
    agent_alive.set()

    async def agent() -> None:
        # The node's agent still reaches the broker: it is the API that lost the kubelet.
        while agent_alive.is_set():
            await ctx.harness.publish_as_agent(target, "heartbeat", {})
            await asyncio.sleep(min(0.5, mqtt.heartbeat_interval / 2))

    beating = asyncio.create_task(agent(), name="lab-agent")
    try:
        horizon = _longest_timeout(ctx) + ctx.harness.node_monitor.grace + MARGIN
        await asyncio.sleep(horizon)
        held = daemon.tracker.verdict(key) if daemon.tracker is not None else None
        rems_while_held = remediations(ctx.store, ctx.cluster.name, injected_at)
    finally:
        agent_alive.clear()
        await beating
    silent_at = time.time()
    log.info("lab.injected", node=target, failure="agent falls silent too")
    try:
        await until(
            lambda: replaced(ctx, target), timeout=SETTLE_TIMEOUT, what=f"{target} replaced"
        )
    finally:
        if ctx.daemon is not None:
            ctx.daemon.reconfigure(original)
    rems = [
        r for r in remediations(ctx.store, ctx.cluster.name, injected_at) if r["node"] == target
    ]
    unhealthy = ctx.store.audit_log(cluster=ctx.cluster.name, node=target, event="node.unhealthy")
    started = ctx.store.audit_log(
        cluster=ctx.cluster.name, node=target, event="remediation.started"
    )
    signals = started[-1].evidence.get("signals", []) if started else []
    return {
        "injected": [
            {"node": target, "failure": "kubelet cut off, agent alive", "at": injected_at},
            {"node": target, "failure": "agent silent", "at": silent_at},
        ],
        "held_verdict": {"health": str(held.health), "reason": held.reason, "message": held.message}
        if held
        else None,
        "heartbeat_window_s": window,
        "remediations": rems,
        "unhealthy_message": unhealthy[-1].message if unhealthy else None,
        "started_signals": signals,
        "expectations": {
            "held_while_agent_alive": held is not None
            and held.health is Health.PENDING
            and held.reason == "Uncorroborated",
            "no_remediation_on_one_signal": not rems_while_held,
            "replaced_once_both_agree": len(rems) == 1,
            "succeeded": bool(rems) and rems[-1]["result"] == "succeeded",
            "started_after_agent_silent": bool(rems) and rems[0]["started_at"] >= silent_at,
            "audit_shows_both_signals": [s.get("condition") for s in signals]
            == ["Ready=Unknown", "HeartbeatMissing=True"]
            and bool(unhealthy)
            and len(unhealthy[-1].evidence.get("signals", [])) == 2,
        },
        "since": injected_at,
    }


SCENARIOS_PROVENANCE: dict[str, Scenario] = {
    "forged-ready": scenario_forged_ready,
    "forged-ready-crash": scenario_forged_ready_crash,
    "corroborate": scenario_corroborate,
}
