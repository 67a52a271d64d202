"""The one SSH key authorised on a cluster's machines.

Either the user's own public key from the config (``ssh.publicKey`` or ``ssh.publicKeyFile``:
self-managed), or an ed25519 key pair healer generates for the cluster (managed): the private key
in OpenSSH format at ``<state_dir>/clusters/<cluster>/ssh/id_ed25519``, created 0600, the public
key next to it. Every cluster gets its own key, so one leaked key opens one cluster, not all.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import structlog
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from healer.config.ssh_key import parse_public_key
from healer.errors import ConfigError
from healer.provisioning.keystore import ClusterState, private_value, write_public

log = structlog.get_logger("healer.provisioning")

PRIVATE_KEY_NAME = "id_ed25519"


class SshSettings(Protocol):
    """What this module reads from the cluster's ``ssh`` config section."""

    @property
    def public_key(self) -> str | None: ...

    @property
    def public_key_file(self) -> Path | None: ...


@dataclass(frozen=True)
class ClusterSshKey:
    public_key: str  # one OpenSSH line: "ssh-ed25519 AAAA... comment"
    fingerprint: str  # "SHA256:..." as ssh-keygen -l prints it
    source: Literal["generated", "config"]
    private_key_path: Path | None  # only for generated keys


def fingerprint(public_key: str) -> str:
    """The SHA256 fingerprint of an OpenSSH public key line, as ``ssh-keygen -l`` shows it."""
    blob = base64.b64decode(public_key.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def ensure_ssh_key(state: ClusterState | None, ssh: SshSettings) -> ClusterSshKey | None:
    """The cluster's authorised key: from the config if given there, else generated once in the
    state dir and reused. None when neither is possible (no key given, no state dir): then no key
    at all is authorised and nobody can log in over SSH."""
    if ssh.public_key is not None:
        line = parse_public_key(ssh.public_key)
        return ClusterSshKey(line, fingerprint(line), "config", None)
    if ssh.public_key_file is not None:
        return _from_file(ssh.public_key_file)
    if state is None:
        return None
    return _generated(state)


def _from_file(path: Path) -> ClusterSshKey:
    try:
        text = path.expanduser().read_text()
    except OSError as exc:
        raise ConfigError(f"ssh.publicKeyFile {path}: cannot read: {exc.strerror}") from exc
    try:
        line = parse_public_key(text)
    except ValueError as exc:
        raise ConfigError(f"ssh.publicKeyFile {path}: {exc}") from None
    return ClusterSshKey(line, fingerprint(line), "config", None)


def _generated(state: ClusterState) -> ClusterSshKey:
    private_path = state.path("ssh", PRIVATE_KEY_NAME)
    comment = f"healer@{state.cluster}"

    def make() -> bytes:
        key = ed25519.Ed25519PrivateKey.generate()
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )

    pem, created = private_value(private_path, make)
    try:
        private = serialization.load_ssh_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"{private_path}: not an unencrypted OpenSSH private key ({exc}); remove it to have "
            "a new one generated"
        ) from None
    public = private.public_key()
    line = (
        public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
        .strip()
        + f" {comment}"
    )
    public_path = private_path.with_name(PRIVATE_KEY_NAME + ".pub")
    write_public(public_path, (line + "\n").encode())
    key = ClusterSshKey(line, fingerprint(line), "generated", private_path)
    if created:
        log.info(
            "provisioning.ssh_key_generated",
            cluster=state.cluster,
            path=str(private_path),
            fingerprint=key.fingerprint,
        )
    return key


__all__ = [
    "ClusterSshKey",
    "ensure_ssh_key",
    "fingerprint",
    "parse_public_key",
]
