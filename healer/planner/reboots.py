"""Reboot arbitration: may this node's agent reboot it now? Healer arbitrates reboots and repairs
together: a reboot never starts while its pool is short of a machine, and a repair counts the
reboots under way against the same limits.

Owns the decision (:func:`decide`, pure, kured-style: a straight chain of small checks; every
check runs so that a refusal and ``healer status`` list every active blocker, and the first that
refuses is the answer's reason) and the grants handed out (:class:`RebootArbiter`). The MQTT
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
``BlockedByAlert``       a blocking alert is firing for the cluster: pushed to the webhook
                         (docs/webhook.md), or pulled from Prometheus matching
                         ``reboots.prometheus.alertFilterRegexp``
``PrometheusUnreachable`` ``reboots.prometheus`` is set and its last good answer is missing or
                         older than three polls: the alerts that would block are unknown
``OutsideWindow``        ``reboots.windows`` are configured and none is open now
``BlockingPod``          a pod on the node matches ``reboots.blockingPodSelectors`` (or the
                         node's pods could not be listed to tell)
``RemediationInFlight``  with this reboot, the pool would have more nodes out for reboots and
                         repairs than ``reboots.concurrency.perPool`` (default 1), one of them
                         being replaced
``PoolBusy``             the same, the others holding a grant or rebooting
``ClusterBusy``          with this reboot, the cluster would have more nodes out for reboots and
                         repairs than ``reboots.concurrency.perCluster`` (unset: no such limit)
``PoolDegraded``         another node of the pool is unhealthy, pending or still starting
``DisruptionBudget``     with this node rebooting, its zone or its cluster would have more nodes
                         out of service than ``maxUnhealthyPerZone`` / ``maxUnhealthy`` allow
``Granted``              none of the above: the node may reboot until ``expiresAt``

With the reboot workflow wired (:mod:`healer.workflow.reboot`, the daemon does it whenever it
talks to the cluster), a ``Granted`` decision is not handed to the agent at once: the node is
cordoned and drained first, and meanwhile the agent's asks are answered:

``Draining``             the reboot is granted and the node is being cordoned and drained; ask
                         again shortly (the grant is sent on the pending request id as soon as
                         the drain ends, and the next ask gets it too)
``DrainTimeout``         the last drain of this node did not finish within ``reboots.drainTimeout``
                         (the message names the pods and the PodDisruptionBudget that held it):
                         the node was uncordoned again and the grant released; reboots of this
                         node wait ``reboots.drainRetryAfter`` before the next try

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

import asyncio
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
from healer.planner.disruption import Budget, cluster_budget, planned, zone_budget
from healer.planner.guards import node_status
from healer.planner.maintenance import next_change, reboots_allowed
from healer.planner.pulled_alerts import PulledAlerts
from healer.planner.reboot_notices import RebootNotices
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
PROMETHEUS_UNREACHABLE: Final = "PrometheusUnreachable"
BLOCKING_POD: Final = "BlockingPod"
CLUSTER_BUSY: Final = "ClusterBusy"
DRAINING: Final = "Draining"
DRAIN_TIMEOUT: Final = "DrainTimeout"
DRAINING_RETRY_AFTER: Final = 5.0

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
    PROMETHEUS_UNREACHABLE: 120.0,
    BLOCKING_POD: 300.0,
    CLUSTER_BUSY: 60.0,
}
MAX_RETRY_AFTER: Final = 3600.0
POD_LIST_TIMEOUT: Final = 10.0  # seconds: listing a node's blocking pods (the request waits)


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
    # alerts pulled from Prometheus that match reboots.prometheus (names)
    prometheus_alerts: tuple[str, ...] = ()
    prometheus_unreachable: str | None = None  # why the last answer is missing or too old
    # pods on the node matching reboots.blockingPodSelectors ("namespace/name")
    blocking_pods: tuple[str, ...] = ()
    pods_unreadable: str | None = None  # why the node's pods could not be listed
    remediating_in_pool: tuple[str, ...] = ()
    busy_in_pool: tuple[str, ...] = ()  # other nodes holding a grant or rebooting
    degraded_in_pool: tuple[str, ...] = ()  # other nodes UNHEALTHY, PENDING or STARTING
    # other nodes of the cluster out for planned work: being remediated, rebooting or granted
    planned_in_cluster: tuple[str, ...] = ()
    # the zone's and the cluster's budgets, this node counted as out of service
    budgets: tuple[Budget, ...] = ()


@dataclass(frozen=True)
class Blocker:
    """One check of the chain that refuses: its reason, why, and when to ask again."""

    reason: str
    message: str
    retry_after: float


@dataclass(frozen=True)
class Decision:
    granted: bool
    reason: str
    message: str
    retry_after: float | None = None
    expires_at: float | None = None
    # every check that refuses, in chain order; the first is the headline (reason, message)
    blockers: tuple[Blocker, ...] = ()


def decide(s: Situation, policy: RebootPolicy) -> Decision:
    """The chain of checks in the module docstring; pure. Every check runs, so a refusal lists
    every active blocker; the first that refuses is the answer's reason."""
    found = blockers(s, policy)
    if found:
        first = found[0]
        message = f"not rebooting {s.cluster}/{s.node} now: {first.message}"
        return Decision(False, first.reason, message, first.retry_after, blockers=found)
    expires = s.now + policy.permit_ttl
    who = f"{s.cluster}/{s.node}"
    return Decision(True, GRANTED, f"{who} may reboot until {_utc(expires)}", None, expires)


