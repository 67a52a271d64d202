"""The per-cluster SSH key: generated ed25519 (OpenSSH, 0600) or the user's own, validated."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from healer.config import SshConfig
from healer.config.ssh_key import parse_public_key
from healer.errors import ConfigError
from healer.provisioning.keystore import ClusterState
from healer.provisioning.sshkeys import ensure_ssh_key, fingerprint
from tests.provisioning_support import cluster


def _openssh_public(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey, comment: str) -> str:
    raw = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return f"{raw.decode()} {comment}"


def test_generated_key_is_ed25519_openssh_and_private_file_is_0600(tmp_path: Path) -> None:
    state = ClusterState(tmp_path, "prod")
    previous = os.umask(0o022)  # the usual umask must not leave the key readable by others
    try:
        key = ensure_ssh_key(state, SshConfig())
    finally:
        os.umask(previous)
    assert key is not None and key.source == "generated"
    private = tmp_path / "clusters" / "prod" / "ssh" / "id_ed25519"
    assert key.private_key_path == private
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700
    pem = private.read_bytes()
    assert pem.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    loaded = serialization.load_ssh_private_key(pem, password=None)
    assert isinstance(loaded, ed25519.Ed25519PrivateKey)
    assert key.public_key.startswith("ssh-ed25519 ") and key.public_key.endswith(" healer@prod")
    assert (private.parent / "id_ed25519.pub").read_text().strip() == key.public_key
    # ssh-keygen itself reads the private key and derives the same public key and fingerprint.
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(private)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert derived[:2] == key.public_key.split()[:2]
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(private.parent / "id_ed25519.pub")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert key.fingerprint in listed


def test_generated_key_is_reused_and_unique_per_cluster(tmp_path: Path) -> None:
    first = ensure_ssh_key(ClusterState(tmp_path, "prod"), SshConfig())
    again = ensure_ssh_key(ClusterState(tmp_path, "prod"), SshConfig())
    other = ensure_ssh_key(ClusterState(tmp_path, "staging"), SshConfig())
    assert first is not None and again is not None and other is not None
    assert first.public_key == again.public_key
    assert first.fingerprint != other.fingerprint


def test_private_key_with_open_permissions_is_refused(tmp_path: Path) -> None:
    state = ClusterState(tmp_path, "prod")
    key = ensure_ssh_key(state, SshConfig())
    assert key is not None and key.private_key_path is not None
    key.private_key_path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"id_ed25519: permissions .* too open"):
        ensure_ssh_key(state, SshConfig())


def test_user_public_key_from_config_is_used_and_nothing_generated(tmp_path: Path) -> None:
    line = _openssh_public(ed25519.Ed25519PrivateKey.generate(), "alice@laptop")
    key = ensure_ssh_key(ClusterState(tmp_path, "prod"), SshConfig(publicKey=line))
    assert key is not None and key.source == "config" and key.public_key == line
    assert key.private_key_path is None
    assert not (tmp_path / "clusters" / "prod" / "ssh" / "id_ed25519").exists()


def test_user_public_key_file(tmp_path: Path) -> None:
    line = _openssh_public(ed25519.Ed25519PrivateKey.generate(), "bob")
    path = tmp_path / "bob.pub"
    path.write_text(line + "\n")
    key = ensure_ssh_key(None, SshConfig(publicKeyFile=path))
    assert key is not None and key.public_key == line and key.fingerprint == fingerprint(line)


def test_public_key_file_that_is_not_a_key_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "oops.pub"
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n...\n")
    with pytest.raises(ConfigError, match=r"ssh.publicKeyFile .*oops.pub"):
        ensure_ssh_key(None, SshConfig(publicKeyFile=path))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("ssh-ed25519 AAAA", "not an OpenSSH public key"),
        ('command="rm -rf /" ssh-ed25519 AAAAC3Nz', "not an OpenSSH public key"),
        ("ssh-ed25519 AAAAC3Nz x\nssh-ed25519 AAAAC3Nz y", "exactly one"),
    ],
)
def test_invalid_public_keys_are_rejected(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_public_key(text)


def test_weak_rsa_key_is_rejected() -> None:
    weak = _openssh_public(rsa.generate_private_key(public_exponent=65537, key_size=1024), "old")
    with pytest.raises(ValueError, match="too weak"):
        parse_public_key(weak)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"clusters\[0\]\.ssh\.publicKey: not an OpenSSH"):
        cluster(ssh={"publicKey": "ssh-rsa garbage"})
    with pytest.raises(ConfigError, match="at most one"):
        cluster(
            ssh={
                "publicKey": _openssh_public(ed25519.Ed25519PrivateKey.generate(), "x"),
                "publicKeyFile": "/k.pub",
            }
        )


def test_no_state_dir_and_no_configured_key_authorises_nothing() -> None:
    assert ensure_ssh_key(None, SshConfig()) is None
