"""Validation of a user's SSH public key (``ssh.publicKey``), used while the config loads."""

from __future__ import annotations

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, rsa

_MIN_RSA_BITS = 3072


def parse_public_key(text: str) -> str:
    """Check that ``text`` is exactly one OpenSSH public key line and return it stripped.

    Raises ValueError with the reason: not a key, several lines, options before the key (an
    ``authorized_keys`` line is not a public key), or a weak algorithm (DSA, RSA < 3072 bits)."""
    line = text.strip()
    if not line:
        raise ValueError("the SSH public key is empty")
    if "\n" in line:
        raise ValueError("expected exactly one SSH public key line, got several")
    try:
        key = serialization.load_ssh_public_key(line.encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(
            f"not an OpenSSH public key ({exc}); expected a line like 'ssh-ed25519 AAAA... name'"
        ) from None
    if isinstance(key, dsa.DSAPublicKey):
        raise ValueError("DSA SSH keys are refused (OpenSSH disabled them); use ed25519")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        raise ValueError(
            f"RSA SSH key of {key.key_size} bits is too weak; use ed25519 or RSA >= {_MIN_RSA_BITS}"
        )
    return line
