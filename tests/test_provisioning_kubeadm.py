"""kubeadm configuration: endpoint through the load balancer, Node,RBAC, Secrets encrypted at
rest with a generated key that stays out of the logs, audit policy, bootstrap token."""

from __future__ import annotations

import base64
import re
import shutil
import stat
import subprocess
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from healer.clock import VirtualClock
from healer.errors import ConfigError
from healer.kube.client import KubeClient
from healer.lab.apiserver.server import FakeApiServer
from healer.provisioning.cluster_policy import reconcile_cluster_policy
from healer.provisioning.keystore import ClusterState
from healer.provisioning.kubeadm.documents import (
    ADMISSION_CONFIG,
    AUDIT_POLICY,
    ENCRYPTION_CONFIG,
    api_version,
    kubelet_labels,
)
from healer.provisioning.kubeadm.endpoint import (
    load_api_endpoint,
    parse_endpoint,
    record_api_endpoint,
)
from healer.provisioning.kubeadm.machine import (
    BOOTSTRAP_SCRIPT,
    KUBEADM_CONFIG,
    KubeadmBuilder,
    bootstrap_source,
)
from healer.provisioning.kubeadm.tokens import ensure_secrets
from healer.provisioning.pki import ClusterPki
from tests.provisioning_support import cluster, kube_cluster


def _docs(
    builder: KubeadmBuilder, pool: str, name: str
) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    cfg = builder._cluster  # the builder's own cluster
    node = builder.machine(cfg.pool(pool), name)  # type: ignore[arg-type]
    by_path = {f.path: f.content for f in node.files}
    return list(yaml.safe_load_all(by_path[KUBEADM_CONFIG])), by_path


def _args(section: dict[str, Any]) -> dict[str, str]:
    """extraArgs in either shape (v1beta3 map, v1beta4 list) as a dict."""
    raw = section.get("extraArgs", {})
    if isinstance(raw, list):
        return {item["name"]: item["value"] for item in raw}
    return dict(raw)


def test_control_plane_endpoint_is_the_recorded_load_balancer(tmp_path: Path) -> None:
    record_api_endpoint(tmp_path, "prod", "203.0.113.10", dns_name="api.prod.example.com")
    c = cluster(kubernetes={})
    builder = KubeadmBuilder(ClusterState(tmp_path, "prod"), c)
    docs, _ = _docs(builder, "cp", "cp-1")
    _init, config = docs
    assert config["kind"] == "ClusterConfiguration"
    assert config["controlPlaneEndpoint"] == "203.0.113.10:6443"
    sans = config["apiServer"]["certSANs"]
    assert "203.0.113.10" in sans and "api.prod.example.com" in sans
    assert {"kubernetes", "kubernetes.default.svc.cluster.local", "10.96.0.1"} <= set(sans)
    join, _ = _docs(builder, "workers", "w-1")
    discovery = join[0]["discovery"]["bootstrapToken"]
    assert discovery["apiServerEndpoint"] == "203.0.113.10:6443"
    assert discovery["caCertHashes"] == [ClusterPki(ClusterState(tmp_path, "prod")).ca_cert_hash()]


def test_configured_endpoint_wins_and_is_parsed() -> None:
    assert parse_endpoint("api.example.com").address == "api.example.com:6443"
    assert parse_endpoint("api.example.com:443").address == "api.example.com:443"
    assert parse_endpoint("[fd00::1]:6443").address == "[fd00::1]:6443"
    with pytest.raises(ConfigError, match="expected host or host:port"):
        parse_endpoint("a:b:c")


def test_recorded_endpoint_round_trips(tmp_path: Path) -> None:
    record_api_endpoint(tmp_path, "prod", "lb.example.com", port=8443)
    endpoint = load_api_endpoint(ClusterState(tmp_path, "prod"))
    assert endpoint is not None and endpoint.address == "lb.example.com:8443"


