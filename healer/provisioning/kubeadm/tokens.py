"""The cluster's kubeadm secrets: the bootstrap token (from the config by reference, or generated)
and the key Secrets are encrypted with at rest, both kept 0600 in the state dir."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import string
from dataclasses import dataclass
from pathlib import Path

import structlog

from healer.config import KubernetesConfig
from healer.errors import ConfigError
from healer.provisioning.keystore import ClusterState, SecretValue, private_value

log = structlog.get_logger("healer.provisioning")

BOOTSTRAP_TOKEN_GROUP = "system:bootstrappers:kubeadm:default-node-token"

_TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
_TOKEN_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class KubeadmSecrets:
    bootstrap_token: SecretValue  # "abcdef.0123456789abcdef"
    encryption_key: SecretValue  # base64 of 32 random bytes

    @property
    def token_id(self) -> str:
        """The public half of the bootstrap token (safe to log)."""
        return self.bootstrap_token.reveal().split(".", 1)[0]


def generate_bootstrap_token() -> str:
    pick = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(22))
    return f"{pick[:6]}.{pick[6:]}"


def check_bootstrap_token(value: str, where: str) -> str:
    if _TOKEN.fullmatch(value) is None:
        raise ConfigError(
            f"{where}: not a kubeadm bootstrap token (expected [a-z0-9]{{6}}.[a-z0-9]{{16}})"
        )
    return value


def check_encryption_key(value: str, where: Path) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{where}: the encryption key must be 32 bytes, base64-encoded")
    return value


ENCRYPTION_KEY_NAME = "healer-key-1"  # the cluster's first key, until a rotation
KEY_NAME_FILE = ("secrets", "encryption-key-name")


def encryption_key_name(state: ClusterState) -> str:
    """The name of the cluster's encryption key in its EncryptionConfiguration (each Secret's
    stored prefix names it): ``healer-key-1`` until `healer rotate encryption-key` made another
    (healer.provisioning.rotation)."""
    try:
        name = state.path(*KEY_NAME_FILE).read_text().strip()
    except FileNotFoundError:
        return ENCRYPTION_KEY_NAME
    return name or ENCRYPTION_KEY_NAME


def ensure_secrets(state: ClusterState, k8s: KubernetesConfig) -> KubeadmSecrets:
    """The cluster's bootstrap token and encryption key: loaded, or generated once (0600)."""
    if k8s.bootstrap_token is not None:
        token = check_bootstrap_token(
            k8s.bootstrap_token.reveal(), f"cluster {state.cluster}: kubernetes.bootstrapToken"
        )
    else:
        token_path = state.path("secrets", "bootstrap-token")
        raw, created = private_value(token_path, lambda: generate_bootstrap_token().encode())
        token = check_bootstrap_token(raw.decode().strip(), str(token_path))
        if created:
            log.info(
                "kubeadm.bootstrap_token_created",
                cluster=state.cluster,
                token_id=token.split(".", 1)[0],
            )
    key_path = state.path("secrets", "encryption-key")
    raw_key, key_created = private_value(
        key_path, lambda: base64.b64encode(secrets.token_bytes(32))
    )
    key = check_encryption_key(raw_key.decode().strip(), key_path)
    if key_created:
        log.info("kubeadm.encryption_key_created", cluster=state.cluster, path=str(key_path))
    return KubeadmSecrets(SecretValue(token), SecretValue(key))
