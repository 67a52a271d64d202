"""Reboot arbitration: may this node's agent reboot it now? Healer arbitrates reboots and repairs
together, so a pool never loses two machines at once to a reboot and a replacement.

Owns the decision (:func:`decide`, pure, kured-style: a straight chain of small checks, the
first that refuses answers) and the grants handed out (:class:`RebootArbiter`). The MQTT
protocol is :mod:`healer.sources.mqtt_reboot`. The checks, in order:

``UnknownNode``          healer does not manage this node (not configured, or not seen yet)
``ApiUnreachable``       the cluster's API is unreachable: healer's view is stale
``BreakerOpen``          the cluster's circuit breaker is open
``Paused``               remediation is paused globally, for the cluster or for the pool
``BlockedByAlert``       a blocking alert is firing for the cluster (docs/webhook.md)
``OutsideWindow``        ``reboots.windows`` are configured and none is open now
``RemediationInFlight``  a node of the same pool is being replaced
``PoolBusy``             another node of the pool holds a grant or is rebooting
``Granted``              none of the above: the node may reboot until ``expiresAt``

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
from healer.maintenance import next_change, reboots_allowed
from healer.model import EventKind, Health, NodeEvent, NodeKey
from healer.planner.alert_blocks import AlertBlocks
from healer.sources.mqtt_reboot import Permit, RebootRequest
from healer.store.sqlite import RUNNING, Store, pause_scope

log = structlog.get_logger("healer.planner.reboots")

GRANTED: Final = "Granted"
UNKNOWN_NODE: Final = "UnknownNode"
API_UNREACHABLE: Final = "ApiUnreachable"
BREAKER_OPEN: Final = "BreakerOpen"
PAUSED: Final = "Paused"
BLOCKED_BY_ALERT: Final = "BlockedByAlert"
OUTSIDE_WINDOW: Final = "OutsideWindow"
REMEDIATION_IN_FLIGHT: Final = "RemediationInFlight"
POOL_BUSY: Final = "PoolBusy"

# How soon a refused agent should ask again, by reason. Short where the obstacle usually clears
# in minutes; an outside-window refusal says when the window opens instead.
RETRY_AFTER: Final = {
    UNKNOWN_NODE: 300.0,
    API_UNREACHABLE: 60.0,
    BREAKER_OPEN: 300.0,
    PAUSED: 300.0,
    BLOCKED_BY_ALERT: 120.0,
    REMEDIATION_IN_FLIGHT: 60.0,
    POOL_BUSY: 60.0,
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
    breaker: str | None = None  # why the breaker is open
    paused: str | None = None  # the widest pause scope that applies
    blocking_alerts: tuple[str, ...] = ()
    remediating_in_pool: tuple[str, ...] = ()
    busy_in_pool: tuple[str, ...] = ()  # other nodes holding a grant or rebooting


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
    if s.frozen is not None:
        return deny(API_UNREACHABLE, f"the API of {s.cluster} is unreachable ({s.frozen})")
    if s.breaker is not None:
        return deny(BREAKER_OPEN, f"the circuit breaker of {s.cluster} is open ({s.breaker})")
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
    expires = s.now + policy.permit_ttl
    return Decision(True, GRANTED, f"{who} may reboot until {_utc(expires)}", None, expires)


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
        in_pool = [
            (o, v)
            for o, v in self._tracker.nodes(key.cluster)
            if o.pool == pool and o.node != key.node
        ]
        busy = {o.node for o, v in in_pool if v.health is Health.REBOOTING}
        busy |= {
            g.node
            for g in self._grants.values()
            if g.cluster == key.cluster and g.pool == pool and g.node != key.node
        }
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
            breaker=breakers[key.cluster][0] if key.cluster in breakers else None,
            paused=paused,
            blocking_alerts=self._blocks.active(key.cluster, now) if self._blocks else (),
            remediating_in_pool=tuple(sorted(o.node for o, _ in in_pool if o.node in running)),
            busy_in_pool=tuple(sorted(busy)),
        )

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
        self._store.audit(
            at=now,
            cluster=key.cluster,
            node=key.node,
            pool=pool,
            event="reboot.refused",
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
        log.info("reboot.released", cluster=key.cluster, node=key.node, reason=reason)
        self._audit(
            grant, "reboot.released", reason, f"{key}: reboot grant released ({reason})", now
        )

    def _audit(self, grant: Grant, event: str, reason: str, message: str, at: float) -> None:
        self._store.audit(
            at=at,
            cluster=grant.cluster,
            node=grant.node,
            pool=grant.pool,
            event=event,
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
