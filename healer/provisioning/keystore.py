"""Where a cluster's generated secrets live in healer's state dir, and how they are written.

Layout, per cluster (directories 0700, private files 0600 from the moment they exist)::

    <state_dir>/clusters/<cluster>/
        ssh/id_ed25519, ssh/id_ed25519.pub      the cluster's SSH key (sshkeys.py)
        pki/...                                 the cluster CAs and keys (pki.py)
        secrets/bootstrap-token, encryption-key kubeadm secrets (kubeadm.py)
        kubeadm/init-node                       which machine runs `kubeadm init`
        endpoint.json                           the API endpoint (the load balancer)

A private file is created with ``os.open(..., 0o600)`` into a temporary name and linked into
place, so it is never readable by others, not even for an instant, and a crash never leaves half a
key behind. Linking (rather than renaming) also means that of two writers the first one wins and
the second reads the winner's key instead of replacing it.

:class:`SecretValue` wraps a secret so that it cannot end up in a log line or a ``repr`` by
accident; code that needs the value calls :meth:`SecretValue.reveal`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from healer.errors import ConfigError


class SecretValue:
    """A secret string that does not show itself in ``repr``/``str`` (and so not in logs)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "SecretValue(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretValue):
            return NotImplemented
        return secrets.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)


class ClusterState:
    """The state-dir area of one cluster."""

    def __init__(self, state_dir: Path, cluster: str) -> None:
        self.state_dir = Path(state_dir)
        self.cluster = cluster
        self.root = self.state_dir / "clusters" / cluster

    def dir(self, *parts: str) -> Path:
        """The directory ``<root>/<parts...>``, created 0700 (with its parents) if missing."""
        path = self.root.joinpath(*parts)
        missing: list[Path] = []
        probe = path
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):
                directory.mkdir(mode=0o700)
        return path

    def path(self, *parts: str) -> Path:
        """A file path under the cluster's root; its directory is created 0700."""
        return self.dir(*parts[:-1]) / parts[-1]


def read_private(path: Path) -> bytes | None:
    """The content of a private file, or None if it does not exist. A private file that others
    can read or write is refused rather than used: the secret may already be out."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{path}: permissions {stat.filemode(mode)} are too open for a private key or "
                "secret; healer keeps these 0600 (fix with `chmod 600`, or remove the file to "
                "have it generated again)"
            )
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes, mode: int) -> bool:
    """Create ``path`` with ``data`` unless it exists. True if this call created it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_private(path: Path, data: bytes) -> bool:
    """Create a 0600 file with ``data`` unless it already exists. True if created."""
    return _write_new(path, data, 0o600)


def write_public(path: Path, data: bytes) -> bool:
    """Create a 0644 file (certificates, public keys) unless it exists. True if created."""
    return _write_new(path, data, 0o644)


def _replace(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def replace_public(path: Path, data: bytes) -> None:
    """Write a 0644 file, replacing any previous one atomically (a re-issued certificate)."""
    _replace(path, data, 0o644)


def replace_private(path: Path, data: bytes) -> None:
    """Write a 0600 file, replacing any previous one atomically (a re-issued key)."""
    _replace(path, data, 0o600)


def private_value(path: Path, make: Callable[[], bytes]) -> tuple[bytes, bool]:
    """The private file's content, creating it from ``make()`` if absent.

    Returns ``(content, created)``. If another process created the file between our check and
    our write, its content wins and is returned."""
    existing = read_private(path)
    if existing is not None:
        return existing, False
    data = make()
    if write_private(path, data):
        return data, True
    winner = read_private(path)
    assert winner is not None
    return winner, False
