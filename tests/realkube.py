"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager on
free loopback ports, the way controller-runtime's envtest runs one for Go operators.

* Binaries: ``kube-apiserver.xz`` and ``kube-controller-manager.xz`` from ``$HEALER_KUBE_ASSETS``
  or ``../shared/kube-assets`` next to the repository, decompressed once into
  ``~/.cache/healer/kube-assets`` (``$XDG_CACHE_HOME`` honoured) and checked against their
  sha256; etcd is Debian's ``etcd-server`` (``/usr/bin/etcd``). Without them the tests that need
  the server skip, saying how to provide them (:data:`SKIP_MESSAGE`).
* Security as in a kubeadm cluster: serving certificate and service-account keys made here with
  ``cryptography``, a static token for an admin in ``system:masters``,
  ``--authorization-mode=Node,RBAC``, the default admission plugins (PodSecurity included).
* The controller-manager runs node lifecycle (its grace shortened to :data:`NODE_GRACE` through
  ``--node-monitor-grace-period``), the garbage collector, PodGC, the disruption controller, ...
  It exits when it loses the API server (as the real one does); a watchdog starts it again.
* One control plane per test session (:func:`control_plane`); every test gets it clean
  (:meth:`RealKube.wipe`: Nodes, node Leases, the test's namespaces and labelled cluster objects).

There is no scheduler and no kubelet: pods need ``spec.nodeName``, and their status is patched by
the test (:meth:`RealKube.set_pod_running`), as a kubelet would.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime
import hashlib
import ipaddress
import json
import lzma
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ports import free_port

REPO = Path(__file__).resolve().parent.parent
ASSETS_ENV = "HEALER_KUBE_ASSETS"
REQUIRE_ENV = "HEALER_REQUIRE_KUBE_ASSETS"  # set by .ci/run: fail instead of skipping
DEFAULT_ASSETS = REPO.parent / "shared" / "kube-assets"
# sha256 of the decompressed binaries (../shared/kube-assets/README.md).
SHA256 = {
    "kube-apiserver": "064773fa0264d01b95c970861cddc8b17cf083a5b9b9f011c1b1d7e5f6e2b247",
    "kube-controller-manager": "764207ea4a91e1a3ff8898488c9452dc1aab8bcca281b9e0d674323712750fd0",
}
SKIP_MESSAGE = (
    "real API server tests need kube-apiserver.xz and kube-controller-manager.xz (v1.32) in "
    f"${ASSETS_ENV} or {DEFAULT_ASSETS} (../shared/kube-assets next to the repository), and etcd "
    "(Debian etcd-server: ./.ci/system-deps installs it)"
)
# Shortened node-monitor-grace-period / node-monitor-period (production: 50s / 5s), so a node
# whose Lease stops goes Ready=Unknown within seconds. PodGC's 40 s quarantine of a deleted
# node's pods is fixed in the controller and cannot be shortened.
NODE_GRACE = 6.0
NODE_MONITOR_PERIOD = 1.0
PODGC_QUARANTINE = 40.0
TOKEN = "healer-test-admin-token"  # loopback-only control plane, started and killed by the tests
TEST_LABEL = "healer.io/test"  # on every namespace and cluster-scoped object a test makes
START_TIMEOUT = 60.0
# The "real" parameter of a fixture that asks for the control plane at run time
# (``request.getfixturevalue``), marked so tests/plugins/xdist.py can tell which tests start one.
REAL = pytest.param("real", marks=pytest.mark.realkube)


def assets_dir() -> Path:
    return Path(os.environ.get(ASSETS_ENV) or DEFAULT_ASSETS)


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "healer" / "kube-assets"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def binaries() -> dict[str, Path] | None:
    """The two binaries, decompressed into the cache on first use and checked; None when the
    assets or etcd are missing. A cached file with the wrong checksum is replaced; an archive
    that decompresses to the wrong checksum is an error, not a skip."""
    etcd = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    src = assets_dir()
    if etcd is None or not all((src / f"{name}.xz").is_file() for name in SHA256):
        return None
    out: dict[str, Path] = {"etcd": Path(etcd)}
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    for name, want in SHA256.items():
        target = cache / f"{name}-{want[:12]}"
        if not (target.is_file() and _sha256(target) == want):
            tmp = cache / f".{name}.{os.getpid()}.tmp"
            with lzma.open(src / f"{name}.xz") as xz, tmp.open("wb") as f:
                shutil.copyfileobj(xz, f, 1 << 20)
            got = _sha256(tmp)
            if got != want:
                tmp.unlink()
                raise RuntimeError(f"{src / name}.xz decompresses to sha256 {got}, want {want}")
            tmp.chmod(0o755)
            tmp.replace(target)  # atomic: a concurrent session sees the old file or the new one
        out[name] = target
    return out


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, even by SIGKILL, so no control plane
    outlives a killed test run (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


# -- certificates ----------------------------------------------------------------------------


def _write_pki(d: Path) -> None:
    """A CA, a serving certificate for 127.0.0.1/localhost signed by it, and the service-account
    signing key pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    def key_pem(key: Any) -> bytes:
        return key.private_bytes(  # type: ignore[no-any-return]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "healer-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("kubernetes.default.svc"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = serialization.Encoding.PEM
    (d / "ca.crt").write_bytes(ca.public_bytes(pem))
    (d / "server.crt").write_bytes(cert.public_bytes(pem))
    (d / "server.key").write_bytes(key_pem(key))
    (d / "sa.key").write_bytes(key_pem(sa))
    (d / "sa.pub").write_bytes(
        sa.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for name in ("server.key", "sa.key"):
        (d / name).chmod(0o600)


# -- the control plane -----------------------------------------------------------------------


@dataclass
class RealKube:
    """A running control plane. ``kubeconfig`` is an admin's (system:masters)."""

    workdir: Path
    bins: dict[str, Path]
    node_grace: float = NODE_GRACE
    monitor_period: float = NODE_MONITOR_PERIOD
    api_port: int = 0
    etcd_port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    kcm_restarts: int = 0
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    # -- processes ---------------------------------------------------------------------------
    def start(self) -> None:
        _write_pki(self.workdir)
        (self.workdir / "tokens.csv").write_text(f'{TOKEN},admin,admin,"system:masters"\n')
        self._write_kubeconfig()
        self.start_etcd()
        self.start_apiserver()
        self.start_controller_manager()
        threading.Thread(target=self._watchdog, name="realkube-watchdog", daemon=True).start()

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            preexec_fn=_die_with_parent,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def start_etcd(self) -> None:
        self.etcd_port = self.etcd_port or free_port()
        peer = free_port()
        self._spawn(
            "etcd",
            [
                str(self.bins["etcd"]),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--listen-metrics-urls=",
                "--log-level=warn",
                "--logger=zap",
            ],
        )

    def start_apiserver(self) -> None:
        self.api_port = self.api_port or free_port()
        d = self.workdir
        self._spawn(
            "kube-apiserver",
            [
                str(self.bins["kube-apiserver"]),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--tls-cert-file={d / 'server.crt'}",
                f"--tls-private-key-file={d / 'server.key'}",
                f"--client-ca-file={d / 'ca.crt'}",
                f"--token-auth-file={d / 'tokens.csv'}",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                # Nodes and Leases are watched from etcd itself: a young watch cache answers a
                # watch from a version before its start with the current objects as ADDED, where
                # a long-running server (its cache full) or etcd after compaction answers 410.
                "--watch-cache-sizes=nodes#0,leases.coordination.k8s.io#0",
                "--v=0",
            ],
        )
        self._wait_ready()

    def start_controller_manager(self) -> None:
        d = self.workdir
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bins["kube-controller-manager"]),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--service-account-private-key-file={d / 'sa.key'}",
                f"--root-ca-file={d / 'ca.crt'}",
                f"--node-monitor-grace-period={self.node_grace:g}s",
                f"--node-monitor-period={self.monitor_period:g}s",
                "--leader-elect=false",
                # No scheduler and no kubelet: the workload controllers would only add Pending
                # pods and delete the hand-made ones their objects own. Node lifecycle, garbage
                # collection, PodGC, disruption, namespaces and service accounts run.
                "--controllers=*,-replicaset,-statefulset,-daemonset,-deployment,"
                "-replicationcontroller,-job,-cronjob",
                "--v=0",
            ],
        )

    def _watchdog(self) -> None:
        """Start kube-controller-manager again whenever it exits (it does when it loses the API
        server for long enough)."""
        while not self._stopping.wait(0.5):
            with self._lock:
                proc = self.procs.get("kube-controller-manager")
                if self._stopping.is_set() or proc is None or proc.poll() is None:
                    continue
                self.kcm_restarts += 1
                self.start_controller_manager()

    def stop_process(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
                self.stop_process(name)

    # -- HTTP --------------------------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.workdir / "ca.crt"))

    def request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        """One admin call: (status, decoded JSON or text)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {TOKEN}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._ssl(), timeout=10) as resp:
                raw, status = resp.read(), resp.status
        except urllib.error.HTTPError as err:
            raw, status = err.read(), err.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last: object = None
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited: {self.log_tail(name)}")
            try:
                status, last = self.request("GET", "/readyz")
                if status == 200:
                    return
            except (OSError, ssl.SSLError) as exc:
                last = exc
            time.sleep(0.2)
        raise RuntimeError(f"kube-apiserver not ready in {START_TIMEOUT}s: {last}")

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _write_kubeconfig(self) -> None:
        self.api_port = self.api_port or free_port()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "realkube",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority": str(self.workdir / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": "admin", "user": {"token": TOKEN}}],
            "contexts": [{"name": "realkube", "context": {"cluster": "realkube", "user": "admin"}}],
            "current-context": "realkube",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    # -- test helpers ------------------------------------------------------------------------
    def wait_for(self, predicate: Any, *, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = predicate()
            if got:
                return got
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def compact(self) -> int:
        """Compact etcd's history up to now (the API server does it every 5 minutes): watches
        from an older resourceVersion then answer 410 Gone. Returns the revision."""

        def etcd(path: str, body: dict[str, Any]) -> dict[str, Any]:
            req = urllib.request.Request(
                f"http://127.0.0.1:{self.etcd_port}{path}", data=json.dumps(body).encode()
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                return dict(json.loads(resp.read()))

        revision = int(etcd("/v3/kv/range", {"key": "Lw=="})["header"]["revision"])
        etcd("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    # The FakeApiServer's state methods for namespaces, so a test can take either server.
    def add_namespace(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        """Create ``name`` (labelled for the wipe) or, when it exists, add ``labels`` to it;
        a namespace still terminating from an earlier test is waited out first."""
        self.wait_for(
            lambda: (
                not ((self.namespace(name) or {}).get("metadata") or {}).get("deletionTimestamp")
            ),
            timeout=60,
            what=f"namespace {name} to finish terminating",
        )
        meta = {"name": name, "labels": {TEST_LABEL: "1", **(labels or {})}}
        status, body = self.request("POST", "/api/v1/namespaces", {"metadata": meta})
        if status == 409:
            status, body = self.request(
                "PATCH",
                f"/api/v1/namespaces/{name}",
                {"metadata": {"labels": labels or {}}},
                content_type="application/merge-patch+json",
            )
        assert status in (200, 201), body
        return dict(body)

    def namespace(self, name: str) -> dict[str, Any] | None:
        status, body = self.request("GET", f"/api/v1/namespaces/{name}")
        return dict(body) if status == 200 else None

    def wipe(self) -> None:
        """Remove what tests make: Nodes, node Leases, PDBs, test namespaces (deletion is
        finished by the namespace controller in the background) and labelled cluster objects."""
        status, nodes = self.request("GET", "/api/v1/nodes")
        for node in nodes.get("items", []) if status == 200 else []:
            self.request("DELETE", f"/api/v1/nodes/{node['metadata']['name']}")
        self.request("DELETE", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases")
        selector = f"?labelSelector={TEST_LABEL}"
        status, namespaces = self.request("GET", f"/api/v1/namespaces{selector}")
        for ns in namespaces.get("items", []) if status == 200 else []:
            name = ns["metadata"]["name"]
            if ns["metadata"].get("deletionTimestamp"):
                continue
            # Pods there have no kubelet to confirm a graceful delete: force them.
            self.request("DELETE", f"/api/v1/namespaces/{name}/pods", {"gracePeriodSeconds": 0})
            self.request("DELETE", f"/api/v1/namespaces/{name}")
        # Every cluster-wide RBAC object but the API server's own (bootstrap) ones.
        keep = "?labelSelector=!kubernetes.io/bootstrapping"
        for kind in ("clusterroles", "clusterrolebindings"):
            self.request("DELETE", f"/apis/rbac.authorization.k8s.io/v1/{kind}{keep}")
        # Labels tests put on the namespaces the server comes with.
        for name in ("default", "kube-public", "kube-node-lease"):
            labels = ((self.namespace(name) or {}).get("metadata") or {}).get("labels") or {}
            extra = {k: None for k in labels if k != "kubernetes.io/metadata.name"}
            if extra:
                self.request(
                    "PATCH",
                    f"/api/v1/namespaces/{name}",
                    {"metadata": {"labels": extra}},
                    content_type="application/merge-patch+json",
                )


_SESSION: RealKube | None = None
_SESSION_ERROR: str | None = None


def control_plane() -> RealKube:
    """The session's control plane, started on first use (skips the test when the binaries are
    missing; fails it when they are there but the control plane does not start)."""
    global _SESSION, _SESSION_ERROR
    if _SESSION is not None:
        return _SESSION
    if _SESSION_ERROR is not None:
        pytest.fail(_SESSION_ERROR)
    bins = binaries()
    if bins is None:
        if os.environ.get(REQUIRE_ENV) == "1":  # CI: a missing binary is a failure
            pytest.fail(SKIP_MESSAGE)
        pytest.skip(SKIP_MESSAGE)
    workdir = Path(tempfile.mkdtemp(prefix="healer-realkube-"))
    kube = RealKube(workdir=workdir, bins=bins)
    try:
        kube.start()
    except Exception as exc:
        kube.stop()
        _SESSION_ERROR = f"real control plane did not start ({workdir}): {exc}"
        pytest.fail(_SESSION_ERROR)
    _SESSION = kube
    atexit.register(_shutdown)
    return kube


def _shutdown() -> None:
    global _SESSION
    if _SESSION is not None:
        _SESSION.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(_SESSION.workdir)
        _SESSION = None


@pytest.fixture(scope="session")
def realkube_session() -> Iterator[RealKube]:
    kube = control_plane()
    yield kube
    _shutdown()


@pytest.fixture
def realkube(realkube_session: RealKube) -> Iterator[RealKube]:
    """The session's control plane, wiped after the test."""
    yield realkube_session
    realkube_session.wipe()


@pytest.fixture
async def real_kube_client(realkube: RealKube) -> AsyncIterator[Any]:
    """healer's own client (healer.kube) on the session's control plane, as admin."""
    from healer.kube.client import KubeClient

    client = await KubeClient.from_kubeconfig(realkube.kubeconfig, request_timeout=10.0)
    try:
        yield client
    finally:
        await client.close()


def main() -> None:
    """``python -m tests.realkube``: start a control plane, print its kubeconfig's path, and
    keep it running until interrupted (for `make realkube-lab` and trying things by hand)."""
    bins = binaries()
    if bins is None:
        raise SystemExit(SKIP_MESSAGE)
    workdir = Path(tempfile.mkdtemp(prefix="healer-realkube-"))
    kube = RealKube(workdir=workdir, bins=bins)
    kube.start()
    print(f"KUBECONFIG={kube.kubeconfig}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        kube.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