@pytest.mark.parametrize(
    ("version", "api", "shape"),
    [("v1.31.4", "kubeadm.k8s.io/v1beta4", list), ("1.30.6", "kubeadm.k8s.io/v1beta3", dict)],
)
def test_api_server_flags_in_both_kubeadm_api_versions(
    tmp_path: Path, version: str, api: str, shape: type
) -> None:
    c = kube_cluster(kubernetes={"version": version, "audit": {"enabled": True, "maxAgeDays": 7}})
    builder = KubeadmBuilder(ClusterState(tmp_path, "prod"), c)
    (init, config), files = _docs(builder, "cp", "cp-1")
    assert api_version(version) == api
    assert init["apiVersion"] == config["apiVersion"] == api
    assert isinstance(config["apiServer"]["extraArgs"], shape)
    args = _args(config["apiServer"])
    assert args["authorization-mode"] == "Node,RBAC"
    assert args["encryption-provider-config"] == ENCRYPTION_CONFIG
    assert args["audit-policy-file"] == AUDIT_POLICY
    assert args["audit-log-maxage"] == "7"
    assert args["profiling"] == "false"
    mounts = {v["mountPath"]: v for v in config["apiServer"]["extraVolumes"]}
    assert mounts["/etc/kubernetes/encryption"]["readOnly"] is True
    assert mounts["/var/log/kubernetes/audit"]["readOnly"] is False
    policy = yaml.safe_load(files[AUDIT_POLICY])
    assert policy["kind"] == "Policy" and policy["apiVersion"] == "audit.k8s.io/v1"
    secret_rule = next(
        r
        for r in policy["rules"]
        if {"group": "", "resources": ["secrets", "configmaps"]} in r.get("resources", [])
    )
    assert secret_rule["level"] == "Metadata"  # never the bodies of Secrets
    assert config["kubernetesVersion"] == (version if version.startswith("v") else f"v{version}")
    assert config["networking"] == {
        "podSubnet": "10.244.0.0/16",
        "serviceSubnet": "10.96.0.0/12",
        "dnsDomain": "cluster.local",
    }


@pytest.mark.parametrize("provider", ["secretbox", "aescbc"])
def test_encryption_configuration(tmp_path: Path, provider: str) -> None:
    c = kube_cluster(kubernetes={"encryption": {"provider": provider}})
    state = ClusterState(tmp_path, "prod")
    _, files = _docs(KubeadmBuilder(state, c), "cp", "cp-1")
    assert ENCRYPTION_CONFIG not in files  # never in user data: the key push delivers it
    node = KubeadmBuilder(state, c).machine(c.pools[0], "cp-1")
    pushed = {f.path: f for f in node.keys}
    assert pushed[ENCRYPTION_CONFIG].mode == "0600" and pushed[ENCRYPTION_CONFIG].secret
    enc = yaml.safe_load(pushed[ENCRYPTION_CONFIG].content)
    assert enc["apiVersion"] == "apiserver.config.k8s.io/v1"
    assert enc["kind"] == "EncryptionConfiguration"
    (resource,) = enc["resources"]
    assert resource["resources"] == ["secrets"]
    first, last = resource["providers"]
    assert last == {"identity": {}}  # only as a fallback, last
    (key,) = first[provider]["keys"]
    assert len(base64.b64decode(key["secret"])) == 32
    stored = state.root / "secrets" / "encryption-key"
    assert stored.read_text().strip() == key["secret"]
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600


def test_pod_security_defaults_reach_the_admission_configuration(tmp_path: Path) -> None:
    c = kube_cluster(
        podSecurity={
            "default": {"enforce": "baseline", "warn": "restricted", "version": "v1.31"},
            "exemptNamespaces": ["kube-system", "monitoring"],
        }
    )
    (_, config), files = _docs(KubeadmBuilder(ClusterState(tmp_path, "prod"), c), "cp", "cp-1")
    assert _args(config["apiServer"])["admission-control-config-file"] == ADMISSION_CONFIG
    admission = yaml.safe_load(files[ADMISSION_CONFIG])
    (plugin,) = admission["plugins"]
    assert plugin["name"] == "PodSecurity"
    psc = plugin["configuration"]
    assert psc["kind"] == "PodSecurityConfiguration"
    assert psc["defaults"]["enforce"] == "baseline" and psc["defaults"]["warn"] == "restricted"
    assert psc["defaults"]["audit"] == "privileged"  # unset mode: no restriction
    assert psc["defaults"]["enforce-version"] == "v1.31"
    assert psc["exemptions"]["namespaces"] == ["kube-system", "monitoring"]


def test_bootstrap_token_generated_once_0600_and_in_init_and_join(tmp_path: Path) -> None:
    state = ClusterState(tmp_path, "prod")
    c = kube_cluster(kubernetes={"bootstrapTokenTtl": "2h"})
    builder = KubeadmBuilder(state, c)
    (init, _), _ = _docs(builder, "cp", "cp-1")
    (join,), _ = _docs(builder, "workers", "w-1")
    path = state.root / "secrets" / "bootstrap-token"
    token = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (bt,) = init["bootstrapTokens"]
    assert bt["token"] == token and bt["ttl"] == "7200s"
    assert bt["usages"] == ["signing", "authentication"]
    assert join["discovery"]["bootstrapToken"]["token"] == token
    assert ensure_secrets(state, c.kubernetes).bootstrap_token.reveal() == token  # type: ignore[arg-type]
    assert repr(ensure_secrets(state, c.kubernetes).bootstrap_token) == "SecretValue(***)"  # type: ignore[arg-type]


