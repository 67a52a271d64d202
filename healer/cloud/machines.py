"""The provider plugin boundary: the typed contract every cloud plugin fulfils.

This module owns the records that cross the boundary (:class:`Machine`, :class:`MachineRequest`,
the normalised :class:`MachineState`), the :class:`Provider` protocol the workflow calls, the
optional capabilities a plugin may add (:class:`PowerControl` for fencing,
:class:`CapacityPreflight` for surge), and the factory signature the daemon uses to build a
plugin. It imports nothing from libcloud, so the rest
of healer can type against it without pulling the cloud library in.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from healer.config import SecretRef


class MachineState(enum.StrEnum):
    """A machine's power state, normalised from libcloud's ``NodeState`` (which has twelve)."""

    PENDING = "pending"  # being created, starting or rebooting
    RUNNING = "running"
    STOPPED = "stopped"  # powered off, stopping, suspended or paused: it can come back
    TERMINATED = "terminated"  # destroyed (or being destroyed); never comes back
    ERROR = "error"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Machine:
    """One machine as the cloud reported it at the time of the call."""

    id: str  # the cloud's id; stable for the machine's life, never reused by healer
    name: str
    state: MachineState
    tags: Mapping[str, str]  # as read back from the cloud (may hold more than healer wrote)
    private_ips: tuple[str, ...] = ()
    created_at: float | None = None  # epoch seconds, when the cloud says
    extra: Mapping[str, Any] = field(default_factory=dict)  # JSON-able, provider specific


@dataclass(frozen=True)
class MachineRequest:
    """What to create. ``size``, ``image`` and ``location`` are ids or names the plugin resolves."""

    name: str
    size: str
    image: str
    location: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    user_data: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)  # driver ``ex_*`` keyword arguments


@runtime_checkable
class Provider(Protocol):
    """A cloud, as the remediation workflow sees it.

    Every method is safe to retry: plugins raise :class:`healer.errors.ProviderError` for
    failures worth retrying and :class:`healer.errors.PermanentError` for the rest, and the
    mutating calls are idempotent so a retry after an ambiguous failure does no harm.
    """

    name: str

    async def create_machine(self, request: MachineRequest) -> Machine:
        """Create a machine, or return the live one already carrying ``request.name``.

        Idempotent by name: an existing non-terminated machine with that name whose tags include
        ``request.tags`` is returned instead of creating a second. The name taken by a machine
        with other tags raises ``PermanentError``.
        """
        ...

    async def destroy_machine(self, machine: Machine) -> bool:
        """Destroy ``machine``; ``False`` if it was already gone or terminated.

        The machine is re-read by id first, and ``PermanentError`` is raised, with nothing
        destroyed, when its live name or tags no longer match ``machine``.
        """
        ...

    async def get_machine(self, name: str) -> Machine | None:
        """The non-terminated machine named ``name``, or ``None``."""
        ...

    async def list_machines(self, tags: Mapping[str, str]) -> list[Machine]:
        """Non-terminated machines carrying every tag in ``tags`` (all of them, when empty)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class CapacityCheck:
    """The answer of a capacity preflight: may ``count`` more machines like a request be made?

    ``reason`` is a stable CamelCase word when ``ok`` is false (``QuotaExceeded``,
    ``NoCapacity``); ``available`` is how many more machines fit, when the cloud says.
    """

    ok: bool
    reason: str = ""
    message: str = ""
    available: int | None = None


@runtime_checkable
class PowerControl(Protocol):
    """Optional capability: power a machine off without destroying it (fencing).

    The workflow fences a machine before it deletes its Node; a plugin without this capability
    is fenced by :meth:`Provider.destroy_machine` instead, which is just as safe but loses the
    machine's disks for a post-mortem.
    """

    async def power_off_machine(self, machine: Machine) -> bool:
        """Power ``machine`` off; return once the cloud reports it stopped (not "stopping").

        ``False`` when it was already stopped or terminated. Safe to retry. As for destroy, the
        machine is re-read by id first and ``PermanentError`` is raised, with nothing done, when
        its live name or tags no longer match ``machine``.
        """
        ...


@runtime_checkable
class CapacityPreflight(Protocol):
    """Optional capability: ask the cloud whether a machine can be created, before creating it.

    Needed for ``remediation.strategy: surge``: the replacement is created before the old machine
    is destroyed, so the cloud must have room for one more. Without it, surge falls back to
    the replace order.
    """

    async def check_capacity(self, request: MachineRequest, count: int = 1) -> CapacityCheck:
        """Whether ``count`` more machines like ``request`` fit in the quota now. Raises
        ``ProviderError`` when the cloud cannot be asked (retry later)."""
        ...


def can_power_off(provider: object) -> bool:
    """True when ``provider`` implements :class:`PowerControl`."""
    return isinstance(provider, PowerControl)


def can_check_capacity(provider: object) -> bool:
    """True when ``provider`` implements :class:`CapacityPreflight`."""
    return isinstance(provider, CapacityPreflight)


class ProviderFactory(Protocol):
    """How the daemon builds a plugin registered in the ``healer.providers`` entry-point group."""

    def __call__(
        self,
        *,
        cluster: str,
        options: Mapping[str, Any],
        credentials: Mapping[str, SecretRef],
        state_dir: Path,
    ) -> Provider: ...


def tags_match(actual: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """True when ``actual`` carries every key of ``wanted`` with the same value.

    A subset test rather than equality, because clouds add tags of their own (EC2's ``Name``).
    """
    return all(actual.get(key) == value for key, value in wanted.items())
