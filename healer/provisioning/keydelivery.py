"""Key delivery: a control-plane machine's keys reach it over SSH, never through its user data.

User data is served by the cloud's metadata service to anything on the machine that can reach it
(on EC2 with IMDSv1, any pod), and it is kept by the cloud for the machine's whole life. So the
cluster's CA keys, the service-account key and the EncryptionConfiguration
(:meth:`~healer.provisioning.kubeadm.machine.KubeadmBuilder.key_files`) travel another way:

1. healer creates the machine; its user data holds the bootstrap script, the kubeadm documents
   and the bootstrap token only;
2. :class:`KeyDelivery` finds the machine's address and, through a :class:`KeyPush`, writes the
   keys into place, root-only (0600), the list of them (``KEYS_READY``) last;
3. the machine's bootstrap script waits (``kubernetes.keyWait``, logging why) for every listed
   file before it runs ``kubeadm init`` or ``join``.

The push is :class:`SshPush`: the system ``ssh`` client (no SSH library), the cluster's own key,
the login user with ``sudo -n``, one tar archive on stdin that ``tar`` unpacks as root: the
secrets never appear on a command line or in a log. The machine's host key is recorded on first
use under the machine's name (``HostKeyAlias``) in ``<state>/clusters/<c>/ssh/known_hosts``, so
a later replacement at the same address is not mistaken for it. A machine without a public
address is reached through ``ssh.proxyJump`` (a bastion) or from a management host inside the
network (see docs/provisioning.md, "Key delivery").

A push is idempotent: the machine skips it when its ``KEYS_READY`` is already there, and healer
records each delivered machine (``<state>/clusters/<c>/kubeadm/keys-delivered/<id>``), so
``apply`` pushes to exactly the control-plane machines still waiting, including those a failed
earlier run left behind. :class:`DirectoryPush` unpacks the same archive into a directory per
machine: the lab's machines (``<state dir>/lab-machines/<name>/``) and the tests'.
"""

from __future__ import annotations

import asyncio
import io
import os
import shlex
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import structlog
from tenacity import RetryCallState

from healer.backoff import call, retrying
from healer.clock import Clock, RealClock
from healer.cloud.machines import Machine, Provider
from healer.config import ClusterConfig, SshConfig
from healer.errors import ConfigError, TemporaryError
from healer.model import Role
from healer.naming import ownership_tags
from healer.provisioning.keystore import ClusterState, write_private
from healer.provisioning.kubeadm.machine import KEYS_READY, KubeadmBuilder
from healer.provisioning.kubeadm.tokens import ensure_secrets
from healer.provisioning.machinefiles import MachineFile
from healer.provisioning.pki import ClusterPki
from healer.provisioning.sshkeys import ensure_ssh_key

log = structlog.get_logger("healer.provisioning")

# How long a push keeps trying a machine that is still booting (sshd not up, the login user not
# created yet): a little less than the machine's own wait (kubernetes.keyWait, 30 min default).
PUSH_PATIENCE = 1500.0
SSH_TIMEOUT = 120.0  # one attempt, connect and copy


class KeyDeliveryError(TemporaryError):
    """The keys could not be delivered (yet): the machine is unreachable or refused them."""


class KeyPush(Protocol):
    """Writes files onto one machine, each with its mode, owned by root; ``files`` end with the
    ``KEYS_READY`` list. One attempt: the caller retries. Raises :class:`KeyDeliveryError`."""

    async def push(self, machine: Machine, address: str, files: Sequence[MachineFile]) -> None: ...


