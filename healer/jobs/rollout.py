"""Carrying out a rolling replacement (``healer apply`` after a pool's spec changed).

Each replacement is a remediation workflow (:class:`~healer.workflow.runner.WorkflowRunner`):
cordon, drain (PodDisruptionBudgets respected), fence, delete the Node, destroy, create, wait
until the new node is Ready, journalled step by step in the state database like every repair,
so a roll is never less safe than a repair. ``apply`` runs them itself, holding the state
directory's lock (a running daemon holds it too: apply then refuses, see
:mod:`healer.cli.provision`), so nothing else decides about the cluster meanwhile.

Which machines go next is :func:`healer.provisioning.rolling.next_replacements`, asked again after
every change; the control-plane pool rolls first, then the others in config order. A roll stops
at the first replacement that fails (the rest are left as they are: ``plan`` still lists them),
and while the cluster, the pool or healer is paused, or the remediation breaker is open.

Crash-resumable: the workflows are in the store, so a second ``apply`` after a crash first
resumes the cluster's running workflows where their journal says, then goes on with the roll
(the machines still carrying the old spec tag).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from healer.clock import Clock, RealClock
from healer.cloud.machines import Machine, Provider, can_check_capacity
from healer.config import ClusterConfig, HealerConfig, PoolConfig, load_config
from healer.config.rollout import rollout_limits, spec_fingerprint
from healer.errors import HealerError, PermanentError
from healer.jobs.exclusive import exclusive
from healer.kube.client import KubeClient
from healer.model import Role
from healer.naming import ownership_tags
from healer.provisioning.etcd_access import etcd_client
from healer.provisioning.keydelivery import KeyDelivery
from healer.provisioning.rolling import (
    REPLACE,
    ROLLOUT_BLOCKED,
    SURGE,
    SURGE_IMPOSSIBLE,
    Candidate,
    RollState,
    next_replacements,
    outdated_machines,
)
from healer.store.backends import open_store
from healer.store.recorder import Recorder
from healer.store.sqlite import (
    DB_NAME,
    FAILED,
    RUNNING,
    SUCCEEDED,
    Store,
    WorkflowRecord,
    pause_scope,
)
from healer.workflow import order
from healer.workflow.etcd_steps import EtcdOps
from healer.workflow.ports import NodeOps
from healer.workflow.runner import ROLLOUT, DeliverKeys, UserDataFor, WorkflowRunner

log = structlog.get_logger("healer.jobs.rollout")


@dataclass(frozen=True)
class RollResult:
    replaced: tuple[str, ...]  # old machine -> its workflow succeeded
    resumed: int


class RollStopped(PermanentError):
    """A replacement failed, or a guard stopped the roll; what is done stays done."""


def _strategy(store: Store, wf: WorkflowRecord) -> str:
    plan = order.plan_from_journal(store.steps(wf.id))
    if plan is not None:
        return plan.strategy
    return str(wf.evidence.get("strategy") or order.REPLACE)


def _stopped_by(store: Store, cluster: str, pool: str) -> str | None:
    pauses = store.pauses()
    for scope in (pause_scope(), pause_scope(cluster), pause_scope(cluster, pool)):
        if scope in pauses:
            note = pauses[scope][1]
            return f"{scope} is paused{f' ({note})' if note else ''}; `healer resume` first"
    breaker = store.breakers().get(cluster)
    if breaker is not None:
        return f"the remediation breaker of {cluster} is open ({breaker[0]})"
    return None


class Roll:
    """One cluster's roll. ``kube`` and ``provider`` are the cluster's."""

    def __init__(
        self,
        *,
        config: HealerConfig,
        cluster: ClusterConfig,
        provider: Provider,
        kube: NodeOps,
        store: Store,
        clock: Clock,
        user_data: UserDataFor,
        say: Callable[[str], None] = lambda _line: None,
        poll: float = 1.0,
        join_poll: float = 2.0,
        patience: float = 900.0,
        etcd: EtcdOps | None = None,
        deliver_keys: DeliverKeys | None = None,
    ) -> None:
        self._cluster = cluster
        self._provider = provider
        self._kube = kube
        self._store = store
        self._clock = clock
        self._say = say
        self._poll = poll
        self._patience = patience
        self._recorder = Recorder(store, clock=clock, log=log)
        kubes: Mapping[str, NodeOps] = {cluster.name: kube}
        self._runner = WorkflowRunner(
            config=config,
            store=store,
            clock=clock,
            kube=kubes,
            providers={cluster.name: provider},
            user_data=user_data,
            join_poll_interval=join_poll,
            # As in the daemon: a control-plane replacement gets its keys pushed, and its etcd
            # member is removed and verified, where the cluster's etcd is read.
            etcd={cluster.name: etcd} if etcd is not None else None,
            deliver_keys=deliver_keys,
        )
        self._started: list[str] = []

    async def run(self, *, resume_only: bool = False) -> RollResult:
        try:
            resumed = await self._resume()
            # The control plane first, then the others in config order.
            pools = sorted(self._cluster.pools, key=lambda p: p.role is not Role.CONTROL_PLANE)
            for pool in [] if resume_only else pools:
                await self._roll_pool(pool)
            await self._runner.wait_idle()
            self._check_failures()
            replaced = [
                wf.node
                for wf_id in self._started
                if (wf := self._store.workflow(wf_id)) is not None and wf.state == SUCCEEDED
            ]
            return RollResult(replaced=tuple(replaced), resumed=resumed)
        finally:
            await self._runner.stop()

    async def _resume(self) -> int:
        running = self._store.workflows(cluster=self._cluster.name, state=RUNNING)
        for wf in running:
            self._recorder.record(
                "rollout.resumed",
                cluster=wf.cluster,
                node=wf.node,
                pool=wf.pool,
                workflow_id=wf.id,
                reason=wf.step,
                message=f"`healer apply` resumes the replacement of {wf.node} at step {wf.step}",
            )
            self._say(f"  resuming the replacement of {wf.node} at step {wf.step}")
            self._started.append(wf.id)
            await self._runner.start(wf)
        return len(running)

    def _check_failures(self) -> None:
        for wf_id in self._started:
            wf = self._store.workflow(wf_id)
            if wf is not None and wf.state == FAILED:
                raise RollStopped(
                    f"the replacement of {wf.node} failed at step {wf.step}: {wf.error}; the "
                    "roll stopped (`healer history` shows it; `healer plan` lists what is left)"
                )

    async def _roll_pool(self, pool: PoolConfig) -> None:
        name = self._cluster.name
        fingerprint = spec_fingerprint(pool)
        can_surge = pool.role is not Role.CONTROL_PLANE and can_check_capacity(self._provider)
        limits = rollout_limits(pool, can_surge=can_surge)
        announced = False
        blocked_since: float | None = None
        while True:
            self._check_failures()
            machines = await self._provider.list_machines(ownership_tags(name, pool.name))
            in_flight = [
                wf
                for wf in self._store.workflows(cluster=name, state=RUNNING)
                if wf.pool == pool.name
            ]
            how = {wf.node: _strategy(self._store, wf) for wf in in_flight}
            gone = {n for n, s in how.items() if s == REPLACE}
            # A replacement counts once its workflow is done with it, not when its node is Ready.
            unconfirmed = {wf.replacement_name for wf in in_flight}
            found = outdated_machines(fingerprint, machines)
            ready: dict[str, bool] = {}
            for m in machines:
                info = await self._kube.get_node(m.name)
                ready[m.name] = info is not None and info.ready == "True"
            state = RollState(
                size=pool.size,
                available=sum(
                    1 for m in machines if ready[m.name] and m.name not in gone | unconfirmed
                ),
                surging=sum(1 for s in how.values() if s == SURGE),
                replacing=len(gone),
                outdated=tuple(
                    Candidate(m.name, ready[m.name]) for m, _ in found.outdated if m.name not in how
                ),
                can_surge=can_surge,
            )
            decision = next_replacements(state, limits)
            if decision.done:
                break
            if decision.reason == SURGE_IMPOSSIBLE:
                raise RollStopped(f"pool {pool.name}: {decision.message}")
            if decision.start:
                if (why := _stopped_by(self._store, name, pool.name)) is not None:
                    raise RollStopped(f"pool {pool.name}: roll stopped: {why}")
                if not announced:
                    self._say(
                        f"  rolling pool {pool.name}: {len(found.outdated)} machine(s) to "
                        f"{fingerprint} (maxSurge {limits.max_surge}, maxUnavailable "
                        f"{limits.max_unavailable})"
                    )
                    announced = True
            if decision.reason != ROLLOUT_BLOCKED:
                blocked_since = None
            else:
                now = self._clock.now()
                blocked_since = now if blocked_since is None else blocked_since
                if now - blocked_since > self._patience:
                    raise RollStopped(
                        f"pool {pool.name}: {decision.message}; gave up after {self._patience:.0f}s"
                    )
                log.info("rollout.waiting", pool=pool.name, message=decision.message)
            for node, strategy in decision.start:
                await self._launch(pool, node, strategy, fingerprint)
            await self._clock.sleep(self._poll)

    async def _launch(self, pool: PoolConfig, node: str, strategy: str, fingerprint: str) -> None:
        cluster = self._cluster.name
        now = self._clock.now()
        wf_id = uuid.uuid4().hex[:12]
        wf = WorkflowRecord(
            id=wf_id,
            cluster=cluster,
            pool=pool.name,
            node=node,
            role=pool.role,
            state=RUNNING,
            step="cordon",
            reason=ROLLOUT,
            evidence={
                "verdict": f"rolling replacement (`healer apply`): spec {fingerprint}",
                "strategy": strategy,
                "spec": fingerprint,
            },
            replacement_name=pool.replacement_name(cluster, node, wf_id),
            started_at=now,
            updated_at=now,
        )
        self._store.create_workflow(wf)
        self._recorder.record(
            "rollout.replacement_started",
            at=now,
            cluster=cluster,
            node=node,
            pool=pool.name,
            workflow_id=wf_id,
            reason=ROLLOUT,
            message=f"replacing {cluster}/{node} with {wf.replacement_name} ({strategy} order): "
            f"its pool's spec is now {fingerprint}",
            evidence=wf.evidence,
        )
        self._say(f"  replacing {node} with {wf.replacement_name} ({strategy} order)")
        self._started.append(wf_id)
        await self._runner.start(wf)


def needs_roll(cluster: ClusterConfig, machines: Mapping[str, Sequence[Machine]]) -> bool:
    """Whether any pool of ``cluster`` has an outdated machine (``machines`` by pool)."""
    return any(
        outdated_machines(spec_fingerprint(p), machines.get(p.name, ())).outdated
        for p in cluster.pools
    )


async def roll_cluster(
    config: HealerConfig,
    cluster: ClusterConfig,
    provider: Provider,
    *,
    state_dir: Path,
    user_data: UserDataFor,
    say: Callable[[str], None],
    poll: float = 1.0,
    join_poll: float = 2.0,
    resume_only: bool = False,
) -> RollResult | None:
    """Roll ``cluster``'s outdated machines (``resume_only``: only finish the replacements a
    stopped roll left running), holding the state directory's lock; ``None`` when there was
    nothing to do."""
    machines: dict[str, list[Machine]] = {}
    for pool in cluster.pools:
        machines[pool.name] = await provider.list_machines(ownership_tags(cluster.name, pool.name))
    wanted = not resume_only and needs_roll(cluster, machines)
    running = False
    if config.state is not None or (state_dir / DB_NAME).exists():
        peek = open_store(state_dir, config.state)
        try:
            running = bool(peek.workflows(cluster=cluster.name, state=RUNNING))
        finally:
            peek.close()
    if not wanted and not running:
        return None
    if cluster.kubeconfig is None:
        raise RollStopped(
            f"cluster {cluster.name}: a rolling replacement drains nodes through the cluster's "
            "API: set its kubeconfig"
        )
    with exclusive(state_dir, what=f"cluster {cluster.name}: the rolling replacement"):
        store = open_store(state_dir, config.state)
        clock = RealClock.resume(state_dir)
        kube = await KubeClient.from_kubeconfig(cluster.kubeconfig, cluster.context, clock=clock)
        etcd = etcd_client(state_dir, cluster, kube=kube)
        try:
            roll = Roll(
                config=config,
                cluster=cluster,
                provider=provider,
                kube=kube,
                store=store,
                clock=clock,
                user_data=user_data,
                say=say,
                poll=poll,
                join_poll=join_poll,
                etcd=etcd,
                deliver_keys=KeyDelivery(state_dir, clock=clock).deliver_to,
            )
            return await roll.run(resume_only=resume_only)
        finally:
            if etcd is not None:
                await etcd.close()
            await kube.close()
            store.close()


def run_rolls(
    args: argparse.Namespace, *, config_path: str, state_dir: Path, resume_only: bool = False
) -> int:
    """The roll part of ``healer apply``: first (``resume_only``) the replacements a stopped
    roll left running, before the pools' sizes are checked (a pool one short because of one is
    not refilled twice); then, after the infrastructure and the sizes, every outdated machine.
    0 done (or nothing to do), 1 stopped or failed."""
    from healer.provisioning.commands import _clusters, _open, _user_data

    config = load_config(config_path)
    clusters = _clusters(config, args.cluster, config_path)
    user_data = _user_data(state_dir)

    def say(line: str) -> None:
        print(line, flush=True)

    async def main() -> None:
        for cluster in clusters:
            provider = await _open(cluster, state_dir)
            try:
                result = await roll_cluster(
                    config,
                    cluster,
                    provider,
                    state_dir=state_dir,
                    user_data=user_data,
                    say=say,
                    poll=0.5,
                    join_poll=1.0,
                    resume_only=resume_only,
                )
            finally:
                await provider.close()
            if result is not None:
                say(
                    f"  rolled cluster {cluster.name}: {len(result.replaced)} machine(s) "
                    f"replaced ({', '.join(result.replaced) or 'none'})"
                )

    try:
        asyncio.run(main())
    except HealerError as exc:
        print(f"healer apply: {exc}", file=sys.stderr)
        return 1
    return 0
