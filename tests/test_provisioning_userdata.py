"""cloud-init user data: every rendered variant passes the real ``cloud-init schema``, the sshd
drop-in passes the real ``sshd -t``, and no secret reaches the logs."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from healer.config import ClusterConfig
from healer.errors import ConfigError
from healer.provisioning.keystore import ClusterState, read_private
from healer.provisioning.kubeadm.documents import ENCRYPTION_DIR
from healer.provisioning.kubeadm.machine import BOOTSTRAP_SCRIPT, KUBEADM_CONFIG
from healer.provisioning.sshkeys import ensure_ssh_key
from healer.provisioning.userdata import (
    AGENT_ENV,
    AGENT_PASSWORD,
    SSHD_DROPIN,
    USER_DATA_LIMIT,
    AgentFiles,
    UserDataBuilder,
    check_references,
    compress_user_data,
    render_user_data,
)
from tests.provisioning_support import (
    cloud_init_schema,
    cluster,
    fake_agent,
    files,
    kube_cluster,
    sshd,
)

MQTT_PASSWORD = "mqtt-pw-7f3e9b1c2d"
CA_PEM = (
    "-----BEGIN CERTIFICATE-----\nMIIBfakefakefakefakefake\n-----END CERTIFICATE-----\n"  # content
)


def parse(text: str) -> dict[str, Any]:
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture
def agent_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ClusterConfig:
    monkeypatch.setenv("TEST_MQTT_PASSWORD", MQTT_PASSWORD)
    ca = tmp_path / "broker-ca.pem"
    ca.write_text(CA_PEM)
    return kube_cluster(
        agent={
            "brokerHost": "mqtt.prod.internal",
            "tlsCa": str(ca),
            "username": "node",
            "password": {"env": "TEST_MQTT_PASSWORD"},
        },
        podSecurity={"default": {"enforce": "baseline", "audit": "restricted"}},
        kubernetes={"audit": {"enabled": True}},
    )


def _all_variants(tmp_path: Path, agent_cluster: ClusterConfig) -> dict[str, str]:
    agent = fake_agent(tmp_path)
    state = tmp_path / "state"
    with_agent = UserDataBuilder(state, agent=agent)
    bare = UserDataBuilder(state, discover_agent=False)
    return {
        "plain-no-state": UserDataBuilder(None, discover_agent=False)(cluster(), "workers", "w-0"),
        "plain-no-upgrades": bare(cluster(upgrades={"enabled": False}), "workers", "w-1"),
        "cp-init": with_agent(agent_cluster, "cp", "prod-cp-a"),
        "cp-join": with_agent(agent_cluster, "cp", "prod-cp-b"),
        "worker": with_agent(agent_cluster, "workers", "prod-workers-c"),
        "cp-v1beta3": bare(kube_cluster(kubernetes={"version": "1.30.6"}), "cp", "old-cp"),
        "worker-no-agent": bare(kube_cluster(), "workers", "prod-workers-d"),
    }


def test_every_rendered_user_data_passes_cloud_init_schema(
    tmp_path: Path, agent_cluster: ClusterConfig
) -> None:
    variants = _all_variants(tmp_path, agent_cluster)
    for name, text in variants.items():
        cloud_init_schema(text, tmp_path, name)


def test_with_the_shipped_agent_user_data_fits_ec2_once_gzipped(
    tmp_path: Path, agent_cluster: ClusterConfig
) -> None:
    """The real agent from this package: schema-valid, and small enough for EC2's 16 KiB once
    gzipped (cloud-init unpacks gzip itself)."""
    agent = AgentFiles.discover()
    assert agent is not None, "healer/agent/healer_agent.py and systemd/healer-agent*.service"
    builder = UserDataBuilder(tmp_path, agent=agent)
    for pool, name in (("cp", "prod-cp-1"), ("cp", "prod-cp-2"), ("workers", "prod-w-1")):
        text = builder(agent_cluster, pool, name)
        cloud_init_schema(text, tmp_path, name)
        packed = compress_user_data(text)
        unpacked = gzip.decompress(packed).decode()
        cloud_init_schema(unpacked, tmp_path, f"{name}-unpacked")
        same = parse(unpacked)
        assert files(same) == files(parse(text))
        assert {k: v for k, v in same.items() if k != "write_files"} == {
            k: v for k, v in parse(text).items() if k != "write_files"
        }
        assert len(packed) <= USER_DATA_LIMIT, f"{name}: {len(packed)} bytes gzipped"


def test_the_shipped_agent_runs_from_the_one_file_the_machine_gets(
    tmp_path: Path, agent_cluster: ClusterConfig
) -> None:
    """The file written to the machine is a program: the system's python3 runs it with no healer
    installed (-I -S: no site-packages, no environment), as the units' ExecStart does."""
    agent = AgentFiles.discover()
    assert agent is not None
    written = files(parse(UserDataBuilder(tmp_path, agent=agent)(agent_cluster, "workers", "w-1")))
    content, mode = written[agent.script_path]
    assert mode == "0755" and content.startswith(b"#!/usr/bin/env python3\n")
    program = tmp_path / "healer_agent.py"
    program.write_bytes(content)
    env_file = tmp_path / "agent.env"
    env_file.write_text("HEALER_CLUSTER=prod\n")
    python3 = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    ran = subprocess.run(
        [python3, "-I", "-S", str(program), "--env-file", str(env_file), "heartbeat"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={},
    )
    assert ran.returncode == 1, ran.stderr  # EXIT_CONFIG, named in the agent's own words
    assert f"{env_file}: HEALER_MQTT_HOST is required" in ran.stderr


def test_the_schema_check_does_reject_broken_user_data(tmp_path: Path) -> None:
    """The check above can fail: a write_files entry without a path is refused."""
    broken = "#cloud-config\nwrite_files:\n  - content: x\n    permissions: 600\n"
    with pytest.raises(AssertionError, match="rejected"):
        cloud_init_schema(broken, tmp_path, "broken")


def test_only_the_cluster_key_is_authorised_and_root_and_passwords_are_off(
    tmp_path: Path,
) -> None:
    doc = parse(UserDataBuilder(tmp_path, discover_agent=False)(cluster(), "workers", "w-1"))
    key = ensure_ssh_key(ClusterState(tmp_path, "prod"), cluster().ssh)
    assert key is not None
    assert doc["users"] == [
        {
            "name": "healer",
            "gecos": "healer administrator",
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "shell": "/bin/bash",
            "lock_passwd": True,
            "ssh_authorized_keys": [key.public_key],
        }
    ]
    assert doc["allow_public_ssh_keys"] is False  # no keys from the cloud's metadata
    assert doc["disable_root"] is True and doc["ssh_pwauth"] is False
    assert "ssh_authorized_keys" not in doc  # no key for the image's default user either
    assert doc["hostname"] == "w-1"


def _dropin(tmp_path: Path, **cfg: Any) -> Path:
    doc = parse(UserDataBuilder(tmp_path, discover_agent=False)(cluster(**cfg), "workers", "w-1"))
    content, mode = files(doc)[SSHD_DROPIN]
    assert mode == "0644"
    path = tmp_path / "sshd_config.d" / "10-healer.conf"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return path


def test_sshd_dropin_passes_the_real_sshd_test_mode(tmp_path: Path) -> None:
    dropin = _dropin(tmp_path, ssh={"user": "ops"})
    result = sshd(["-t", "-f", str(dropin)], tmp_path)
    assert result.returncode == 0, result.stderr
    effective = sshd(["-T", "-f", str(dropin)], tmp_path)
    assert effective.returncode == 0, effective.stderr
    settings = dict(line.split(" ", 1) for line in effective.stdout.splitlines() if " " in line)
    assert settings["passwordauthentication"] == "no"
    assert settings["kbdinteractiveauthentication"] == "no"
    assert settings["pubkeyauthentication"] == "yes"
    assert settings["authenticationmethods"] == "publickey"
    assert settings["permitrootlogin"] == "no"
    assert settings["permitemptypasswords"] == "no"
    assert settings["allowusers"] == "ops"


def test_dropin_wins_over_a_permissive_main_config(tmp_path: Path) -> None:
    """As on Debian: the main file includes sshd_config.d/*.conf first, then says 'yes'."""
    dropin = _dropin(tmp_path)
    main = tmp_path / "sshd_config"
    main.write_text(
        f"Include {dropin.parent}/*.conf\n"
        "PasswordAuthentication yes\n"
        "KbdInteractiveAuthentication yes\n"
        "PermitRootLogin yes\n"
        "UsePAM yes\n"
    )
    effective = sshd(["-T", "-f", str(main)], tmp_path)
    assert effective.returncode == 0, effective.stderr
    out = effective.stdout
    assert "passwordauthentication no" in out
    assert "kbdinteractiveauthentication no" in out
    assert "permitrootlogin no" in out


def test_the_sshd_check_does_reject_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("PasswordAuthentication perhaps\n")
    assert sshd(["-t", "-f", str(bad)], tmp_path).returncode != 0


def test_without_an_agent_machines_do_not_reboot_on_their_own(tmp_path: Path) -> None:
    # Issue 8: this was "unattended upgrades reboot themselves without an agent": every machine,
    # control planes included, rebooted itself at 02:00 by default, unarbitrated.
    doc = parse(UserDataBuilder(tmp_path, discover_agent=False)(cluster(), "workers", "w"))
    written = files(doc)
    assert "unattended-upgrades" in doc["packages"]
    periodic = written["/etc/apt/apt.conf.d/20auto-upgrades"][0].decode()
    assert 'APT::Periodic::Unattended-Upgrade "1";' in periodic
    conf = written["/etc/apt/apt.conf.d/52healer-unattended-upgrades"][0].decode()
    assert 'Unattended-Upgrade::Automatic-Reboot "false";' in conf
    assert "Automatic-Reboot-Time" not in conf
    assert '"kubelet"; "kubeadm"; "kubectl";' in conf


def test_an_explicit_opt_in_lets_unattended_upgrades_reboot_without_an_agent(
    tmp_path: Path,
) -> None:
    c = cluster(upgrades={"automaticReboot": True})
    conf = files(parse(UserDataBuilder(tmp_path, discover_agent=False)(c, "workers", "w")))[
        "/etc/apt/apt.conf.d/52healer-unattended-upgrades"
    ][0].decode()
    assert 'Unattended-Upgrade::Automatic-Reboot "true";' in conf
    assert 'Unattended-Upgrade::Automatic-Reboot-Time "02:00";' in conf


@pytest.mark.parametrize(
    ("setting", "agent", "self_reboot", "agent_reboots"),
    [
        (None, False, False, False),
        (True, False, True, False),
        (False, False, False, False),
        (None, True, False, True),
        (True, True, False, True),
        (False, True, False, False),
    ],
)
def test_who_reboots_a_machine(
    tmp_path: Path,
    agent_cluster: ClusterConfig,
    setting: bool | None,
    agent: bool,
    self_reboot: bool,
    agent_reboots: bool,
) -> None:
    c = agent_cluster.model_copy(
        update={"upgrades": agent_cluster.upgrades.model_copy(update={"automatic_reboot": setting})}
    )
    builder = (
        UserDataBuilder(tmp_path, agent=fake_agent(tmp_path))
        if agent
        else UserDataBuilder(tmp_path, discover_agent=False)
    )
    written = files(parse(builder(c, "workers", "w")))
    conf = written["/etc/apt/apt.conf.d/52healer-unattended-upgrades"][0].decode()
    assert (f'Automatic-Reboot "{str(self_reboot).lower()}"' in conf) is True
    if agent:
        env = written[AGENT_ENV][0].decode()
        assert f"HEALER_AUTO_REBOOT={str(agent_reboots).lower()}" in env
    else:
        assert AGENT_ENV not in written


def test_with_the_agent_reboots_wait_for_healer(
    tmp_path: Path, agent_cluster: ClusterConfig
) -> None:
    agent = fake_agent(tmp_path)
    doc = parse(UserDataBuilder(tmp_path / "state", agent=agent)(agent_cluster, "workers", "w-9"))
    written = files(doc)
    conf = written["/etc/apt/apt.conf.d/52healer-unattended-upgrades"][0].decode()
    # unattended-upgrades would call shutdown itself; the agent asks healer first.
    assert 'Unattended-Upgrade::Automatic-Reboot "false";' in conf
    assert "healer node agent reboots" in conf

    script, mode = written["/opt/healer/healer_agent.py"]  # where the unit's ExecStart runs it
    assert mode == "0755" and script == agent.script
    assert "/etc/systemd/system/healer-agent.service" in written
    assert "/etc/systemd/system/apt-daily-upgrade.service.d/healer-agent.conf" in written
    assert "/etc/systemd/system/healer.service" not in written  # the daemon's unit stays home
    assert ["systemctl", "daemon-reload"] in doc["runcmd"]
    assert [
        "systemctl",
        "enable",
        "--now",
        "healer-agent-shutdown.service",
        "healer-agent.service",
    ] in doc["runcmd"]

    env_text, env_mode = written[AGENT_ENV]
    assert env_mode == "0600"
    env = dict(line.split("=", 1) for line in env_text.decode().splitlines())
    assert env["HEALER_MQTT_HOST"] == "mqtt.prod.internal"
    assert env["HEALER_MQTT_PORT"] == "8883" and env["HEALER_MQTT_TLS"] == "1"
    assert env["HEALER_NODE"] == "w-9" and env["HEALER_CLUSTER"] == "prod"
    assert env["HEALER_AUTO_REBOOT"] == "true"
    assert env["HEALER_MQTT_CA"] == "/etc/healer/agent-ca.pem"
    assert written["/etc/healer/agent-ca.pem"][0].decode() == CA_PEM
    # Credentials by reference: the environment names the file, the file holds the password.
    assert env["HEALER_MQTT_PASSWORD_FILE"] == AGENT_PASSWORD
    assert MQTT_PASSWORD not in env_text.decode()
    assert written[AGENT_PASSWORD] == (MQTT_PASSWORD.encode(), "0600")


def test_agent_files_are_discovered_from_the_package_layout(tmp_path: Path) -> None:
    agent = fake_agent(tmp_path)
    assert agent.script_path == "/opt/healer/healer_agent.py"
    assert sorted(agent.units) == [
        "apt-daily-upgrade.service.d/healer-agent.conf",
        "healer-agent-shutdown.service",
        "healer-agent.service",
    ]
    assert agent.enable == ["healer-agent-shutdown.service", "healer-agent.service"]
    assert AgentFiles.discover(tmp_path / "missing", tmp_path / "systemd") is None


def test_agent_configured_but_not_shipped_does_not_fall_back_to_unattended_reboots(
    tmp_path: Path, agent_cluster: ClusterConfig
) -> None:
    # Issue 8: this fell back to unattended-upgrades rebooting the machine at 02:00.
    with structlog.testing.capture_logs() as logs:
        text = UserDataBuilder(tmp_path, discover_agent=False)(agent_cluster, "workers", "w")
    conf = files(parse(text))["/etc/apt/apt.conf.d/52healer-unattended-upgrades"][0].decode()
    assert 'Automatic-Reboot "false"' in conf
    [event] = [e for e in logs if e["event"] == "provisioning.agent_not_shipped"]
    assert "do not reboot for updates" in event["hint"]


def test_unreadable_broker_ca_names_the_file(tmp_path: Path, agent_cluster: ClusterConfig) -> None:
    assert agent_cluster.agent is not None and agent_cluster.agent.tls_ca is not None
    agent_cluster.agent.tls_ca.unlink()
    builder = UserDataBuilder(tmp_path, agent=fake_agent(tmp_path))
    with pytest.raises(ConfigError, match=r"agent.tlsCa .*broker-ca.pem: cannot read"):
        builder(agent_cluster, "workers", "w")


def test_kubeadm_init_once_then_join_for_everyone_else(tmp_path: Path) -> None:
    builder = UserDataBuilder(tmp_path, discover_agent=False)
    c = kube_cluster()

    def kubeadm_docs(pool: str, name: str) -> list[dict[str, Any]]:
        written = files(parse(builder(c, pool, name)))
        content, mode = written[KUBEADM_CONFIG]
        assert mode == "0600"
        return list(yaml.safe_load_all(content))

    assert [d["kind"] for d in kubeadm_docs("cp", "prod-cp-1")] == [
        "InitConfiguration",
        "ClusterConfiguration",
    ]
    # Rendering the same machine again (a retried create) still inits.
    assert kubeadm_docs("cp", "prod-cp-1")[0]["kind"] == "InitConfiguration"
    joining_cp = kubeadm_docs("cp", "prod-cp-2")
    assert [d["kind"] for d in joining_cp] == ["JoinConfiguration"]
    assert "controlPlane" in joining_cp[0]
    worker = kubeadm_docs("workers", "prod-workers-1")
    assert [d["kind"] for d in worker] == ["JoinConfiguration"] and "controlPlane" not in worker[0]
    # A replacement of the first control-plane machine joins the existing cluster.
    assert kubeadm_docs("cp", "prod-cp-1-replacement")[0]["kind"] == "JoinConfiguration"


def test_no_machine_gets_a_private_key_in_its_user_data(tmp_path: Path) -> None:
    """The CAs, the service-account key and the encryption configuration go by the key push
    (tests/test_provisioning_secrets.py); the control plane's user data waits for them."""
    builder = UserDataBuilder(tmp_path, discover_agent=False)
    c = kube_cluster()
    cp = files(parse(builder(c, "cp", "cp-1")))
    worker = files(parse(builder(c, "workers", "w-1")))
    pki = tmp_path / "clusters" / "prod" / "pki"
    assert read_private(pki / "ca.key") is not None  # the CA exists, in healer's state only
    for written in (cp, worker):
        assert not [p for p in written if p.startswith(("/etc/kubernetes/pki", ENCRYPTION_DIR))]
        assert not any(b"PRIVATE KEY" in content for content, _ in written.values())
    cp_env = cp["/etc/healer/kubeadm/bootstrap.env"][0].decode()
    assert "KEYS_READY=/etc/healer/kubeadm/keys-ready" in cp_env and "KEY_WAIT=1800" in cp_env
    assert "KEYS_READY" not in worker["/etc/healer/kubeadm/bootstrap.env"][0].decode()


def test_bootstrap_script_is_valid_bash_and_never_puts_secrets_on_a_command_line(
    tmp_path: Path,
) -> None:
    doc = parse(UserDataBuilder(tmp_path, discover_agent=False)(kube_cluster(), "workers", "w"))
    written = files(doc)
    script, mode = written[BOOTSTRAP_SCRIPT]
    assert mode == "0700"
    path = tmp_path / "healer-bootstrap"
    path.write_bytes(script)
    subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)
    text = script.decode()
    assert 'kubeadm join --config "$KUBEADM_CONFIG"' in text
    assert "--token" not in text and "--certificate-key" not in text
    assert doc["runcmd"][-1] == [BOOTSTRAP_SCRIPT]
    env = written["/etc/healer/kubeadm/bootstrap.env"][0].decode()
    assert "KUBEADM_MODE=join" in env and "KUBERNETES_VERSION=v1.31.4" in env


