"""Typed errors shared by every layer.

Retries are decided by type, as in kopf: a :class:`TemporaryError` is worth retrying (after
``delay`` seconds if given), a :class:`PermanentError` is not.
"""

from __future__ import annotations


class HealerError(Exception):
    """Base of every error healer raises on purpose."""


class ConfigError(HealerError):
    """The configuration file is unusable; the message names the file and field."""


class StateError(HealerError):
    """The state directory or its database is unusable (damaged, unreadable, held by another
    daemon); the message names the file and says what to do. Like a :class:`ConfigError`, a
    restart does not fix it: the command exits 2."""


class TemporaryError(HealerError):
    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(HealerError):
    pass


class ProviderError(TemporaryError):
    """A cloud provider call failed in a way that may succeed later (outage, throttling)."""


class KubeUnavailable(TemporaryError):
    """The Kubernetes API could not be reached or answered 5xx."""


class StateUnwritable(HealerError):
    """A write to the state database failed: the disk is full, the database or its filesystem
    is read-only, or the disk answered an I/O error (``kind``: ``DiskFull``, ``ReadOnly``,
    ``IOError``). Nothing of that write was kept. healer freezes its decisions until the
    database takes writes again (:mod:`healer.store.writable`); the message names the file and
    what to do."""

    def __init__(self, message: str, *, kind: str, path: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.path = path
