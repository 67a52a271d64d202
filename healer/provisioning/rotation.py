"""Rotating the key Secrets are encrypted with at rest, staged as Kubernetes documents it
("Rotating a decryption key"), and the CA rotation procedure.

The stages of ``healer rotate encryption-key``, each done on every control-plane machine before
the next begins:

1. ``add-key``: the new key becomes the *second* key of the EncryptionConfiguration (every API
   server can now read it, none writes with it yet);
2. ``write-new-key``: the new key first: every API server now writes with it;
3. ``rewrite-secrets``: every Secret is read and replaced through the API, so each is stored
   again, encrypted with the new key (an unchanged Secret stored under an older key is still
   written: the API server knows it is stale);
4. ``remove-old-key``: the old key leaves the configuration, last; the new one becomes the
   cluster's key in the state directory (what new control-plane machines get).

Stages 1 and 2 are separate because the API servers do not take a new configuration at the same
instant: were the key made first at once, a Secret written by an updated server could be read by
one not yet updated, which could not decrypt it.

This module owns the pure part (the stages, the EncryptionConfiguration of each, what is done
from the journal) and the key files; :mod:`healer.jobs.rotate` carries the stages out and
journals them in the state database.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from healer.cloud.machines import Machine
from healer.errors import ConfigError
from healer.provisioning.keydelivery import DirectoryPush, SshPush
from healer.provisioning.keystore import ClusterState, SecretValue
from healer.provisioning.kubeadm.documents import (
    ENCRYPTION_CONFIG,
    encryption_configuration,
)
from healer.provisioning.kubeadm.tokens import (
    KEY_NAME_FILE,
    check_encryption_key,
    encryption_key_name,
)
from healer.provisioning.machinefiles import MachineFile

ADD_KEY = "add-key"
WRITE_NEW_KEY = "write-new-key"
REWRITE_SECRETS = "rewrite-secrets"
REMOVE_OLD_KEY = "remove-old-key"
STAGES = (ADD_KEY, WRITE_NEW_KEY, REWRITE_SECRETS, REMOVE_OLD_KEY)
DONE = "done"
PUSH_STAGES = (ADD_KEY, WRITE_NEW_KEY, REMOVE_OLD_KEY)  # a new configuration on every machine

KEY_FILE = ("secrets", "encryption-key")
NEXT_KEY_FILE = ("secrets", "encryption-key.next")
_GENERATION = re.compile(r"^(?P<stem>.*?)(?P<n>\d+)$")


@dataclass(frozen=True)
class Key:
    name: str  # the name in the EncryptionConfiguration (stored in each Secret's prefix)
    secret: SecretValue


def next_stage(done: Sequence[str]) -> str:
    """The first stage not in ``done``, or :data:`DONE`."""
    return next((s for s in STAGES if s not in done), DONE)


def next_key_name(current: str) -> str:
    """``healer-key-1`` -> ``healer-key-2``; a name without a number gets ``-2``."""
    match = _GENERATION.match(current)
    if match is None:
        return f"{current}-2"
    return f"{match.group('stem')}{int(match.group('n')) + 1}"


def stage_keys(stage: str, old: str, new: str) -> tuple[str, ...]:
    """The key names, in order (the first writes), after ``stage``."""
    if stage == ADD_KEY:
        return (old, new)
    if stage in (WRITE_NEW_KEY, REWRITE_SECRETS):
        return (new, old)
    if stage in (REMOVE_OLD_KEY, DONE):
        return (new,)
    raise ValueError(f"unknown rotation stage {stage!r}")


def configuration(provider: str, keys: Sequence[Key]) -> dict[str, Any]:
    """The EncryptionConfiguration for Secrets with ``keys`` in order (the first writes)."""
    first, *rest = keys
    return encryption_configuration(
        provider, first.secret, name=first.name, more=[(k.name, k.secret) for k in rest]
    )


# -- the key files ------------------------------------------------------------------------------


def _read_key(path: Path) -> SecretValue:
    try:
        raw = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no encryption key; `healer apply` makes it with the cluster"
        ) from None
    return SecretValue(check_encryption_key(raw, path))


def _replace_private(path: Path, data: bytes) -> None:
    """Write ``path`` (0600) whole or not at all."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def current_key(state: ClusterState) -> Key:
    return Key(encryption_key_name(state), _read_key(state.path(*KEY_FILE)))


def next_key(state: ClusterState, name: str) -> Key:
    """The key being rotated to: generated once (0600) and kept until it is promoted, so a
    resumed rotation uses the same one."""
    path = state.path(*NEXT_KEY_FILE)
    if not path.exists():
        _replace_private(path, base64.b64encode(secrets.token_bytes(32)) + b"\n")
    return Key(name, _read_key(path))


def promote(state: ClusterState, new: Key) -> None:
    """The rotation is done: ``new`` is the cluster's key (new control-plane machines get it).
    Idempotent; the old key is gone from the state directory afterwards."""
    _replace_private(state.path(*KEY_FILE), new.secret.reveal().encode() + b"\n")
    _replace_private(state.path(*KEY_NAME_FILE), f"{new.name}\n".encode())
    state.path(*NEXT_KEY_FILE).unlink(missing_ok=True)


def config_file(provider: str, keys: Sequence[Key]) -> MachineFile:
    doc = yaml.safe_dump(configuration(provider, keys), sort_keys=False)
    return MachineFile(ENCRYPTION_CONFIG, doc.encode(), mode="0600", secret=True)


# -- putting a new configuration on a control-plane machine ---------------------------------


class SshConfigPush(SshPush):
    """:class:`~healer.provisioning.keydelivery.SshPush`, but the files replace what the machine
    has (the first push never does), and kube-apiserver is restarted to read them: the kubelet
    starts its static pod's container again."""

    def argv(self, machine: Machine, address: str) -> list[str]:
        argv = super().argv(machine, address)
        root = shlex.quote(self.root)
        script = (
            f"umask 077; tar -x -p -f - -C {root} && "
            "(crictl ps --name kube-apiserver -q | xargs -r crictl stop >/dev/null) && "
            "echo healer-encryption: written"
        )
        return [*argv[:-1], ("sudo -n " if self.sudo else "") + "sh -c " + shlex.quote(script)]


class DirectoryConfigPush(DirectoryPush):
    """The lab's machines: the files replace those in ``<root>/<machine>/``."""

    async def push(self, machine: Machine, address: str, files: Sequence[MachineFile]) -> None:
        target = self.machine_root(machine)
        for f in files:
            path = target / f.path.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            _replace_private(path, f.content)