def test_kubernetes_section_needs_the_state_dir() -> None:
    with pytest.raises(ConfigError, match="needs healer's state dir"):
        render_user_data(kube_cluster(), "workers", "w")


def test_kubernetes_without_an_endpoint_says_what_to_do(tmp_path: Path) -> None:
    c = cluster(kubernetes={})
    with pytest.raises(ConfigError, match=r"no Kubernetes API endpoint known yet.*healer apply"):
        render_user_data(c, "workers", "w", state_dir=tmp_path)


def test_compatible_function_renders_identity_and_hardening() -> None:
    doc = parse(render_user_data(cluster(), "workers", "prod-workers-1"))
    node_env = files(doc)["/etc/healer/node.env"][0].decode()
    assert "HEALER_NODE=prod-workers-1" in node_env and "HEALER_POOL=workers" in node_env
    assert SSHD_DROPIN in files(doc)


def test_no_secret_appears_in_the_logs(tmp_path: Path, agent_cluster: ClusterConfig) -> None:
    with structlog.testing.capture_logs() as logs:
        _all_variants(tmp_path, agent_cluster)
    state = ClusterState(tmp_path / "state", "prod")
    token = (state.root / "secrets" / "bootstrap-token").read_text().strip()
    secrets = {
        "bootstrap token": token,
        "bootstrap token secret": token.split(".")[1],
        "encryption key": (state.root / "secrets" / "encryption-key").read_text().strip(),
        "mqtt password": MQTT_PASSWORD,
    }
    for private in ("ca.key", "etcd/ca.key", "front-proxy-ca.key", "sa.key"):
        pem = (state.root / "pki" / private).read_text()
        secrets[private] = "".join(pem.splitlines()[1:-1])[:40]
    ssh_pem = (state.root / "ssh" / "id_ed25519").read_text()
    secrets["ssh private key"] = "".join(ssh_pem.splitlines()[1:-1])[:40]
    assert logs, "rendering logged nothing at all; the check below would prove nothing"
    dumped = "\n".join(repr(entry) for entry in logs)
    for what, value in secrets.items():
        assert value and value not in dumped, f"the {what} appears in the logs"


