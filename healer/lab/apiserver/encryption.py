"""Encryption at rest of Secrets, as the lab's control plane would do it: which key each Secret is
stored under, and whether every API server of the control plane can read it.

The lab's one API server plays all the cluster's API servers (one per control-plane machine).
Each has the key names of its EncryptionConfiguration, in order (the first writes; ``identity``
stores in the clear), which the harness reads from the files healer put on the lab's machines
(``<state>/lab-machines/<machine>/etc/kubernetes/encryption/config.yaml``). Writes go to the
servers in turn, as through the load balancer: a Secret is stored under the first key of the
server that took the write. Whatever one server stores that another cannot read (or a
configuration that can no longer read a stored Secret) is a *violation*: what a wrongly staged
key rotation does to a real cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

IDENTITY = "identity"

Key = tuple[str, str]  # (namespace, name)


def key_names(doc: Any) -> tuple[str, ...]:
    """The key names of an EncryptionConfiguration's Secrets providers, in order ("identity"
    for the identity provider); empty when it has none for Secrets."""
    names: list[str] = []
    for entry in (doc or {}).get("resources") or []:
        if "secrets" not in (entry.get("resources") or []):
            continue
        for provider in entry.get("providers") or []:
            for kind, spec in provider.items():
                if kind == IDENTITY:
                    names.append(IDENTITY)
                else:
                    names.extend(str(k["name"]) for k in (spec or {}).get("keys") or [])
    return tuple(names)


@dataclass
class EncryptionAtRest:
    servers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    stored: dict[Key, str] = field(default_factory=dict)  # Secret -> the key it is stored under
    violations: list[str] = field(default_factory=list)
    changes: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # (server, keys)
    writes: list[tuple[Key, str, str]] = field(default_factory=list)  # (Secret, server, key)
    _turn: int = 0

    def configure(self, server: str, keys: Sequence[str]) -> None:
        keys = tuple(keys)
        if self.servers.get(server) == keys:
            return
        self.servers[server] = keys
        self.changes.append((server, keys))
        for secret, key in self.stored.items():
            if key not in keys:
                self.violations.append(
                    f"server {server} now has keys {list(keys)}: it cannot read Secret "
                    f"{secret[0]}/{secret[1]}, stored under {key}"
                )

    def forget(self, server: str) -> None:
        self.servers.pop(server, None)

    def _next_server(self) -> str | None:
        names = sorted(self.servers)
        return names[self._turn % len(names)] if names else None

    def write_key(self) -> str:
        server = self._next_server()
        return self.servers[server][0] if server is not None else IDENTITY

    def stale(self, secret: Key) -> bool:
        """Whether an unchanged write of ``secret`` is still stored (its key is not the write
        key of the server that takes it), as the API server's storage layer decides."""
        return self.stored.get(secret) != self.write_key()

    def written(self, secret: Key) -> None:
        server = self._next_server()
        self._turn += 1
        key = self.servers[server][0] if server is not None else IDENTITY
        self.stored[secret] = key
        self.writes.append((secret, server or "", key))
        for other, keys in self.servers.items():
            if key not in keys:
                self.violations.append(
                    f"Secret {secret[0]}/{secret[1]} written under {key} by server {server}: "
                    f"server {other} (keys {list(keys)}) cannot read it"
                )

    def removed(self, secret: Key) -> None:
        self.stored.pop(secret, None)
