"""The lab's etcd: a real etcd member (Debian ``etcd-server``) for every running control-plane
machine, on loopback ports, so that lab scenarios exercise the real membership API.

Members come and go as kubeadm makes them: the first control-plane machine starts a new
cluster (``kubeadm init``); every later one -- the initial second and third, and a replacement
-- is added through a healthy member and started with ``--initial-cluster-state existing``
(``kubeadm join --control-plane``). A machine that is powered off takes its member down (its
data stays); a destroyed one loses its data directory. Joins run one at a time.

TLS as kubeadm sets it up: the members' serving and peer certificates, and healer's client
certificate, are signed by the cluster's etcd CA in the lab's state directory
(``clusters/<cluster>/pki/etcd/ca.crt``, :mod:`healer.provisioning.pki`), and the members
require client certificates.

Without an etcd binary the lab falls back to :class:`FakeLabEtcd` (members follow the
machines, in memory) and says so (``lab.etcd_fake``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from healer.etcd import DirectEndpoints, EtcdClient, EtcdTls, EtcdUnavailable
from healer.lab.ports import free_port
from healer.planner.etcd_quorum import EtcdMember, EtcdView
from healer.provisioning.etcd_access import issue_etcd_cert
from healer.provisioning.keystore import ClusterState
from healer.provisioning.pki import ETCD_CA, CertKey, ClusterPki

log = structlog.get_logger("healer.lab")

ETCD_BINARIES = ("/usr/bin/etcd", "/usr/local/bin/etcd")
# Fast elections: a lab member taken down is noticed in a second, not ten.
ELECTION_TIMEOUT = 0.5  # seconds: the lab's members elect a new leader this fast
FAST = ("--heartbeat-interval=50", f"--election-timeout={round(ELECTION_TIMEOUT * 1000)}")


def etcd_binary() -> str | None:
    """The etcd program: ``$HEALER_ETCD_BINARY`` when set (a path that is not an executable,
    e.g. ``none``, means no etcd: the fake), else ``etcd`` on the PATH or in /usr/bin."""
    named = os.environ.get("HEALER_ETCD_BINARY")
    if named is not None:
        return named if os.access(named, os.X_OK) else None
    found = shutil.which("etcd")
    if found:
        return found
    return next((b for b in ETCD_BINARIES if os.access(b, os.X_OK)), None)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the lab (or test) process dies, however it
    dies, so no member outlives its lab."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def write_member_tls(ca: CertKey, directory: Path, *, client_name: str) -> EtcdTls:
    """The members' certificate (server + client, 127.0.0.1/localhost) and a client's, signed
    by ``ca``, written to ``directory``; the client's TLS returned."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    member = issue_etcd_cert(
        ca, common_name="etcd-member", ips=("127.0.0.1",), dns=("localhost",), server=True
    )
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    (directory / "member.crt").write_bytes(member.cert_pem)
    key = directory / "member.key"
    key.write_bytes(member.key_pem())
    key.chmod(0o600)
    client = issue_etcd_cert(ca, common_name=client_name)
    return EtcdTls(ca.cert_pem, client.cert_pem, client.key_pem())


class EtcdProcess:
    """One etcd member process on loopback, TLS for clients and peers."""

    def __init__(
        self,
        *,
        binary: str,
        name: str,
        data_dir: Path,
        tls_dir: Path,
        client_port: int,
        peer_port: int,
    ) -> None:
        self.binary = binary
        self.name = name
        self.data_dir = data_dir
        self.tls_dir = tls_dir
        self.client_url = f"https://127.0.0.1:{client_port}"
        self.peer_url = f"https://127.0.0.1:{peer_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def exited(self) -> str | None:
        """None while the process runs (or was never started); otherwise how it ended, with
        the last lines of its log."""
        code = None if self.proc is None else self.proc.poll()
        if code is None:
            return None
        try:
            tail = self.log_file.read_bytes()[-600:].decode(errors="replace").strip()
        except OSError:
            tail = ""
        return f"etcd member {self.name} exited with {code}" + (f": {tail}" if tail else "")

    def start(self, *, initial_cluster: str, state: str) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        t = self.tls_dir
        args = [
            self.binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={initial_cluster}",
            f"--initial-cluster-state={state}",
            "--initial-cluster-token=healer-lab",
            f"--cert-file={t / 'member.crt'}",
            f"--key-file={t / 'member.key'}",
            f"--trusted-ca-file={t / 'ca.crt'}",
            "--client-cert-auth",
            f"--peer-cert-file={t / 'member.crt'}",
            f"--peer-key-file={t / 'member.key'}",
            f"--peer-trusted-ca-file={t / 'ca.crt'}",
            "--peer-client-cert-auth",
            "--logger=zap",
            "--log-level=error",
            *FAST,
        ]
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def kill(self) -> None:
        """SIGKILL, as a machine losing power; waits for the process to be gone."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


async def wait_healthy(
    client: EtcdClient,
    names: Sequence[str],
    *,
    timeout: float,
    procs: Sequence[EtcdProcess] = (),
) -> EtcdView:
    """Until every member named is started and healthy (real time: etcd runs in real time).
    ``procs``, the processes of those members: one that exits ends the wait at once
    (RuntimeError saying how it ended) rather than at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        view = await client.view()
        healthy = {m.name for m in view.members if m.healthy}
        if view.reachable and set(names) <= healthy:
            return view
        for proc in procs:
            if (ended := proc.exited()) is not None:
                raise RuntimeError(ended)
        if time.monotonic() > deadline:
            raise TimeoutError(f"etcd members {sorted(names)} not healthy: {view.describe()}")
        await asyncio.sleep(0.1)


