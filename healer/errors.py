"""Typed errors shared by every layer.

Retries are decided by type, as in kopf: a :class:`TemporaryError` is worth retrying (after
``delay`` seconds if given), a :class:`PermanentError` is not.
"""

from __future__ import annotations


class HealerError(Exception):
    """Base of every error healer raises on purpose."""


class ConfigError(HealerError):
    """The configuration file is unusable; the message names the file and field."""


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
