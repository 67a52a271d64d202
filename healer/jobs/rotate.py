"""``healer rotate encryption-key`` carried out, and ``healer rotate ca`` planned: each stage
journalled in the state database, so a rotation stopped anywhere (even by SIGKILL) continues
where it left off when the command runs again.

The journal is the audit log (``healer history`` shows it): ``rotation.started`` (the rotation's
id, the old and the new key's names: never key material), one ``rotation.stage_done`` per stage
of :data:`healer.provisioning.rotation.STAGES`, and ``rotation.finished``. A stage is written as
done only once it is done on every control-plane machine; a stage that ran partly runs again
whole (putting a configuration on a machine and rewriting a Secret are both safe to repeat).
The new key is generated once into the state directory before ``rotation.started`` and kept
there until the last stage, so a resumed rotation uses the same key.

Like a roll, a rotation runs in the daemon's place, holding the state directory's lock
(:mod:`healer.jobs.exclusive`): no control-plane machine is replaced meanwhile, which would
come up with a configuration from before the rotation.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from healer import failpoints
from healer.clock import Clock, RealClock
from healer.cloud.machines import Machine, MachineState, Provider
from healer.config import ClusterConfig, load_config
from healer.errors import ConfigError, HealerError, PermanentError
from healer.jobs.exclusive import exclusive
from healer.kube.client import KubeClient
from healer.kube.connection import Connection
from healer.kube.rewrite import rewrite_secrets
from healer.model import Role
from healer.naming import ownership_tags
from healer.provisioning.keydelivery import KeyPush, address_of, default_push
from healer.provisioning.keystore import ClusterState
from healer.provisioning.rotation import (
    DONE,
    PUSH_STAGES,
    REWRITE_SECRETS,
    STAGES,
    DirectoryConfigPush,
    Key,
    SshConfigPush,
    config_file,
    current_key,
    next_key,
    next_key_name,
    next_stage,
    promote,
    stage_keys,
)
from healer.store.backends import open_store
from healer.store.recorder import Recorder
from healer.store.sqlite import AuditEntry, Store
from healer.telemetry.logs import configure

log = structlog.get_logger("healer.jobs.rotate")

STARTED = "rotation.started"
STAGE_DONE = "rotation.stage_done"
FINISHED = "rotation.finished"
CA_PLANNED = "rotation.ca_planned"
ENCRYPTION_KEY = "encryption-key"


@dataclass(frozen=True)
class Journal:
    """The rotation under way, as the audit log has it."""

    id: str
    old: str
    new: str
    done: tuple[str, ...]


def open_rotation(entries: Sequence[AuditEntry]) -> Journal | None:
    """The last encryption-key rotation that started and has not finished, or None. Pure."""
    current: Journal | None = None
    for e in sorted(entries, key=lambda e: e.seq):
        ev = e.evidence
        if ev.get("kind") != ENCRYPTION_KEY:
            continue
        if e.event == STARTED:
            current = Journal(str(ev["rotation"]), str(ev["old"]), str(ev["new"]), ())
        elif current is not None and ev.get("rotation") == current.id:
            if e.event == STAGE_DONE:
                current = Journal(
                    current.id, current.old, current.new, (*current.done, ev["stage"])
                )
            elif e.event == FINISHED:
                current = None
    return current


def _control_planes(machines: Sequence[Machine]) -> list[Machine]:
    return sorted(
        (m for m in machines if m.state in (MachineState.RUNNING, MachineState.PENDING)),
        key=lambda m: m.name,
    )


def config_push(state: ClusterState, cluster: ClusterConfig) -> KeyPush:
    """How a new configuration reaches a control-plane machine: as its keys did, replacing."""
    return default_push(state, cluster, directory=DirectoryConfigPush, ssh=SshConfigPush)


class EncryptionKeyRotation:
    def __init__(
        self,
        *,
        cluster: ClusterConfig,
        provider: Provider,
        kube: Connection,
        store: Store,
        state: ClusterState,
        push: KeyPush,
        clock: Clock,
        settle: float,
        say: Callable[[str], None] = lambda _line: None,
    ) -> None:
        if cluster.kubernetes is None:
            raise ConfigError(
                f"cluster {cluster.name} has no 'kubernetes' block: healer did not set up its "
                "encryption at rest, so it has no key to rotate"
            )
        self._cluster = cluster
        self._provider_name = cluster.kubernetes.encryption.provider
        self._provider = provider
        self._kube = kube
        self._store = store
        self._state = state
        self._push = push
        self._clock = clock
        self._settle = settle
        self._say = say
        self._recorder = Recorder(store, clock=clock, log=log)

    def _record(self, event: str, journal: Journal, message: str, **evidence: object) -> None:
        self._recorder.record(
            event,
            cluster=self._cluster.name,
            reason="EncryptionKeyRotation",
            message=message,
            evidence={
                "kind": ENCRYPTION_KEY,
                "rotation": journal.id,
                "old": journal.old,
                "new": journal.new,
                **evidence,
            },
        )

    def _journal(self) -> Journal:
        entries = [
            e
            for e in self._store.audit_log(cluster=self._cluster.name)
            if e.event in (STARTED, STAGE_DONE, FINISHED)
        ]
        found = open_rotation(entries)
        if found is not None:
            self._say(
                f"  resuming rotation {found.id} ({found.old} -> {found.new}) at stage "
                f"{next_stage(found.done)}"
            )
            return found
        old = current_key(self._state)
        journal = Journal(uuid.uuid4().hex[:12], old.name, next_key_name(old.name), ())
        next_key(self._state, journal.new)  # generated before it is journalled: a resume finds it
        self._record(
            STARTED,
            journal,
            f"encryption-key rotation {journal.id}: {journal.old} -> {journal.new}, stages "
            f"{', '.join(STAGES)}",
        )
        self._say(f"  rotation {journal.id}: {journal.old} -> {journal.new}")
        return journal

    async def run(self) -> Journal:
        journal = self._journal()
        if journal.done and journal.done[-1] == STAGES[-1]:
            # Stopped between the last stage and the end: only the promotion is left.
            return self._finish(journal)
        old = current_key(self._state)
        if old.name != journal.old:
            raise PermanentError(
                f"rotation {journal.id} started from key {journal.old}, but the state "
                f"directory's key is {old.name}; restore it or finish by hand (docs/operations.md)"
            )
        new = next_key(self._state, journal.new)
        keys = {old.name: old, new.name: new}
        while (stage := next_stage(journal.done)) != DONE:
            failpoints.hit(f"rotate.{stage}.before")
            self._say(f"  stage {stage}...")
            detail: dict[str, object]
            if stage in PUSH_STAGES:
                names = stage_keys(stage, old.name, new.name)
                machines = await self._put_everywhere([keys[n] for n in names])
                detail = {"keys": list(names), "machines": machines}
            else:
                assert stage == REWRITE_SECRETS
                count = await rewrite_secrets(self._kube)
                detail = {"secrets": count}
            journal = Journal(journal.id, journal.old, journal.new, (*journal.done, stage))
            self._record(
                STAGE_DONE,
                journal,
                f"encryption-key rotation {journal.id}: stage {stage} done",
                stage=stage,
                **detail,
            )
            self._say(f"  stage {stage} done: {detail}")
            failpoints.hit(f"rotate.{stage}.after")
        return self._finish(journal)

    def _finish(self, journal: Journal) -> Journal:
        promote(self._state, next_key(self._state, journal.new))
        self._record(
            FINISHED,
            journal,
            f"encryption-key rotation {journal.id} finished: every Secret is stored under "
            f"{journal.new}; {journal.old} is gone from every control plane and the state "
            "directory",
        )
        return journal

    async def _put_everywhere(self, keys: Sequence[Key]) -> list[str]:
        """The configuration on every control-plane machine, then the settle time for the API
        servers to read it."""
        machines: list[Machine] = []
        for pool in self._cluster.pools:
            if pool.role is Role.CONTROL_PLANE:
                found = await self._provider.list_machines(
                    ownership_tags(self._cluster.name, pool.name)
                )
                machines += _control_planes(found)
        if not machines:
            raise PermanentError(f"cluster {self._cluster.name} has no control-plane machine")
        files = [config_file(self._provider_name, keys)]
        for machine in machines:
            address = address_of(machine, self._cluster.ssh.address)
            if address is None:
                raise PermanentError(
                    f"{machine.name} has no {self._cluster.ssh.address} address to reach it on"
                )
            await self._push.push(machine, address, files)
        await self._clock.sleep(self._settle)
        return [m.name for m in machines]


CA_STEPS = (
    "generate the new CA (key and certificate) beside the old one in the state directory",
    "distribute a bundle of both CA certificates to every node's trust "
    "(/etc/kubernetes/pki/ca.crt on control planes, the kubelets' client CA) and to every "
    "kubeconfig; restart kube-apiserver, controller-manager and scheduler one control plane at "
    "a time",
    "update the service-account token issuer trust: restart pods that mount the old root "
    "(kube-root-ca.crt ConfigMaps are refreshed by the controller-manager)",
    "re-issue the API server, kubelet and front-proxy certificates from the new CA "
    "(`kubeadm certs renew` on each control plane; kubelet client certificates by rotation)",
    "once every component trusts and presents the new CA: remove the old CA from the bundles, "
    "last, and restart the control-plane components again",
)


def plan_ca_rotation(
    store: Store, cluster: ClusterConfig, *, clock: Clock, say: Callable[[str], None]
) -> None:
    """``healer rotate ca``: the staged procedure, printed and journalled (``rotation.ca_planned``);
    healer does not carry it out yet (docs/operations.md, "Rotating the cluster CA")."""
    say(f"cluster {cluster.name}: rotating the cluster CA, staged as Kubernetes documents it:")
    for i, step in enumerate(CA_STEPS, 1):
        say(f"  {i}. {step}")
    say("  healer prints and records this plan; carry it out by hand (docs/operations.md)")
    Recorder(store, clock=clock, log=log).record(
        CA_PLANNED,
        cluster=cluster.name,
        reason="CaRotation",
        message=f"CA rotation of {cluster.name} planned ({len(CA_STEPS)} stages), not automated",
        evidence={"kind": "ca", "stages": list(CA_STEPS)},
    )


def run_rotate(args: argparse.Namespace, *, config_path: str, state_dir: Path) -> int:
    """``healer rotate encryption-key|ca``: 0 done, 1 failed (the journal says where)."""
    from healer.provisioning.commands import _clusters, _open

    config = load_config(config_path)
    clusters = _clusters(config, args.cluster, config_path)
    if len(clusters) != 1:
        names = ", ".join(c.name for c in clusters)
        raise ConfigError(f"{config_path}: --cluster is needed (clusters: {names})")
    (cluster,) = clusters
    configure(config.log_format)  # progress events on stderr; the stages on stdout

    def say(line: str) -> None:
        print(line, flush=True)

    async def encryption_key() -> None:
        if cluster.kubeconfig is None:
            raise ConfigError(f"cluster {cluster.name}: rewriting Secrets needs its kubeconfig")
        with exclusive(state_dir, what=f"cluster {cluster.name}: the key rotation"):
            store = open_store(state_dir, config.state)
            provider = await _open(cluster, state_dir)
            clock = RealClock.resume(state_dir)
            kube = await KubeClient.from_kubeconfig(
                cluster.kubeconfig, cluster.context, clock=clock
            )
            try:
                state = ClusterState(state_dir, cluster.name)
                rotation = EncryptionKeyRotation(
                    cluster=cluster,
                    provider=provider,
                    kube=kube,
                    store=store,
                    state=state,
                    push=config_push(state, cluster),
                    clock=clock,
                    settle=float(args.settle),
                    say=say,
                )
                journal = await rotation.run()
            finally:
                await kube.close()
                await provider.close()
                store.close()
        say(f"cluster {cluster.name}: rotation {journal.id} finished; the key is now {journal.new}")

    try:
        if args.what == "ca":
            with exclusive(state_dir, what=f"cluster {cluster.name}: the CA rotation plan"):
                store = open_store(state_dir, config.state)
                try:
                    plan_ca_rotation(store, cluster, clock=RealClock.resume(state_dir), say=say)
                finally:
                    store.close()
            return 0
        asyncio.run(encryption_key())
    except HealerError as exc:
        print(f"healer rotate: {exc}", file=sys.stderr)
        return 1
    return 0