def blockers(s: Situation, policy: RebootPolicy) -> tuple[Blocker, ...]:
    """Every check of the chain that refuses now, in order (empty: the reboot may start)."""
    if not s.known:  # nothing else is known about a node healer does not manage
        return (_blocker(UNKNOWN_NODE, "healer does not manage this node"),)
    found = [b for check in _CHECKS if (b := check(s, policy)) is not None]
    return tuple(found)


Check = Callable[[Situation, RebootPolicy], "Blocker | None"]


def _blocker(reason: str, why: str, retry: float | None = None) -> Blocker:
    # RETRY_AFTER is looked up now, not bound at import: tests shorten it.
    return Blocker(reason, why, retry if retry is not None else RETRY_AFTER[reason])


def _state(s: Situation, _: RebootPolicy) -> Blocker | None:
    if s.state_unwritable is None:
        return None
    return _blocker(
        STATE_UNWRITABLE,
        f"healer cannot write its state database ({s.state_unwritable}); no reboot is "
        "granted until it can",
    )


def _api(s: Situation, _: RebootPolicy) -> Blocker | None:
    if s.frozen is None:
        return None
    return _blocker(API_UNREACHABLE, f"the API of {s.cluster} is unreachable ({s.frozen})")


def _synced(s: Situation, _: RebootPolicy) -> Blocker | None:
    # Before the list is in, the peers this decision must count are not all known yet.
    if s.synced:
        return None
    return _blocker(NOT_SYNCED, f"the node list of {s.cluster} has not been read whole yet")


def _breaker(s: Situation, _: RebootPolicy) -> Blocker | None:
    if s.breaker is None:
        return None
    return _blocker(BREAKER_OPEN, f"the circuit breaker of {s.cluster} is open ({s.breaker})")


def _bad_upgrade(s: Situation, _: RebootPolicy) -> Blocker | None:
    blocked = bad_upgrade_blocker(s)
    return _blocker(BAD_UPGRADE_BREAKER_OPEN, blocked) if blocked is not None else None


def _paused(s: Situation, _: RebootPolicy) -> Blocker | None:
    if s.paused is None:
        return None
    return _blocker(PAUSED, f"healer is paused ({s.paused}); no reboots")


def _alerts(s: Situation, _: RebootPolicy) -> Blocker | None:
    named = [*s.blocking_alerts, *(f"{a} (Prometheus)" for a in s.prometheus_alerts)]
    if not named:
        return None
    return _blocker(
        BLOCKED_BY_ALERT, f"blocking alert(s) {', '.join(named)} firing for {s.cluster}"
    )


def _prometheus(s: Situation, _: RebootPolicy) -> Blocker | None:
    if s.prometheus_unreachable is None:
        return None
    return _blocker(
        PROMETHEUS_UNREACHABLE,
        f"the blocking alerts of {s.cluster} cannot be read from Prometheus "
        f"({s.prometheus_unreachable}); reboots wait until they can",
    )


def _window(s: Situation, policy: RebootPolicy) -> Blocker | None:
    if reboots_allowed(s.now, policy.windows):
        return None
    opens = next_change(s.now, policy.windows)
    opens_at = opens.timestamp() if opens is not None else s.now + MAX_RETRY_AFTER
    wait = min(MAX_RETRY_AFTER, max(1.0, opens_at - s.now))
    when = _utc(opens_at) if opens is not None else "not within a week"
    return _blocker(OUTSIDE_WINDOW, f"outside the maintenance windows; the next opens {when}", wait)