def test_bootstrap_token_by_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOIN_TOKEN", "abcdef.0123456789abcdef")
    c = kube_cluster(kubernetes={"bootstrapToken": {"env": "JOIN_TOKEN"}})
    (join,), _ = _docs(KubeadmBuilder(ClusterState(tmp_path, "prod"), c), "workers", "w-1")
    assert join["discovery"]["bootstrapToken"]["token"] == "abcdef.0123456789abcdef"
    assert not (tmp_path / "clusters" / "prod" / "secrets" / "bootstrap-token").exists()
    monkeypatch.setenv("JOIN_TOKEN", "not-a-token")
    with pytest.raises(
        ConfigError, match=r"kubernetes.bootstrapToken: not a kubeadm bootstrap token"
    ):
        _docs(KubeadmBuilder(ClusterState(tmp_path, "prod"), c), "workers", "w-2")


def test_kubelet_labels_skip_what_the_kubelet_may_not_set() -> None:
    c = cluster(
        pools=[
            {
                "name": "workers",
                "size": 1,
                "labels": {
                    "tier": "web",
                    "node-role.kubernetes.io/worker": "",
                    "example.com/team": "a",
                    "topology.kubernetes.io/zone": "z1",
                },
            }
        ]
    )
    labels = kubelet_labels(c, c.pools[0]).split(",")
    assert "healer.io/cluster=prod" in labels and "healer.io/pool=workers" in labels
    assert "tier=web" in labels and "example.com/team=a" in labels
    assert "topology.kubernetes.io/zone=z1" in labels
    assert not any(label.startswith("node-role.kubernetes.io") for label in labels)


def test_the_encryption_key_and_token_never_appear_in_logs(tmp_path: Path) -> None:
    state = ClusterState(tmp_path, "prod")
    c = kube_cluster()
    with structlog.testing.capture_logs() as logs:
        builder = KubeadmBuilder(state, c)
        _docs(builder, "cp", "cp-1")
        _docs(builder, "cp", "cp-2")
        _docs(builder, "workers", "w-1")
    key = (state.root / "secrets" / "encryption-key").read_text().strip()
    token = (state.root / "secrets" / "bootstrap-token").read_text().strip()
    events = {e["event"] for e in logs}
    assert {"kubeadm.encryption_key_created", "kubeadm.bootstrap_token_created"} <= events
    dumped = "\n".join(repr(e) for e in logs)
    assert key not in dumped
    assert token.split(".")[1] not in dumped
    assert token.split(".")[0] in dumped  # the public token id is what the logs show


async def test_join_token_is_kept_valid_in_the_cluster(
    tmp_path: Path, fake_api: FakeApiServer, kube: KubeClient
) -> None:
    clock = VirtualClock(start=1_800_000_000.0)
    c = kube_cluster(kubernetes={"bootstrapTokenTtl": "24h"})
    token = ensure_secrets(ClusterState(tmp_path, "prod"), c.kubernetes).bootstrap_token.reveal()  # type: ignore[arg-type]
    token_id, token_secret = token.split(".")
    name = f"bootstrap-token-{token_id}"

    with structlog.testing.capture_logs() as logs:
        changes = await reconcile_cluster_policy(c, kube, state_dir=tmp_path, clock=clock)
    assert changes == [f"bootstrap token {token_id}: valid until 2027-01-16T08:00:00Z"]
    secret = await kube.get_secret("kube-system", name)
    assert secret is not None and secret.type == "bootstrap.kubernetes.io/token"
    assert secret.data["token-secret"] == token_secret.encode()
    assert secret.data["usage-bootstrap-authentication"] == b"true"
    assert secret.data["auth-extra-groups"] == b"system:bootstrappers:kubeadm:default-node-token"
    assert token_secret not in "\n".join(repr(e) for e in logs)
    assert token_secret not in repr(secret)

    await clock.advance(11 * 3600)  # more than half the TTL left: nothing to do
    assert await reconcile_cluster_policy(c, kube, state_dir=tmp_path, clock=clock) == []
    await clock.advance(2 * 3600)  # less than half left: extended
    changes = await reconcile_cluster_policy(c, kube, state_dir=tmp_path, clock=clock)
    assert changes == [f"bootstrap token {token_id}: valid until 2027-01-16T21:00:00Z"]

    await kube._call("delete", kube._core.delete_namespaced_secret, name, "kube-system")
    assert await reconcile_cluster_policy(c, kube, state_dir=tmp_path, clock=clock) != []
    assert await kube.get_secret("kube-system", name) is not None


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


