"""The key push over real SSH (the system client against a real sshd on 127.0.0.1), the
bootstrap script waiting for the keys and installing the pod network, and unattended-upgrades
limited to security origins as apt itself reads the configuration."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from healer.cloud.machines import Machine, MachineState
from healer.config import ClusterConfig
from healer.provisioning.keydelivery import (
    DirectoryPush,
    KeyDelivery,
    KeyDeliveryError,
    SshPush,
    pack,
)
from healer.provisioning.keystore import ClusterState
from healer.provisioning.kubeadm.machine import KEYS_READY, KUBEADM_CONFIG, KubeadmBuilder
from healer.provisioning.machinefiles import MachineFile
from healer.provisioning.sshkeys import ensure_ssh_key
from healer.provisioning.userdata import unattended_upgrades_conf
from tests.ports import free_port
from tests.provisioning_support import SSHD, kube_cluster, require_program, sshd_host_key

MANIFEST = """\
kind: DaemonSet
spec:
  template:
    spec:
      containers:
        - name: calico-node
          env:
            # - name: CALICO_IPV4POOL_CIDR
            #   value: "192.168.0.0/16"
            - name: FELIX_LOGSEVERITYSCREEN
              value: "info"
"""


def _machine(name: str, address: str = "127.0.0.1") -> Machine:
    return Machine(id=f"i-{name}", name=name, state=MachineState.RUNNING, tags={},
                   private_ips=(address,))  # fmt: skip


# -- a real sshd on loopback --------------------------------------------------------------------


class Sshd:
    def __init__(self, tmp: Path, authorized: str, host_key: Path) -> None:
        require_program(SSHD, "openssh-server")
        if os.geteuid() != 0:
            pytest.skip("a loopback sshd that logs in as the test's user needs root (as in CI)")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.port = free_port()
        (tmp / "authorized_keys").write_text(authorized + "\n")
        config = tmp / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
            f"PidFile {tmp}/sshd.pid\nAuthorizedKeysFile {tmp}/authorized_keys\n"
            "StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "AuthenticationMethods publickey\n"
        )
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"sshd did not start: {self.process.stderr.read()!r}")  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture
def cluster() -> ClusterConfig:
    return kube_cluster(ssh={"user": "root"})


@pytest.fixture
def sshd(tmp_path: Path, cluster: ClusterConfig) -> Iterator[Sshd]:
    key = ensure_ssh_key(ClusterState(tmp_path / "state", "prod"), cluster.ssh)
    assert key is not None
    daemon = Sshd(tmp_path, key.public_key, sshd_host_key(tmp_path))
    try:
        yield daemon
    finally:
        daemon.stop()


def _pusher(tmp_path: Path, cluster: ClusterConfig, port: int) -> SshPush:
    state = ClusterState(tmp_path / "state", "prod")
    push = SshPush.for_cluster(state, cluster.ssh.model_copy(update={"port": port}))
    push.root = str(tmp_path / "machine")  # the machine's "/": the test must not write /etc
    (tmp_path / "machine").mkdir(exist_ok=True)
    return push


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, timeout=30)  # fmt: skip


class _OneMachine:
    """A provider that knows one machine (KeyDelivery re-reads it for its address)."""

    name = "fake"

    def __init__(self, machine: Machine) -> None:
        self.machine = machine

    async def get_machine(self, name: str) -> Machine | None:
        return self.machine if name == self.machine.name else None

    async def list_machines(self, tags: object) -> list[Machine]:
        return [self.machine]


async def test_keys_reach_the_machine_over_ssh_root_only_and_only_once(
    tmp_path: Path, cluster: ClusterConfig, sshd: Sshd
) -> None:
    state_dir = tmp_path / "state"
    machine = _machine("prod-cp-aaaaa")
    delivery = KeyDelivery(
        state_dir, push=lambda _s, c: _pusher(tmp_path, c, sshd.port), patience=0
    )
    provider = _OneMachine(machine)
    assert await delivery.deliver(cluster, machine, provider) is True  # type: ignore[arg-type]
    root = tmp_path / "machine"
    listed = (root / KEYS_READY.lstrip("/")).read_text().splitlines()
    state = ClusterState(state_dir, "prod")
    assert (root / "etc/kubernetes/pki/ca.key").read_bytes() == (
        state.root / "pki" / "ca.key"
    ).read_bytes()
    for path in [*listed, KEYS_READY]:
        mode = (root / path.lstrip("/")).stat().st_mode & 0o777
        assert mode == (0o644 if path.endswith((".crt", ".pub")) else 0o600), path
    # Directories the push creates are root-only too (umask 077).
    assert (root / "etc/kubernetes/encryption").stat().st_mode & 0o077 == 0
    # The host key is recorded under the machine's name, not its address.
    known = state.root / "ssh" / "known_hosts"
    for host, found in (("prod-cp-aaaaa", True), ("127.0.0.1", False)):
        lookup = await asyncio.to_thread(
            subprocess.run, ["ssh-keygen", "-F", host, "-f", str(known)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert (lookup.returncode == 0) is found, (host, lookup.stdout)
    # Recorded as delivered: no second push; and a push by hand never replaces keys in use.
    assert await delivery.deliver(cluster, machine, provider) is False  # type: ignore[arg-type]
    before = (root / "etc/kubernetes/pki/ca.key").read_bytes()
    other = [MachineFile("/etc/kubernetes/pki/ca.key", b"other", mode="0600")]
    await _pusher(tmp_path, cluster, sshd.port).push(machine, "127.0.0.1", other)
    assert (root / "etc/kubernetes/pki/ca.key").read_bytes() == before


async def test_a_refused_key_or_a_changed_host_key_is_a_clear_error(
    tmp_path: Path, cluster: ClusterConfig, sshd: Sshd
) -> None:
    files = [MachineFile(KEYS_READY, b"", mode="0600")]
    push = _pusher(tmp_path, cluster, sshd.port)
    stranger = tmp_path / "stranger"
    await asyncio.to_thread(_keygen, stranger)
    push.identity = stranger
    with pytest.raises(KeyDeliveryError, match=r"prod-cp-bbbbb \(127\.0\.0\.1\): ssh exited 255"):
        await push.push(_machine("prod-cp-bbbbb"), "127.0.0.1", files)
    # Another machine once answered at this name with a different host key: refused.
    known = tmp_path / "state" / "clusters" / "prod" / "ssh" / "known_hosts"
    fake_host = tmp_path / "fake_host"
    await asyncio.to_thread(_keygen, fake_host)
    known.write_text("prod-cp-ccccc " + fake_host.with_suffix(".pub").read_text())
    with pytest.raises(KeyDeliveryError, match="ssh exited 255"):
        await _pusher(tmp_path, cluster, sshd.port).push(
            _machine("prod-cp-ccccc"), "127.0.0.1", files
        )
    assert not (tmp_path / "machine" / KEYS_READY.lstrip("/")).exists()


def test_the_archive_carries_modes_and_root_ownership_and_no_directories() -> None:
    import io
    import tarfile

    files = [
        MachineFile("/etc/kubernetes/pki/ca.key", b"k", mode="0600", secret=True),
        MachineFile("/etc/kubernetes/pki/ca.crt", b"c"),
        MachineFile(KEYS_READY, b"/etc/kubernetes/pki/ca.key\n", mode="0600"),
    ]
    with tarfile.open(fileobj=io.BytesIO(pack(files))) as archive:
        members = archive.getmembers()
    assert [m.name for m in members] == [f.path.lstrip("/") for f in files]  # KEYS_READY last
    assert [m.mode for m in members] == [0o600, 0o644, 0o600]
    assert {(m.uid, m.gid, m.uname, m.isfile()) for m in members} == {(0, 0, "root", True)}


# -- the bootstrap script waits for the keys and installs the pod network -----------------------


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def _prepare(tmp_path: Path, *, manifest: str, sha: str | None = None) -> dict[str, object]:
    c = kube_cluster(kubernetes={"installPackages": False})
    state = ClusterState(tmp_path / "state", "prod")
    node = KubeadmBuilder(state, c).machine(c.pools[0], "prod-cp-1")
    assert node.mode == "init" and node.keys
    by_path = {f.path: f.content for f in node.files}
    root = tmp_path / "machines" / "prod-cp-1"
    config = root / KUBEADM_CONFIG.lstrip("/")
    config.parent.mkdir(parents=True)
    config.write_bytes(by_path[KUBEADM_CONFIG])
    (root / "etc/fstab").write_text("/swapfile none swap sw 0 0\n")
    env = by_path["/etc/healer/kubeadm/bootstrap.env"].decode()
    assert "CNI_MANIFEST_URL=https://raw.githubusercontent.com/projectcalico/calico/" in env
    assert "POD_SUBNET=10.244.0.0/16" in env
    env = env.replace(f"KUBEADM_CONFIG={KUBEADM_CONFIG}", f"KUBEADM_CONFIG={config}")
    env = re.sub(r"KEY_WAIT=\d+", "KEY_WAIT=2", env)
    real = hashlib.sha256(manifest.encode()).hexdigest()
    env = re.sub(r"CNI_MANIFEST_SHA256=\w+", f"CNI_MANIFEST_SHA256={sha or real}", env)
    (config.parent / "bootstrap.env").write_text(env)
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    (tmp_path / "manifest.yaml").write_text(manifest)
    for tool in ("swapoff", "modprobe", "sysctl", "kubeadm"):
        _stub(bin_dir, tool, f'echo "{tool} $*" >> {calls}\n')
    _stub(
        bin_dir,
        "curl",
        f'echo "curl $*" >> {calls}\nwhile [ $# -gt 0 ]; do\n'
        '  if [ "$1" = -o ]; then out="$2"; fi; shift\ndone\n'
        f'cp {tmp_path / "manifest.yaml"} "$out"\n',
    )
    _stub(
        bin_dir,
        "kubectl",
        f'echo "kubectl $*" >> {calls}\ncp "${{@: -1}}" {tmp_path / "applied.yaml"}\n',
    )
    script = tmp_path / "healer-bootstrap"
    script.write_bytes(by_path["/usr/local/sbin/healer-bootstrap"])
    return {"node": node, "root": root, "calls": calls, "script": script, "bin": bin_dir}


def _run(t: dict[str, object]) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{t['bin']}:/usr/bin:/bin",
        "HEALER_BOOTSTRAP_ROOT": str(t["root"]),
        "KEY_POLL": "0",
        "JOIN_RETRY_DELAY": "0",
    }
    return subprocess.run(["bash", str(t["script"])], env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


def _calls(t: dict[str, object]) -> list[str]:
    path = t["calls"]
    assert isinstance(path, Path)
    return [line.split()[0] + " " + line.split()[1] for line in path.read_text().splitlines()
            if line.split()[0] in ("kubeadm", "kubectl", "curl")] if path.exists() else []  # fmt: skip


def test_without_its_keys_the_first_control_plane_waits_then_stops_clearly(
    tmp_path: Path,
) -> None:
    t = _prepare(tmp_path, manifest=MANIFEST)
    result = _run(t)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "waiting up to 2s for the control-plane keys" in result.stdout
    assert "no keys after 2s" in result.stderr and "docs/provisioning.md" in result.stderr
    assert _calls(t) == []  # kubeadm never ran
    # Half a delivery (the list names a file that is not there) is still waited for.
    ready = Path(str(t["root"])) / KEYS_READY.lstrip("/")
    ready.parent.mkdir(parents=True, exist_ok=True)
    ready.write_text("/etc/kubernetes/pki/ca.key\n")
    assert _run(t).returncode == 3 and _calls(t) == []


async def test_with_its_keys_pushed_init_runs_and_the_checked_pod_network_is_applied(
    tmp_path: Path,
) -> None:
    t = _prepare(tmp_path, manifest=MANIFEST)
    node = t["node"]
    await DirectoryPush(tmp_path / "machines").push(_machine("prod-cp-1"), "", node.keys)  # type: ignore[attr-defined]
    result = _run(t)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _calls(t) == ["kubeadm init", "curl -fsSL", "kubectl --kubeconfig"]
    applied = (tmp_path / "applied.yaml").read_text()
    assert '- name: CALICO_IPV4POOL_CIDR\n              value: "10.244.0.0/16"' in applied
    # Run again (cloud-init re-runs, an operator retries): no second init, no second apply.
    kubelet = Path(str(t["root"])) / "etc/kubernetes/kubelet.conf"
    kubelet.write_text("joined")
    Path(str(t["calls"])).unlink()
    again = _run(t)
    assert again.returncode == 0 and "already part of the cluster" in again.stdout
    assert _calls(t) == []


def test_a_manifest_with_another_checksum_is_never_applied(tmp_path: Path) -> None:
    t = _prepare(tmp_path, manifest=MANIFEST, sha="0" * 64)
    root = Path(str(t["root"]))
    node = t["node"]
    for f in node.keys:  # type: ignore[attr-defined]
        target = root / f.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.content)
    result = _run(t)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "does not have sha256 " + "0" * 64 in result.stderr
    assert _calls(t) == ["kubeadm init", "curl -fsSL"]  # fetched, refused, not applied
    assert not (root / "etc/healer/kubeadm/cni-applied").exists()


# -- unattended-upgrades: security origins only, as apt reads it --------------------------------

DEBIAN_DEFAULT = """\
Unattended-Upgrade::Origins-Pattern {
        "origin=Debian,codename=${distro_codename},label=Debian";
        "origin=Debian,codename=${distro_codename},label=Debian-Security";
        "origin=Debian,codename=${distro_codename}-security,label=Debian-Security";
};
"""


def _origins(tmp_path: Path, ours: str) -> list[str]:
    apt_config = shutil.which("apt-config")
    if apt_config is None:
        pytest.skip("apt-config is not installed (Debian package apt)")
    parts = tmp_path / "apt.conf.d"
    parts.mkdir(exist_ok=True)
    (parts / "50unattended-upgrades").write_text(DEBIAN_DEFAULT)
    (parts / "52healer-unattended-upgrades").write_text(ours)
    main = tmp_path / "apt.conf"
    main.write_text(f'Dir::Etc::parts "{parts}";\nDir::Etc::main "/dev/null";\n')
    dump = subprocess.run([apt_config, "dump", "Unattended-Upgrade::Origins-Pattern"],
                          env={"APT_CONFIG": str(main), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    return re.findall(r'^Unattended-Upgrade::Origins-Pattern:: "(.*)";$', dump.stdout, re.M)


def test_upgrades_take_only_security_origins_as_apt_reads_them(tmp_path: Path) -> None:
    ours = unattended_upgrades_conf(automatic_reboot=None, agent_reboots=True)
    assert _origins(tmp_path, ours) == [
        "origin=Debian,codename=${distro_codename}-security,label=Debian-Security",
        "origin=Debian,codename=${distro_codename},label=Debian-Security",
    ]
    # Without the #clear lines apt would add ours to Debian's list, label=Debian included.
    unclear = "\n".join(ln for ln in ours.splitlines() if not ln.startswith("#clear"))
    assert "origin=Debian,codename=${distro_codename},label=Debian" in _origins(tmp_path, unclear)
    # Configurable: upgrades.origins replaces the list.
    custom = unattended_upgrades_conf(
        automatic_reboot=None, agent_reboots=True, origins=("origin=Debian,label=Custom",)
    )
    assert _origins(tmp_path, custom) == ["origin=Debian,label=Custom"]


def test_an_origin_that_would_break_the_apt_file_is_refused() -> None:
    from healer.config import parse_config
    from healer.errors import ConfigError

    doc = {"name": "p", "provider": {"plugin": "lab"}, "pools": [{"name": "w", "size": 1}],
           "upgrades": {"origins": ['origin=Debian"; "label=Debian']}}  # fmt: skip
    with pytest.raises((ConfigError, ValueError), match="Origins-Pattern"):
        parse_config({"clusters": [doc]})


async def test_the_runner_hook_pushes_to_control_plane_replacements_only(tmp_path: Path) -> None:
    c = kube_cluster(kubernetes={"installPackages": False})
    delivery = KeyDelivery(
        tmp_path / "state", push=lambda _s, _c: DirectoryPush(tmp_path / "m"), patience=0
    )
    worker, cp = _machine("prod-workers-x"), _machine("prod-cp-x")
    assert await delivery.deliver_to(c, "workers", worker, _OneMachine(worker)) is False  # type: ignore[arg-type]
    assert not (tmp_path / "m").exists()
    assert await delivery.deliver_to(c, "cp", cp, _OneMachine(cp)) is True  # type: ignore[arg-type]
    assert (tmp_path / "m" / "prod-cp-x" / KEYS_READY.lstrip("/")).is_file()
    assert await delivery.deliver_to(c, "no-such-pool", cp, _OneMachine(cp)) is False  # type: ignore[arg-type]
