"""Reboot arbitration: may this node's agent reboot it now? Healer arbitrates reboots and repairs
together: a reboot never starts while its pool is short of a machine, and a repair counts the
reboots under way against the same limits.

Owns the decision (:func:`decide`, pure, kured-style: a straight chain of small checks, the
first that refuses answers) and the grants handed out (:class:`RebootArbiter`). The MQTT
protocol is :mod:`healer.sources.mqtt_reboot`. The checks, in order:

``UnknownNode``          healer does not manage this node (not configured, or not seen yet)
``StateUnwritable``      healer cannot write its state database (a full disk, read-only): a
                         grant is recorded there, so none is given until it can
``ApiUnreachable``       the cluster's API is unreachable: healer's view is stale
``NotSynced``            the cluster's node list has not been read whole yet (first start, re-list)
``BreakerOpen``          the cluster's circuit breaker is open
``BadUpgradeBreakerOpen`` the cluster's bad-upgrade breaker is open: nodes did not come back
                         from planned reboots (``breaker.maxRebootFailures``); no more reboots
``Paused``               remediation is paused globally, for the cluster or for the pool
``BlockedByAlert``       a blocking alert is firing for the cluster (docs/webhook.md)
``OutsideWindow``        ``reboots.windows`` are configured and none is open now
``RemediationInFlight``  a node of the same pool is being replaced
``PoolBusy``             another node of the pool holds a grant or is rebooting
``PoolDegraded``         another node of the pool is unhealthy, pending or still starting
``DisruptionBudget``     with this node rebooting, its zone or its cluster would have more nodes
                         out of service than ``maxUnhealthyPerZone`` / ``maxUnhealthy`` allow
``Granted``              none of the above: the node may reboot until ``expiresAt``

Reboots and repairs are arbitrated together, in both directions, over one view of who is out of
service (:mod:`healer.planner.disruption`). Here, a reboot is granted only when every other node
of its pool is in service: not being remediated, not rebooting or holding a grant, and not
UNHEALTHY (it is about to be replaced), PENDING (it shows a bad condition now and may be replaced
in minutes: a partition starts this way) or STARTING (not serving yet). A reboot can wait; a
degraded pool cannot afford to lose one more machine, even for a minute. Over the pool, the zone
and cluster budgets stop reboots from piling onto trouble elsewhere (another pool's outage, a
zone going down); a lone reboot in an otherwise whole zone or cluster is always within them,
whatever the limit, so that small clusters still get their updates. In the other direction the
repair guards (:mod:`healer.planner.guards`) count rebooting nodes and the nodes holding a grant
(:meth:`RebootArbiter.granted_nodes`) against ``maxUnhealthy``: a repair may start while a peer
reboots only if the limit has room for both.

A grant lasts ``permitTtl``; once the agent announces the reboot (``reboot``/``started``) it is
held until the node reports ``booted`` (or is deleted), at most ``rebootTimeout`` after the
start: after that the health verdict (``RebootTimeout``) takes over. A node asking again while
it holds a grant gets the same grant back, so a lost answer is harmless. Grants, their start and
their release are written to the audit log, which is also where a restarted daemon finds the
grants still outstanding. A refusal is audited once per change of reason, not on every retry.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Final

import structlog

from healer.clock import Clock
from healer.config import HealerConfig, RebootPolicy
from healer.health.tracker import HealthTracker
from healer.model import EventKind, Health, NodeEvent, NodeKey, Permit, RebootRequest
from healer.planner.alert_blocks import AlertBlocks
from healer.planner.disruption import Budget, cluster_budget, zone_budget
from healer.planner.guards import node_status
from healer.planner.maintenance import next_change, reboots_allowed
from healer.store.recorder import Recorder
from healer.store.sqlite import BREAKER_BAD_UPGRADE, RUNNING, Store, pause_scope
from healer.store.writable import STATE_UNWRITABLE

log = structlog.get_logger("healer.planner.reboots")

GRANTED: Final = "Granted"
UNKNOWN_NODE: Final = "UnknownNode"
API_UNREACHABLE: Final = "ApiUnreachable"
NOT_SYNCED: Final = "NotSynced"
BREAKER_OPEN: Final = "BreakerOpen"
BAD_UPGRADE_BREAKER_OPEN: Final = "BadUpgradeBreakerOpen"
PAUSED: Final = "Paused"
BLOCKED_BY_ALERT: Final = "BlockedByAlert"
OUTSIDE_WINDOW: Final = "OutsideWindow"
REMEDIATION_IN_FLIGHT: Final = "RemediationInFlight"
POOL_BUSY: Final = "PoolBusy"
POOL_DEGRADED: Final = "PoolDegraded"
DISRUPTION_BUDGET: Final = "DisruptionBudget"

# How soon a refused agent should ask again, by reason. Short where the obstacle usually clears
# in minutes; an outside-window refusal says when the window opens instead.
RETRY_AFTER: Final = {
    UNKNOWN_NODE: 300.0,
    STATE_UNWRITABLE: 60.0,
    API_UNREACHABLE: 60.0,
    NOT_SYNCED: 30.0,
    BREAKER_OPEN: 300.0,
    BAD_UPGRADE_BREAKER_OPEN: 600.0,
    PAUSED: 300.0,
    BLOCKED_BY_ALERT: 120.0,
    REMEDIATION_IN_FLIGHT: 60.0,
    POOL_BUSY: 60.0,
    POOL_DEGRADED: 60.0,
    DISRUPTION_BUDGET: 60.0,
}
MAX_RETRY_AFTER: Final = 3600.0


@dataclass(frozen=True)
class Situation:
    """Everything the decision looks at, gathered by the arbiter at ``now``."""

    cluster: str
    node: str
    pool: str | None
    known: bool
    now: float
    frozen: str | None = None  # why the API is unreachable
    # why the state database takes no writes (a grant is kept there: none is given meanwhile)
    state_unwritable: str | None = None
    synced: bool = True  # the cluster's node list has been read whole (the informer barrier)
    breaker: str | None = None  # why the breaker is open
    bad_upgrade: str | None = None  # why the bad-upgrade breaker is open
    paused: str | None = None  # the widest pause scope that applies
    blocking_alerts: tuple[str, ...] = ()
    remediating_in_pool: tuple[str, ...] = ()
    busy_in_pool: tuple[str, ...] = ()  # other nodes holding a grant or rebooting
    degraded_in_pool: tuple[str, ...] = ()  # other nodes UNHEALTHY, PENDING or STARTING
    # the zone's and the cluster's budgets, this node counted as out of service
    budgets: tuple[Budget, ...] = ()


@dataclass(frozen=True)
class Decision:
    granted: bool
    reason: str
    message: str
    retry_after: float | None = None
    expires_at: float | None = None


def decide(s: Situation, policy: RebootPolicy) -> Decision:
    """The chain of checks in the module docstring; pure."""
    who = f"{s.cluster}/{s.node}"

    def deny(reason: str, why: str, retry: float | None = None) -> Decision:
        wait = retry if retry is not None else RETRY_AFTER[reason]
        return Decision(False, reason, f"not rebooting {who} now: {why}", wait)

    if not s.known:
        return deny(UNKNOWN_NODE, "healer does not manage this node")
    if s.state_unwritable is not None:
        return deny(
            STATE_UNWRITABLE,
            f"healer cannot write its state database ({s.state_unwritable}); no reboot is "
            "granted until it can",
        )
    if s.frozen is not None:
        return deny(API_UNREACHABLE, f"the API of {s.cluster} is unreachable ({s.frozen})")
    if not s.synced:
        # Before the list is in, the peers this decision must count are not all known yet.
        return deny(NOT_SYNCED, f"the node list of {s.cluster} has not been read whole yet")
    if s.breaker is not None:
        return deny(BREAKER_OPEN, f"the circuit breaker of {s.cluster} is open ({s.breaker})")
    if (blocked := bad_upgrade_blocker(s)) is not None:
        return deny(BAD_UPGRADE_BREAKER_OPEN, blocked)
    if s.paused is not None:
        return deny(PAUSED, f"healer is paused ({s.paused}); no reboots")
    if s.blocking_alerts:
        return deny(
            BLOCKED_BY_ALERT,
            f"blocking alert(s) {', '.join(s.blocking_alerts)} firing for {s.cluster}",
        )
    if not reboots_allowed(s.now, policy.windows):
        opens = next_change(s.now, policy.windows)
        opens_at = opens.timestamp() if opens is not None else s.now + MAX_RETRY_AFTER
        wait = min(MAX_RETRY_AFTER, max(1.0, opens_at - s.now))
        when = _utc(opens_at) if opens is not None else "not within a week"
        return deny(OUTSIDE_WINDOW, f"outside the maintenance windows; the next opens {when}", wait)
    pool = s.pool if s.pool is not None else "(none)"
    if s.remediating_in_pool:
        return deny(
            REMEDIATION_IN_FLIGHT,
            f"{s.cluster}/{s.remediating_in_pool[0]} of pool {pool} is being replaced",
        )
    if s.busy_in_pool:
        return deny(
            POOL_BUSY,
            f"{s.cluster}/{s.busy_in_pool[0]} of pool {pool} is rebooting or may reboot; one "
            "reboot per pool at a time",
        )
    if s.degraded_in_pool:
        return deny(
            POOL_DEGRADED,
            f"{s.cluster}/{s.degraded_in_pool[0]} of pool {pool} is not in service (unhealthy, "
            "pending or starting); reboots wait until the pool is whole",
        )
    for budget in s.budgets:
        # A lone reboot is always within budget: the limits stop reboots piling onto trouble.
        if budget.count > max(budget.limit, 1):
            return deny(
                DISRUPTION_BUDGET,
                f"with it, {budget.describe()}",
            )
    expires = s.now + policy.permit_ttl
    return Decision(True, GRANTED, f"{who} may reboot until {_utc(expires)}", None, expires)


def bad_upgrade_blocker(s: Situation) -> str | None:
    """Why no reboot may start while the bad-upgrade breaker is open, or None."""
    if s.bad_upgrade is None:
        return None
    return (
        f"the bad-upgrade breaker of {s.cluster} is open ({s.bad_upgrade}); no reboots until "
        "`healer breaker reset`"
    )


@dataclass(frozen=True)
class Grant:
    cluster: str
    node: str
    pool: str | None
    request_id: str
    granted_at: float
    expires_at: float
    started_at: float | None = None


Publish = Callable[[str, str, Permit], Awaitable[None]]  # (cluster, node, permit)


class RebootArbiter:
    """Answers reboot requests and keeps the grants. ``publish`` sends an answer to the agent;
    ``frozen`` says why a cluster's decisions are frozen (``Planner.frozen_reason``)."""

    def __init__(
        self,
        *,
        config: HealerConfig,
        store: Store,
        clock: Clock,
        tracker: HealthTracker,
        publish: Publish,
        blocks: AlertBlocks | None = None,
        frozen: Callable[[str], str | None] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._recorder = Recorder(store, clock=clock, log=log)
        self._clock = clock
        self._tracker = tracker
        self._publish = publish
        self._blocks = blocks
        self._frozen = frozen
        self._grants: dict[NodeKey, Grant] = self._restore()
        self._last_refusal: dict[NodeKey, str] = {}

    def reconfigure(self, config: HealerConfig) -> None:
        """A reload: new windows and TTLs apply to the next request; grants given stand."""
        self._config = config

    def grants(self) -> list[Grant]:
        self._expire(self._clock.now())
        return sorted(self._grants.values(), key=lambda g: (g.cluster, g.node))

    async def on_request(self, request: RebootRequest) -> Decision:
        now = self._clock.now()
        key = NodeKey(request.cluster, request.node)
        self._expire(now)
        held = self._grants.get(key)
        if held is not None:
            decision = Decision(
                True, GRANTED, "the grant already given still holds", None, held.expires_at
            )
        else:
            decision = decide(self.situation(key, now), self._policy(request.cluster))
            self._record(key, request, decision, now)
        log.info(
            "reboot.answered",
            cluster=request.cluster,
            node=request.node,
            request=request.id,
            granted=decision.granted,
            reason=decision.reason,
        )
        permit = Permit(
            id=request.id,
            granted=decision.granted,
            reason=decision.reason,
            message=decision.message,
            retry_after=decision.retry_after,
            expires_at=decision.expires_at,
        )
        try:
            await self._publish(request.cluster, request.node, permit)
        except Exception as exc:
            # The agent asks again when no answer comes; the grant (if any) stands meanwhile.
            log.warning(
                "reboot.answer_failed", cluster=request.cluster, node=request.node, error=str(exc)
            )
        return decision

    async def observe(self, event: NodeEvent) -> None:
        """Follow the grant holders' reboots (fed every event the daemon handles)."""
        key = event.key
        grant = self._grants.get(key)
        if grant is None:
            return
        if event.kind is EventKind.REBOOT_STARTED and grant.started_at is None:
            timeout = self._reboot_timeout(grant)
            grant = replace(grant, started_at=event.at, expires_at=event.at + timeout)
            self._grants[key] = grant
            self._audit(
                grant, "reboot.started", "RebootStarted", f"{key} started its reboot", event.at
            )
        elif event.kind is EventKind.BOOTED or event.kind is EventKind.NODE_DELETED:
            reason = "Booted" if event.kind is EventKind.BOOTED else "NodeDeleted"
            self._release(key, reason, self._clock.now())

    def situation(self, key: NodeKey, now: float) -> Situation:
        cluster = self._config.cluster(key.cluster)
        obs = self._tracker.observation(key)
        if cluster is None or obs is None or not obs.exists:
            return Situation(cluster=key.cluster, node=key.node, pool=None, known=False, now=now)
        pool = obs.pool
        running = {wf.node for wf in self._store.workflows(cluster=key.cluster, state=RUNNING)}
        granted = self.granted_nodes(key.cluster)
        nodes = [
            node_status(o, v, remediating=o.node in running, reboot_granted=o.node in granted)
            for o, v in self._tracker.nodes(key.cluster)
        ]
        me = next((n for n in nodes if n.node == key.node), None)
        if me is None:  # known, but no verdict yet
            return Situation(cluster=key.cluster, node=key.node, pool=None, known=False, now=now)
        peers = [n for n in nodes if n.pool == pool and n.node != key.node]
        remediating = sorted(n.node for n in peers if n.remediating)
        busy = sorted(
            n.node
            for n in peers
            if not n.remediating and (n.health is Health.REBOOTING or n.reboot_granted)
        )
        degraded = sorted(
            n.node
            for n in peers
            if not n.remediating
            and not n.reboot_granted
            and n.health in (Health.UNHEALTHY, Health.PENDING, Health.STARTING)
        )
        # The zone's and the cluster's budgets with this node counted out (the pool's rule is
        # the stricter one above: no other node of the pool out at all).
        why = "asking to reboot"
        budgets = [cluster_budget(key.cluster, cluster, nodes, subject=me, subject_why=why)]
        if me.zone is not None:
            zone = zone_budget(key.cluster, cluster, nodes, me.zone, subject=me, subject_why=why)
            budgets.insert(0, zone)
        pauses = self._store.pauses()
        paused = next(
            (
                scope
                for scope, on in (
                    ("global", self._config.paused or pause_scope() in pauses),
                    (
                        f"cluster {key.cluster}",
                        cluster.paused or pause_scope(key.cluster) in pauses,
                    ),
                    (
                        f"pool {key.cluster}/{pool}",
                        pool is not None and pause_scope(key.cluster, pool) in pauses,
                    ),
                )
                if on
            ),
            None,
        )
        breakers = self._store.breakers()
        return Situation(
            cluster=key.cluster,
            node=key.node,
            pool=pool,
            known=True,
            now=now,
            frozen=self._frozen(key.cluster) if self._frozen is not None else None,
            state_unwritable=str(problem) if (problem := self._store.writes.problem) else None,
            synced=self._tracker.synced(key.cluster),
            breaker=breakers[key.cluster][0] if key.cluster in breakers else None,
            bad_upgrade=self._store.breakers(kind=BREAKER_BAD_UPGRADE).get(
                key.cluster, (None, 0.0)
            )[0],
            paused=paused,
            blocking_alerts=self._blocks.active(key.cluster, now) if self._blocks else (),
            remediating_in_pool=tuple(remediating),
            busy_in_pool=tuple(busy),
            degraded_in_pool=tuple(degraded),
            budgets=tuple(budgets),
        )

    def granted_nodes(self, cluster: str) -> frozenset[str]:
        """The nodes of ``cluster`` holding a grant, started or not: the repair guards count
        them as out of service (the planner's ``watch_reboot_grants``)."""
        self._expire(self._clock.now())
        return frozenset(g.node for g in self._grants.values() if g.cluster == cluster)

    # -- internals ------------------------------------------------------------------------------

    def _policy(self, cluster: str) -> RebootPolicy:
        c = self._config.cluster(cluster)
        return c.reboots if c is not None else RebootPolicy.model_validate({})

    def _reboot_timeout(self, grant: Grant) -> float:
        c = self._config.cluster(grant.cluster)
        return c.health_for(grant.pool).reboot_timeout if c is not None else 900.0

    def _record(self, key: NodeKey, request: RebootRequest, decision: Decision, now: float) -> None:
        obs = self._tracker.observation(key)
        pool = obs.pool if obs is not None else None
        if decision.granted:
            assert decision.expires_at is not None
            grant = Grant(key.cluster, key.node, pool, request.id, now, decision.expires_at)
            self._grants[key] = grant
            self._last_refusal.pop(key, None)
            self._audit(grant, "reboot.granted", GRANTED, decision.message, now)
            return
        if self._last_refusal.get(key) == decision.reason:
            return
        self._last_refusal[key] = decision.reason
        self._recorder.record(
            "reboot.refused",
            at=now,
            cluster=key.cluster,
            node=key.node,
            pool=pool,
            reason=decision.reason,
            message=decision.message,
            evidence={"request": request.id, "retry_after": decision.retry_after},
        )

    def _expire(self, now: float) -> None:
        for key, grant in list(self._grants.items()):
            if now >= grant.expires_at:
                self._release(key, "Expired" if grant.started_at is None else "RebootTimeout", now)

    def _release(self, key: NodeKey, reason: str, now: float) -> None:
        grant = self._grants.pop(key, None)
        if grant is None:
            return
        self._audit(
            grant, "reboot.released", reason, f"{key}: reboot grant released ({reason})", now
        )

    def _audit(self, grant: Grant, event: str, reason: str, message: str, at: float) -> None:
        self._recorder.record(
            event,
            at=at,
            cluster=grant.cluster,
            node=grant.node,
            pool=grant.pool,
            reason=reason,
            message=message,
            evidence={
                "request": grant.request_id,
                "granted_at": grant.granted_at,
                "expires_at": grant.expires_at,
                "started_at": grant.started_at,
            },
        )

    def _restore(self) -> dict[NodeKey, Grant]:
        """Outstanding grants from the audit log: the last grant event of each node, unless a
        release came after it, and still unexpired."""
        now = self._clock.now()
        horizon = max(
            (
                c.reboots.permit_ttl + c.health_for(p.name).reboot_timeout
                for c in self._config.clusters
                for p in c.pools
            ),
            default=3600.0,
        )
        latest: dict[NodeKey, tuple[str, dict[str, object], str | None]] = {}
        for entry in self._store.audit_log(since=now - horizon):
            if (
                entry.event in ("reboot.granted", "reboot.started", "reboot.released")
                and entry.node
            ):
                evidence = entry.evidence if isinstance(entry.evidence, dict) else {}
                latest[NodeKey(entry.cluster, entry.node)] = (entry.event, evidence, entry.pool)
        grants: dict[NodeKey, Grant] = {}
        for key, (event, ev, pool) in latest.items():
            if event == "reboot.released":
                continue
            try:
                grant = Grant(
                    cluster=key.cluster,
                    node=key.node,
                    pool=pool,
                    request_id=str(ev.get("request", "")),
                    granted_at=_seconds(ev["granted_at"]),
                    expires_at=_seconds(ev["expires_at"]),
                    started_at=_seconds(ev["started_at"])
                    if ev.get("started_at") is not None
                    else None,
                )
            except (KeyError, TypeError, ValueError):
                continue
            if grant.expires_at > now:
                grants[key] = grant
        if grants:
            log.info("reboot.grants_restored", grants=[str(k) for k in grants])
        return grants


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number of seconds, got {value!r}")
    return float(value)


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