def _pods(s: Situation, _: RebootPolicy) -> Blocker | None:
    if s.pods_unreadable is not None:
        return _blocker(
            BLOCKING_POD,
            f"the pods on {s.node} could not be listed ({s.pods_unreadable}); "
            "reboots.blockingPodSelectors cannot be checked",
        )
    if not s.blocking_pods:
        return None
    shown = ", ".join(s.blocking_pods[:5]) + (" ..." if len(s.blocking_pods) > 5 else "")
    return _blocker(
        BLOCKING_POD,
        f"{len(s.blocking_pods)} pod(s) matching reboots.blockingPodSelectors run on it ({shown})",
    )


def _pool_concurrency(s: Situation, policy: RebootPolicy) -> Blocker | None:
    limit = policy.concurrency.per_pool
    others = len(s.remediating_in_pool) + len(s.busy_in_pool)
    if others + 1 <= limit:
        return None
    pool = s.pool if s.pool is not None else "(none)"
    if limit == 1:  # the default: the messages name the one node in the way
        if s.remediating_in_pool:
            return _blocker(
                REMEDIATION_IN_FLIGHT,
                f"{s.cluster}/{s.remediating_in_pool[0]} of pool {pool} is being replaced",
            )
        return _blocker(
            POOL_BUSY,
            f"{s.cluster}/{s.busy_in_pool[0]} of pool {pool} is rebooting or may reboot; one "
            "reboot per pool at a time",
        )
    reason = REMEDIATION_IN_FLIGHT if s.remediating_in_pool else POOL_BUSY
    out = ", ".join([*(f"{n} (being replaced)" for n in s.remediating_in_pool), *s.busy_in_pool])
    return _blocker(
        reason,
        f"{others} node(s) of pool {s.cluster}/{pool} are out for reboots or repairs ({out}); "
        f"reboots.concurrency.perPool is {limit}",
    )


def _cluster_concurrency(s: Situation, policy: RebootPolicy) -> Blocker | None:
    limit = policy.concurrency.per_cluster
    if limit is None or len(s.planned_in_cluster) + 1 <= limit:
        return None
    shown = ", ".join(s.planned_in_cluster[:5]) + (" ..." if len(s.planned_in_cluster) > 5 else "")
    return _blocker(
        CLUSTER_BUSY,
        f"{len(s.planned_in_cluster)} node(s) of {s.cluster} are out for reboots or repairs "
        f"({shown}); reboots.concurrency.perCluster is {limit}",
    )


def _degraded(s: Situation, _: RebootPolicy) -> Blocker | None:
    if not s.degraded_in_pool:
        return None
    pool = s.pool if s.pool is not None else "(none)"
    return _blocker(
        POOL_DEGRADED,
        f"{s.cluster}/{s.degraded_in_pool[0]} of pool {pool} is not in service (unhealthy, "
        "pending or starting); reboots wait until the pool is whole",
    )


def _budgets(s: Situation, _: RebootPolicy) -> Blocker | None:
    for budget in s.budgets:
        # A lone reboot is always within budget: the limits stop reboots piling onto trouble.
        if budget.count > max(budget.limit, 1):
            return _blocker(DISRUPTION_BUDGET, f"with it, {budget.describe()}")
    return None


_CHECKS: Final[tuple[Check, ...]] = (
    _state,
    _api,
    _synced,
    _breaker,
    _bad_upgrade,
    _paused,
    _alerts,
    _prometheus,
    _window,
    _pods,
    _pool_concurrency,
    _cluster_concurrency,
    _degraded,
    _budgets,
)


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
    # Set when the reboot workflow (healer.workflow.reboot) runs this grant: its journal id.
    workflow: str | None = None
    handed: bool = True  # the agent may reboot (False while the workflow cordons and drains)
    booted_at: float | None = None  # the agent said ``booted`` (a workflow grant waits on)