def pack(files: Sequence[MachineFile]) -> bytes:
    """One tar archive of ``files`` in order, owned by root with their modes, mtime 0. Only
    files: directories missing on the machine are created by ``tar`` under its umask."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for f in files:
            info = tarfile.TarInfo(f.path.lstrip("/"))
            info.size = len(f.content)
            info.mode = int(f.mode, 8)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            archive.addfile(info, io.BytesIO(f.content))
    return buffer.getvalue()


def remote_command(*, root: str = "/", sudo: bool = True) -> str:
    """What the machine runs with the archive on stdin: nothing when ``KEYS_READY`` is already
    there (a second push must not replace keys a running control plane uses), else unpack as
    root, modes as archived, new directories 0700."""
    ready = shlex.quote(os.path.join(root, KEYS_READY.lstrip("/")))
    script = (
        f"umask 077; if [ -s {ready} ]; then cat >/dev/null; echo healer-keys: already; "
        f"else tar -x -p -f - -C {shlex.quote(root)} && echo healer-keys: written; fi"
    )
    return ("sudo -n " if sudo else "") + "sh -c " + shlex.quote(script)


class SshPush:
    """The push over SSH with the system client. ``identity``: the private key (None: ssh-agent
    or the client's own configuration)."""

    def __init__(
        self,
        *,
        user: str,
        known_hosts: Path,
        identity: Path | None = None,
        port: int = 22,
        proxy_jump: str | None = None,
        sudo: bool = True,
        root: str = "/",
        ssh: str = "ssh",
        extra_options: Sequence[str] = (),
        timeout: float = SSH_TIMEOUT,
    ) -> None:
        self.user = user
        self.known_hosts = known_hosts
        self.identity = identity
        self.port = port
        self.proxy_jump = proxy_jump
        self.sudo = sudo
        self.root = root
        self.ssh = ssh
        self.extra_options = tuple(extra_options)
        self.timeout = timeout

    @classmethod
    def for_cluster(cls, state: ClusterState, ssh: SshConfig) -> SshPush:
        key = ensure_ssh_key(state, ssh)
        identity = ssh.private_key_file or (key.private_key_path if key else None)
        return cls(
            user=ssh.user,
            known_hosts=state.path("ssh", "known_hosts"),
            identity=identity.expanduser() if identity else None,
            port=ssh.port,
            proxy_jump=ssh.proxy_jump,
            sudo=ssh.user != "root",
        )

    def argv(self, machine: Machine, address: str) -> list[str]:
        """The ``ssh`` command line: no secret on it, only where and how to connect."""
        argv = [
            self.ssh,
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", f"HostKeyAlias={machine.name}",
            "-o", "ConnectTimeout=15",
            "-o", "ServerAliveInterval=10",
            "-o", "ServerAliveCountMax=3",
            "-o", "LogLevel=ERROR",
            "-p", str(self.port),
            "-l", self.user,
        ]  # fmt: skip
        if self.identity is not None:
            argv += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        if self.proxy_jump:
            argv += ["-J", self.proxy_jump]
        for option in self.extra_options:
            argv += ["-o", option]
        return [*argv, "--", address, remote_command(root=self.root, sudo=self.sudo)]

    async def push(self, machine: Machine, address: str, files: Sequence[MachineFile]) -> None:
        archive = pack(files)
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv(machine, address),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise ConfigError(f"key push: cannot run {self.ssh!r}: {exc.strerror}") from exc
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a stop that comes as
            # ssh ends (gh-86296), and the push would go on as if healer were not stopping.
            async with asyncio.timeout(self.timeout):
                out, err = await process.communicate(archive)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise KeyDeliveryError(
                f"key push to {machine.name} ({address}): no answer within {self.timeout:.0f}s"
            ) from None
        except asyncio.CancelledError:  # healer is stopping: leave no ssh behind
            if process.returncode is None:
                process.kill()
            raise
        if process.returncode != 0:
            detail = "; ".join(err.decode(errors="replace").split("\n")).strip("; ")
            raise KeyDeliveryError(
                f"key push to {machine.name} ({address}): ssh exited {process.returncode}: "
                + (detail[-400:] or "no message")
            )
        log.debug(
            "provisioning.keys_pushed_ssh",
            node=machine.name,
            address=address,
            answer=out.decode(errors="replace").strip(),
        )


class DirectoryPush:
    """The push into a directory per machine (``<root>/<machine name>/``): the same archive,
    unpacked locally with tarfile's ``data`` filter. For the lab and for tests."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def machine_root(self, machine: Machine) -> Path:
        return self.root / machine.name

    async def push(self, machine: Machine, address: str, files: Sequence[MachineFile]) -> None:
        target = self.machine_root(machine)
        ready = target / KEYS_READY.lstrip("/")
        if ready.exists() and ready.stat().st_size:
            return
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        target.mkdir(mode=0o700, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(pack(files))) as archive:
            await asyncio.to_thread(archive.extractall, target, filter="data")


def address_of(machine: Machine, which: str) -> str | None:
    """The address healer connects to: the first private one, or with ``ssh.address: public``
    the first public one (``extra["public_ips"]``, as the libcloud plugins report it)."""
    if which == "public":
        public = machine.extra.get("public_ips") or ()
        return str(public[0]) if public else None
    return machine.private_ips[0] if machine.private_ips else None


PushFactory = Callable[[ClusterState, ClusterConfig], KeyPush]
LAB_MACHINES = "lab-machines"  # under the state dir: the lab's machines have no sshd


def default_push(
    state: ClusterState,
    cluster: ClusterConfig,
    *,
    ssh: type[SshPush] = SshPush,
    directory: type[DirectoryPush] = DirectoryPush,
) -> KeyPush:
    """``ssh`` with the cluster's key, except for the lab's machines (rows in its database):
    ``directory``, into ``<state dir>/lab-machines/<machine>/``. A push that replaces files
    (a key rotation) passes its own two classes."""
    if cluster.provider.plugin == "lab":
        return directory(state.state_dir / LAB_MACHINES)
    return ssh.for_cluster(state, cluster.ssh)


class KeyDelivery:
    """Delivers control-plane keys to the machines of one state dir's clusters."""

    def __init__(
        self,
        state_dir: Path,
        *,
        push: PushFactory = default_push,
        clock: Clock | None = None,
        patience: float = PUSH_PATIENCE,
    ) -> None:
        self._state_dir = Path(state_dir)
        self._push = push
        self._clock = clock or RealClock()
        self._patience = patience

    def _record(self, state: ClusterState, machine: Machine) -> Path:
        return state.path("kubeadm", "keys-delivered", machine.id.replace("/", "_"))

    def delivered(self, cluster: ClusterConfig, machine: Machine) -> bool:
        return self._record(ClusterState(self._state_dir, cluster.name), machine).exists()

    async def deliver(self, cluster: ClusterConfig, machine: Machine, provider: Provider) -> bool:
        """Push the keys to ``machine`` (a control-plane machine of ``cluster``), retrying while
        it boots, for up to the patience. False when it already had them by healer's record."""
        k8s = cluster.kubernetes
        if k8s is None:
            return False
        state = ClusterState(self._state_dir, cluster.name)
        record = self._record(state, machine)
        if record.exists():
            return False
        builder = KubeadmBuilder(state, cluster)
        files = builder.key_files(ClusterPki(state), ensure_secrets(state, k8s))
        pusher = self._push(state, cluster)
        started = self._clock.now()

        async def attempt() -> None:
            current = await provider.get_machine(machine.name)
            found = current if current is not None and current.id == machine.id else machine
            address = address_of(found, cluster.ssh.address)
            if address is None:
                raise KeyDeliveryError(
                    f"key push to {machine.name}: it has no {cluster.ssh.address} address yet"
                )
            await pusher.push(found, address, files)

        def waiting(state_: RetryCallState) -> None:
            error = state_.outcome.exception() if state_.outcome else None
            log.info(
                "provisioning.keys_waiting",
                cluster=cluster.name,
                node=machine.name,
                attempt=state_.attempt_number,
                wait=round(state_.upcoming_sleep, 1),
                error=str(error),
            )

        policy = retrying(
            self._clock,
            first=5.0,
            cap=30.0,
            deadline=started + self._patience,
            retry_on=(KeyDeliveryError,),
            before_sleep=waiting,
        )
        try:
            await call(policy, attempt)
        except KeyDeliveryError as exc:
            log.warning(
                "provisioning.keys_undelivered",
                cluster=cluster.name,
                node=machine.name,
                error=str(exc),
                hint="the machine waits for its keys (kubernetes.keyWait); run `healer apply` "
                "again once healer can reach it over SSH (ssh.proxyJump, ssh.address)",
            )
            raise
        write_private(record, f"{machine.name}\n".encode())
        log.info(
            "provisioning.keys_delivered",
            cluster=cluster.name,
            node=machine.name,
            files=len(files),
            after=round(self._clock.now() - started, 1),
        )
        return True

    async def deliver_to(
        self, cluster: ClusterConfig, pool: str, machine: Machine, provider: Provider
    ) -> bool:
        """:meth:`deliver` if ``pool`` is a control-plane pool of a kubeadm cluster: the hook the
        workflow runner calls for a replacement machine before it waits for the node."""
        found = cluster.pool(pool)
        if found is None or found.role is not Role.CONTROL_PLANE:
            return False
        return await self.deliver(cluster, machine, provider)

    async def deliver_pending(self, cluster: ClusterConfig, provider: Provider) -> list[str]:
        """Every control-plane machine of ``cluster`` that has not had its keys yet, pushed to
        concurrently; the names delivered. The first failure is raised once all have tried."""
        if cluster.kubernetes is None:
            return []
        pending: list[Machine] = []
        for pool in cluster.pools:
            if pool.role is not Role.CONTROL_PLANE:
                continue
            for machine in await provider.list_machines(ownership_tags(cluster.name, pool.name)):
                if not self.delivered(cluster, machine):
                    pending.append(machine)
        results = await asyncio.gather(
            *(self.deliver(cluster, m, provider) for m in pending), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [m.name for m, ok in zip(pending, results, strict=True) if ok is True]
