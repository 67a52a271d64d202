"""Helpers for the machine-hardening and cluster-level provisioning tests: cluster configs,
the real ``cloud-init schema`` and ``sshd`` checks, and a fake node agent as the package ships it."""

from __future__ import annotations

import base64
import gzip
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from healer.config import ClusterConfig, parse_config
from healer.provisioning.userdata import AgentFiles

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
CLOUD_INIT = shutil.which("cloud-init") or "/usr/bin/cloud-init"


def cluster(**extra: Any) -> ClusterConfig:
    """A cluster with a 3-machine control plane and a worker pool, plus ``extra`` keys."""
    doc: dict[str, Any] = {
        "name": "prod",
        "provider": {"plugin": "lab"},
        "pools": [
            {"name": "cp", "role": "control-plane", "size": 3},
            {"name": "workers", "size": 2, "labels": {"tier": "web"}},
        ],
    }
    doc.update(extra)
    return parse_config({"clusters": [doc]}).clusters[0]


def kube_cluster(**extra: Any) -> ClusterConfig:
    k8s = {"controlPlaneEndpoint": "10.0.0.10"} | extra.pop("kubernetes", {})
    return cluster(kubernetes=k8s, **extra)


def files(doc: dict[str, Any]) -> dict[str, tuple[bytes, str]]:
    """path -> (decoded content, permissions) from a cloud-config's write_files."""
    out: dict[str, tuple[bytes, str]] = {}
    for entry in doc["write_files"]:
        content = entry["content"]
        encoding = entry.get("encoding")
        if encoding == "gz+b64":
            raw = gzip.decompress(base64.b64decode(content))
        elif encoding == "b64":
            raw = base64.b64decode(content)
        else:
            assert encoding is None, encoding
            raw = content.encode()
        assert entry["path"] not in out, f"{entry['path']} written twice"
        out[entry["path"]] = (raw, entry["permissions"])
    return out


def require_program(path: str, package: str) -> str:
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"{path} is missing: install the Debian package {package} (.ci/system-deps)")
    return path


def cloud_init_schema(text: str, tmp_path: Path, name: str = "user-data") -> None:
    """Fail unless the real ``cloud-init schema`` accepts ``text`` with no error and no
    deprecation."""
    require_program(CLOUD_INIT, "cloud-init")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    result = subprocess.run(
        [CLOUD_INIT, "schema", "--config-file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"cloud-init schema rejected {name}:\n{output}"
    assert "Valid cloud-config" in output, output
    assert "deprecat" not in output.lower(), f"cloud-init reports deprecations in {name}:\n{output}"


def sshd_host_key(tmp_path: Path) -> Path:
    key = tmp_path / "ssh_host_ed25519_key"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
            check=True,
            timeout=30,
        )
    return key


def sshd(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the real sshd in test mode with a host key made for the test."""
    require_program(SSHD, "openssh-server")
    # sshd -t refuses to run without its privilege-separation directory, which the Debian
    # service creates at start; tests run as root in CI.
    privsep = Path("/run/sshd")
    if not privsep.is_dir():
        if os.geteuid() != 0:
            pytest.fail("sshd -t needs /run/sshd; run the tests as root (as CI does)")
        privsep.mkdir(mode=0o755, parents=True, exist_ok=True)
    key = sshd_host_key(tmp_path)
    return subprocess.run(
        [SSHD, *args, "-h", str(key)], capture_output=True, text=True, timeout=30, check=False
    )


def fake_agent(tmp_path: Path) -> AgentFiles:
    """The agent as the package would ship it: its modules and systemd units on disk."""
    script = tmp_path / "agent" / "healer_agent.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text("#!/usr/bin/env python3\nprint('agent')\n" + "# padding\n" * 400)
    units = tmp_path / "systemd"
    units.mkdir(exist_ok=True)
    (units / "healer-agent.service").write_text(
        "[Unit]\nDescription=healer node agent\n\n[Service]\n"
        "EnvironmentFile=/etc/healer/agent.env\n"
        "ExecStart=/usr/bin/python3 /opt/healer/healer_agent.py run\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    (units / "healer-agent-shutdown.service").write_text(
        "[Unit]\nDescription=healer agent: announce reboots\n\n[Service]\nType=oneshot\n"
        "ExecStart=/usr/bin/python3 /opt/healer/healer_agent.py rebooting\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    (units / "healer.service").write_text("[Service]\nExecStart=/usr/bin/healer run\n")
    dropins = units / "apt-daily-upgrade.service.d"
    dropins.mkdir(exist_ok=True)
    (dropins / "healer-agent.conf").write_text(
        "[Service]\nExecStartPre=-/usr/bin/python3 /opt/healer/healer_agent.py upgrade started\n"
    )
    agent = AgentFiles.discover(script.parent, units)
    assert agent is not None
    return agent