Publish = Callable[[str, str, Permit], Awaitable[None]]  # (cluster, node, permit)
StartReboot = Callable[[Grant], Awaitable[None]]  # runs the reboot workflow of a new grant
# (cluster, node, selectors) -> "namespace/name" of the node's pods matching any selector
FindPods = Callable[[str, str, tuple[str, ...]], Awaitable[list[str]]]


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
        start_reboot: StartReboot | None = None,
        pulled: PulledAlerts | None = None,
        find_pods: FindPods | None = None,
        notices: RebootNotices | None = None,
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
        self._start_reboot = start_reboot
        self._pulled = pulled  # reboots.prometheus: the alerts of the last poll
        self._find_pods = find_pods  # reboots.blockingPodSelectors: the matching pods
        self._notices = notices  # reboots.notify
        # Nodes whose drain did not finish: until when their asks are refused, and why.
        self._held_back: dict[NodeKey, tuple[float, str]] = {}

    def reconfigure(self, config: HealerConfig) -> None:
        """A reload: new windows and TTLs apply to the next request; grants given stand."""
        self._config = config
        if self._notices is not None:
            self._notices.reconfigure(config)

    def grants(self) -> list[Grant]:
        self._expire(self._clock.now())
        return sorted(self._grants.values(), key=lambda g: (g.cluster, g.node))

    async def on_request(self, request: RebootRequest) -> Decision:
        now = self._clock.now()
        key = NodeKey(request.cluster, request.node)
        self._expire(now)
        held = self._grants.get(key)
        started: Grant | None = None
        if held is not None and not held.handed:
            # The pending answer: the hand-over publishes the grant on this id.
            self._grants[key] = replace(held, request_id=request.id)
            decision = self._draining(key)
        elif held is not None:
            decision = Decision(
                True, GRANTED, "the grant already given still holds", None, held.expires_at
            )
        elif (back := self._held_back.get(key)) is not None and now < back[0]:
            decision = Decision(False, DRAIN_TIMEOUT, back[1], max(1.0, back[0] - now))
            self._record(key, request, decision, now)
        else:
            self._held_back.pop(key, None)
            decision = decide(await self.gather(key, now), self._policy(request.cluster))
            self._record(key, request, decision, now)
            if decision.granted and self._start_reboot is not None:
                started = self._grants[key]
                decision = self._draining(key)
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
        await self._send(key, permit)
        if started is not None and self._start_reboot is not None:
            await self._start_reboot(started)
        return decision

    def grant(self, key: NodeKey) -> Grant | None:
        """The grant ``key`` holds, if any (the reboot workflow follows it)."""
        return self._grants.get(key)

    async def hand_over(self, key: NodeKey) -> Grant | None:
        """The workflow drained the node: the agent may reboot it now, until ``permitTtl`` from
        now. The grant goes out at once on the last request id (the pending answer); the next
        ask gets it as well. Safe to repeat."""
        grant = self._grants.get(key)
        if grant is None or grant.handed:
            return grant
        now = self._clock.now()
        grant = replace(grant, handed=True, expires_at=now + self._policy(key.cluster).permit_ttl)
        self._grants[key] = grant
        message = f"{key} is drained and may reboot until {_utc(grant.expires_at)}"
        self._audit(grant, "reboot.handed", GRANTED, message, now)
        permit = Permit(grant.request_id, True, GRANTED, message, None, grant.expires_at)
        await self._send(key, permit)
        return grant

    async def _send(self, key: NodeKey, permit: Permit) -> None:
        try:
            await self._publish(key.cluster, key.node, permit)
        except Exception as exc:
            # The agent asks again when no answer comes; the grant (if any) stands meanwhile.
            log.warning("reboot.answer_failed", cluster=key.cluster, node=key.node, error=str(exc))

    def release(self, key: NodeKey, reason: str, message: str | None = None) -> None:
        """The workflow is done with the grant (``Rebooted``, ``DrainTimeout``, ...)."""
        self._release(key, reason, self._clock.now(), message)

    def hold_back(self, key: NodeKey, message: str, seconds: float) -> None:
        """Refuse ``key``'s asks with ``DrainTimeout`` and ``message`` for ``seconds``."""
        self._held_back[key] = (self._clock.now() + seconds, message)

    def _draining(self, key: NodeKey) -> Decision:
        return Decision(
            False,
            DRAINING,
            f"{key} may reboot once it is drained; the grant follows on this request id",
            DRAINING_RETRY_AFTER,
        )

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
        elif event.kind is EventKind.BOOTED and grant.workflow is not None:
            if grant.booted_at is None:
                # The workflow waits for Ready, uncordons, then releases.
                grant = replace(grant, booted_at=event.at)
                self._grants[key] = grant
                self._audit(grant, "reboot.booted", "Booted", f"{key} booted", event.at)
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
        prom = cluster.reboots.prometheus
        pulled: tuple[tuple[str, ...], str | None] = ((), None)
        if prom is not None:
            pulled = (
                self._pulled.view(key.cluster, now, stale_after=prom.stale_after)
                if self._pulled is not None
                else ((), "no poll of Prometheus runs in this process")
            )
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
            prometheus_alerts=pulled[0],
            prometheus_unreachable=pulled[1],
            remediating_in_pool=tuple(remediating),
            busy_in_pool=tuple(busy),
            degraded_in_pool=tuple(degraded),
            planned_in_cluster=tuple(
                sorted(n.node for n in nodes if n.node != key.node and planned(n))
            ),
            budgets=tuple(budgets),
        )

    async def gather(self, key: NodeKey, now: float) -> Situation:
        """:meth:`situation` with what must be asked of the cluster: the pods on the node that
        match ``reboots.blockingPodSelectors`` (asked whatever else refuses, so that the refusal
        lists them too), within ``POD_LIST_TIMEOUT``."""
        s = self.situation(key, now)
        selectors = self._policy(key.cluster).blocking_pod_selectors
        if not s.known or not selectors or self._find_pods is None:
            return s
        try:
            async with asyncio.timeout(POD_LIST_TIMEOUT):
                pods = await self._find_pods(key.cluster, key.node, selectors)
        except TimeoutError:
            return replace(s, pods_unreadable=f"no answer within {POD_LIST_TIMEOUT:g}s")
        except Exception as exc:  # any failure to list holds the reboot, named
            return replace(s, pods_unreadable=str(exc) or type(exc).__name__)
        return replace(s, blocking_pods=tuple(pods))

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
            if self._start_reboot is not None:
                # Cordon and drain first (healer.workflow.reboot): handed over once drained.
                grant = replace(
                    grant,
                    workflow=f"reboot-{key.cluster}-{key.node}-{request.id}-{int(now)}",
                    handed=False,
                )
            self._grants[key] = grant
            self._last_refusal.pop(key, None)
            self._audit(grant, "reboot.granted", GRANTED, decision.message, now)
            if self._notices is not None:
                self._notices.started(grant.cluster, grant.node, pool, decision.message, now)
            return
        if self._notices is not None:
            self._notices.refused(key.cluster, key.node, pool, decision, now)
        # Audited once per change of the set of blockers (healer status shows the last).
        blocked = ",".join(b.reason for b in decision.blockers) or decision.reason
        if self._last_refusal.get(key) == blocked:
            return
        self._last_refusal[key] = blocked
        self._recorder.record(
            "reboot.refused",
            at=now,
            cluster=key.cluster,
            node=key.node,
            pool=pool,
            reason=decision.reason,
            message=decision.message,
            evidence={
                "request": request.id,
                "retry_after": decision.retry_after,
                "blockers": [{"reason": b.reason, "message": b.message} for b in decision.blockers],
            },
        )

    def _expire(self, now: float) -> None:
        for key, grant in list(self._grants.items()):
            # A workflow's grant is the workflow's to end (it uncordons first).
            if now >= grant.expires_at and grant.workflow is None:
                self._release(key, "Expired" if grant.started_at is None else "RebootTimeout", now)

    def _release(self, key: NodeKey, reason: str, now: float, message: str | None = None) -> None:
        grant = self._grants.pop(key, None)
        if grant is None:
            return
        why = message or f"{key}: reboot grant released ({reason})"
        self._audit(grant, "reboot.released", reason, why, now)
        if self._notices is not None:
            self._notices.done(grant.cluster, grant.node, grant.pool, reason, why, now)

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
                "workflow": grant.workflow,
                "handed": grant.handed,
                "booted_at": grant.booted_at,
            },
        )

    def _restore(self) -> dict[NodeKey, Grant]:
        """Outstanding grants from the audit log: the last grant event of each node, unless a
        release came after it, and still unexpired."""
        now = self._clock.now()
        horizon = max(
            (
                c.reboots.permit_ttl + c.reboots.drain_timeout + c.health_for(p.name).reboot_timeout
                for c in self._config.clusters
                for p in c.pools
            ),
            default=3600.0,
        )
        latest: dict[NodeKey, tuple[str, dict[str, object], str | None]] = {}
        for entry in self._store.audit_log(since=now - horizon):
            if (
                entry.event
                in (
                    "reboot.granted",
                    "reboot.handed",
                    "reboot.started",
                    "reboot.booted",
                    "reboot.released",
                )
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
                    workflow=str(ev["workflow"]) if ev.get("workflow") else None,
                    handed=ev.get("handed") is not False,
                    booted_at=_seconds(ev["booted_at"])
                    if ev.get("booted_at") is not None
                    else None,
                )
            except (KeyError, TypeError, ValueError):
                continue
            if grant.expires_at > now or grant.workflow is not None:
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