def test_check_references_finds_every_broken_reference_without_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_PW", raising=False)
    monkeypatch.setenv("BAD_TOKEN", "nope")
    bad_policy = tmp_path / "policy.yaml"
    bad_policy.write_text("kind: ConfigMap\n")
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello\n")
    c = kube_cluster(
        ssh={"publicKeyFile": str(tmp_path / "missing.pub")},
        agent={"brokerHost": "b", "tlsCa": str(not_pem), "password": {"env": "NOT_SET_PW"}},
        kubernetes={
            "audit": {"enabled": True, "policyFile": str(bad_policy)},
            "bootstrapToken": {"env": "BAD_TOKEN"},
        },
    )
    problems = check_references(c, where="healer.yaml: ")
    assert len(problems) == 5, problems
    assert problems[0].startswith("healer.yaml: cluster prod: ssh.publicKeyFile ")
    assert "missing.pub: cannot read" in problems[0]
    assert "agent.tlsCa" in problems[1] and "not a PEM certificate" in problems[1]
    assert "agent.password: secret: environment variable NOT_SET_PW is not set" in problems[2]
    assert "kubernetes.audit.policyFile" in problems[3] and "Policy" in problems[3]
    assert "kubernetes.bootstrapToken" in problems[4] and "nope" not in problems[4]
    assert not (tmp_path / "clusters").exists()
    assert check_references(kube_cluster()) == []


def test_without_automatic_reboots_the_agent_only_reports(
    tmp_path: Path, agent_cluster: ClusterConfig
) -> None:
    quiet = agent_cluster.model_copy(
        update={"upgrades": agent_cluster.upgrades.model_copy(update={"automatic_reboot": False})}
    )
    written = files(
        parse(UserDataBuilder(tmp_path, agent=fake_agent(tmp_path))(quiet, "workers", "w"))
    )
    env = written[AGENT_ENV][0].decode()
    assert "HEALER_AUTO_REBOOT=false" in env
    conf = written["/etc/apt/apt.conf.d/52healer-unattended-upgrades"][0].decode()
    assert 'Automatic-Reboot "false"' in conf