async def join_member(client: EtcdClient, proc: EtcdProcess, *, timeout: float = 20.0) -> None:
    """``kubeadm join --control-plane``'s etcd part: add ``proc``'s member through a healthy
    member (retried: etcd refuses a change while it judges itself unhealthy, e.g. just after
    another one), start it with ``--initial-cluster-state existing``, wait until it is healthy."""
    deadline = time.monotonic() + timeout
    while True:
        view = await client.view()
        added = any(m.peer_urls == (proc.peer_url,) for m in view.members)
        if added:
            break
        try:
            await client.add_member(view, [proc.peer_url])
        except EtcdUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    peers = [
        f"{m.name or proc.name}={m.peer_urls[0]}"
        for m in view.members
        if m.peer_urls and (m.started or m.peer_urls == (proc.peer_url,))
    ]
    proc.start(initial_cluster=",".join(peers), state="existing")
    await wait_healthy(
        client, [proc.name], timeout=max(1.0, deadline - time.monotonic()), procs=[proc]
    )


class LabEtcd:
    """The real members of one lab cluster, following its control-plane machines."""

    def __init__(self, *, binary: str, state_dir: Path, cluster: str, pool_size: int) -> None:
        self.binary = binary
        self.cluster = cluster
        self.root = state_dir / "etcd"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca = ClusterPki(ClusterState(state_dir, cluster)).ca(ETCD_CA)
        self.tls = write_member_tls(ca, self.root / "tls", client_name="lab-etcd-admin")
        self._ports_file = self.root / "ports.json"
        self._ports: dict[str, Any] = self._load_ports(pool_size)
        self.procs: dict[str, EtcdProcess] = {}
        self._joins: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self.client = EtcdClient(
            cluster=cluster, endpoints=DirectEndpoints(self.seeds()), tls=self.tls, timeout=2.0
        )

    # -- ports: a slot (client + peer port) per member, never reused: a member left behind by a
    # destroyed machine keeps its peer URL in the membership, and etcd refuses a second one.
    def _load_ports(self, pool_size: int) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._ports_file.read_text())
        except (FileNotFoundError, ValueError):
            data = {"slots": [], "members": {}}
        while len(data["slots"]) < pool_size:
            data["slots"].append([free_port(), free_port()])
        self._save(data)
        return data

    def _save(self, data: dict[str, Any]) -> None:
        tmp = self._ports_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self._ports_file)

    def seeds(self) -> list[str]:
        """Every slot's client URL: the endpoints the daemon's config names."""
        return [f"https://127.0.0.1:{c}" for c, _ in self._ports["slots"]]

    def _slot(self, name: str) -> tuple[int, int]:
        members: dict[str, int] = self._ports["members"]
        if name not in members:
            used = set(members.values())
            free = next((i for i in range(len(self._ports["slots"])) if i not in used), None)
            if free is None:
                self._ports["slots"].append([free_port(), free_port()])
                free = len(self._ports["slots"]) - 1
            members[name] = free
            self._save(self._ports)
        client, peer = self._ports["slots"][members[name]]
        return int(client), int(peer)

    def _proc(self, name: str) -> EtcdProcess:
        proc = self.procs.get(name)
        if proc is None:
            client, peer = self._slot(name)
            proc = EtcdProcess(
                binary=self.binary,
                name=name,
                data_dir=self._data(name),
                tls_dir=self.root / "tls",
                client_port=client,
                peer_port=peer,
            )
            self.procs[name] = proc
        return proc

    # -- the machines ------------------------------------------------------------------------
    def sync(self, machines: Sequence[tuple[str, str]]) -> None:
        """Follow the control-plane machines ``(name, state)``: start a member for a running
        one, stop it for one that is off, forget it for one destroyed."""
        for name, state in machines:
            proc = self.procs.get(name)
            if state == "running":
                if (proc is None or not proc.running) and name not in self._joins:
                    self._joins[name] = asyncio.create_task(self._up(name), name=f"etcd-{name}")
            elif proc is not None and proc.running:
                proc.kill()
                log.info("lab.etcd_member_down", node=name, machine_state=state)
            if state == "terminated" and (name in self.procs or self._data(name).exists()):
                # Destroyed: its disk is gone. Its member stays in etcd unless healer removed it.
                self.procs.pop(name, None)
                shutil.rmtree(self._data(name), ignore_errors=True)

    def _data(self, name: str) -> Path:
        return self.root / "members" / name

    async def _up(self, name: str) -> None:
        try:
            async with self._lock:
                restarted = await self._start_member(name)
            if restarted:
                # Waited for outside the lock: a member restarted on its data is healthy only
                # once a quorum of its cluster is back, and the others start meanwhile (held
                # behind the lock, the first one waited its whole timeout on the lab's restart).
                await wait_healthy(self.client, [name], timeout=20.0, procs=[self.procs[name]])
        except Exception as exc:
            log.warning("lab.etcd_join_failed", node=name, error=str(exc))
        finally:
            self._joins.pop(name, None)

    async def _start_member(self, name: str) -> bool:
        """Start ``name``'s member: a new cluster, a join, or (True) a restart on its data."""
        proc = self._proc(name)
        others = [p for n, p in self.procs.items() if n != name and p.running]
        if (proc.data_dir / "member").exists():
            proc.start(initial_cluster=f"{name}={proc.peer_url}", state="existing")
            log.info("lab.etcd_member_restarted", node=name)
            return True
        if not others:
            proc.start(initial_cluster=f"{name}={proc.peer_url}", state="new")
            await wait_healthy(self.client, [name], timeout=20.0, procs=[proc])
            log.info("lab.etcd_cluster_started", node=name, client_url=proc.client_url)
        else:
            await join_member(self.client, proc)
            log.info("lab.etcd_member_joined", node=name)
        return False

    async def stop(self) -> None:
        for task in self._joins.values():
            task.cancel()
        await asyncio.gather(*self._joins.values(), return_exceptions=True)
        for proc in self.procs.values():
            proc.kill()
        await self.client.close()