@pytest.mark.parametrize(
    ("failures", "attempts", "ok"), [(0, 3, True), (2, 3, True), (3, 3, False)]
)
def test_bootstrap_script_joins_with_retries_and_removes_the_token_file(
    tmp_path: Path, failures: int, attempts: int, ok: bool
) -> None:
    """The real script under bash, with kubeadm and the kernel tools stubbed on PATH."""
    c = kube_cluster(kubernetes={"installPackages": False})
    node = KubeadmBuilder(ClusterState(tmp_path / "state", "prod"), c).machine(c.pools[1], "w-1")
    by_path = {f.path: f.content for f in node.files}
    root = tmp_path / "root"
    config = root / "etc/healer/kubeadm/kubeadm.yaml"
    config.parent.mkdir(parents=True)
    config.write_bytes(by_path[KUBEADM_CONFIG])
    env = by_path["/etc/healer/kubeadm/bootstrap.env"].decode()
    env = env.replace(f"KUBEADM_CONFIG={KUBEADM_CONFIG}", f"KUBEADM_CONFIG={config}")
    env = re.sub(r"JOIN_ATTEMPTS=\d+", f"JOIN_ATTEMPTS={attempts}", env)
    (config.parent / "bootstrap.env").write_text(env)
    (root / "etc/fstab").write_text("UUID=1 / ext4 defaults 0 1\n/swapfile none swap sw 0 0\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool in ("swapoff", "modprobe", "sysctl"):
        _stub(bin_dir, tool, f'echo "{tool} $*" >> {calls}\n')
    _stub(
        bin_dir,
        "kubeadm",
        f'echo "kubeadm $*" >> {calls}\n'
        f'if [ "$1" = join ]; then n=$(grep -c "^kubeadm join" {calls}); [ "$n" -gt {failures} ]; fi\n',
    )
    script = tmp_path / "healer-bootstrap"
    script.write_bytes(by_path["/usr/local/sbin/healer-bootstrap"])
    run_env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HEALER_BOOTSTRAP_ROOT": str(root),
        "JOIN_RETRY_DELAY": "0",
    }
    result = subprocess.run(
        ["bash", str(script)], env=run_env, capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode == 0) is ok, result.stdout + result.stderr
    kubeadm_calls = [line for line in calls.read_text().splitlines() if line.startswith("kubeadm")]
    joins = min(failures + 1, attempts)
    expected = []
    for i in range(joins):
        expected.append(f"kubeadm join --config {config}")
        if i < joins - 1:
            expected.append("kubeadm reset --force")
    assert kubeadm_calls == expected
    assert (root / "etc/fstab").read_text().splitlines()[1] == "#/swapfile none swap sw 0 0"
    token = ensure_secrets(ClusterState(tmp_path / "state", "prod"), c.kubernetes)  # type: ignore[arg-type]
    assert token.bootstrap_token.reveal() not in calls.read_text()
    # The file with the token goes once the node joined, and stays for a re-run if it did not.
    assert config.exists() is not ok
    if ok:
        (root / "etc/kubernetes").mkdir(parents=True)
        (root / "etc/kubernetes/kubelet.conf").write_text("joined")
        calls.unlink()
        again = subprocess.run(
            ["bash", str(script)],
            env=run_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert again.returncode == 0 and "already part of the cluster" in again.stdout
        assert not calls.exists()


SHELLCHECK = shutil.which("shellcheck")


@pytest.mark.skipif(
    SHELLCHECK is None,
    reason="shellcheck is not installed (Debian package shellcheck; .ci/system-deps installs it)",
)
def test_bootstrap_script_passes_shellcheck(tmp_path: Path) -> None:
    """bootstrap.sh as shipped in the package, checked as bash; a broken copy is refused, so the
    check does look at the script."""
    assert SHELLCHECK is not None
    with as_file(files("healer.provisioning.kubeadm").joinpath("bootstrap.sh")) as script:
        result = subprocess.run(
            [SHELLCHECK, "--shell=bash", "--severity=style", str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.sh"
    broken.write_text(
        bootstrap_source().replace('rm -f "$KUBEADM_CONFIG"', "rm -f $KUBEADM_CONFIG")
    )
    refused = subprocess.run(
        [SHELLCHECK, "--shell=bash", str(broken)], capture_output=True, text=True, check=False
    )
    assert refused.returncode != 0 and "SC2086" in refused.stdout


def test_the_machine_gets_the_packaged_script_without_its_comments(tmp_path: Path) -> None:
    c = kube_cluster(kubernetes={"installPackages": False})
    node = KubeadmBuilder(ClusterState(tmp_path, "prod"), c).machine(c.pools[1], "w-1")
    (script,) = [f for f in node.files if f.path == BOOTSTRAP_SCRIPT]
    assert script.mode == "0700" and node.command == (BOOTSTRAP_SCRIPT,)
    source = bootstrap_source()
    shipped = script.content.decode()
    assert shipped.startswith("#!/bin/bash\n") and source.startswith("#!/bin/bash\n")
    assert "# healer-bootstrap:" in source and "# healer-bootstrap:" not in shipped
    code = [line for line in source.splitlines() if not line.lstrip().startswith("#")]
    assert shipped.splitlines()[1:] == code