class FakeLabEtcd:
    """The lab's etcd without an etcd binary: one member per control-plane machine that ever
    ran, healthy while it runs, removed when healer removes it. The same answers as
    :class:`~healer.etcd.EtcdClient` (:class:`EtcdView`), none of its protocol."""

    def __init__(self, *, cluster: str) -> None:
        self.cluster = cluster
        self._members: dict[str, EtcdMember] = {}
        self._running: set[str] = set()
        self._next = 0x1000
        log.warning(
            "lab.etcd_fake",
            cluster=cluster,
            detail="no etcd binary (Debian package etcd-server): the lab's etcd is an in-memory "
            "fake; install it for real members",
        )

    def sync(self, machines: Sequence[tuple[str, str]]) -> None:
        self._running = {name for name, state in machines if state == "running"}
        for name in sorted(self._running):
            if name not in self._members:
                self._next += 1
                url = f"https://fake-{name}:2379"
                self._members[name] = EtcdMember(self._next, name, (url,), (url,), True)

    async def view(self) -> EtcdView:
        members = tuple(
            EtcdMember(**{**m.__dict__, "healthy": m.name in self._running})
            for m in self._members.values()
        )
        leader = next((m.id for m in members if m.healthy), None)
        return EtcdView(members=members, leader=leader)

    async def remove_member(self, view: EtcdView, member_id: int) -> bool:
        for name, m in list(self._members.items()):
            if m.id == member_id:
                del self._members[name]
                return True
        return False

    async def stop(self) -> None:
        return None
