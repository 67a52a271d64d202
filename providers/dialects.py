"""Per-driver dialects: how one libcloud driver spells tags, user data, lookups and "not found".

libcloud normalises nodes but not these: EC2 takes tags as ``ex_metadata`` and reads them back
from ``node.extra["tags"]``, GCE has *labels* with a restricted alphabet, the lab takes
``ex_tags``. Healer cannot run without tags (they are how it tells its machines from anyone
else's), so a driver without a dialect is refused up front rather than guessed at.

This module holds what every dialect shares; each cloud's dialect lives in its package
(:mod:`providers.ec2.dialect`, :mod:`providers.gce.dialect`, :mod:`providers.lab.dialect`) and
is found through :mod:`providers.registry`.

A dialect's methods run in the provider's worker threads and may block.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from libcloud.compute.base import Node, NodeDriver, NodeImage
from libcloud.compute.types import NodeState

from healer.cloud.machines import MachineState

_STATES: dict[str, MachineState] = {
    NodeState.RUNNING.value: MachineState.RUNNING,
    NodeState.PENDING.value: MachineState.PENDING,
    NodeState.STARTING.value: MachineState.PENDING,
    NodeState.REBOOTING.value: MachineState.PENDING,
    NodeState.RECONFIGURING.value: MachineState.PENDING,
    NodeState.STOPPING.value: MachineState.STOPPED,
    NodeState.STOPPED.value: MachineState.STOPPED,
    NodeState.SUSPENDED.value: MachineState.STOPPED,
    NodeState.PAUSED.value: MachineState.STOPPED,
    NodeState.TERMINATED.value: MachineState.TERMINATED,
    NodeState.ERROR.value: MachineState.ERROR,
    NodeState.UNKNOWN.value: MachineState.UNKNOWN,
}


def normalise_state(state: Any) -> MachineState:
    """libcloud ``NodeState`` (or its string value) -> :class:`MachineState`."""
    return _STATES.get(str(getattr(state, "value", state)).lower(), MachineState.UNKNOWN)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status a libcloud error carries, whichever of its two error families it is."""
    for attr in ("code", "http_code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    return None


class Dialect(abc.ABC):
    """The behaviour shared by every driver; subclasses override what their driver spells
    differently. A base class rather than a protocol because the defaults are real behaviour."""

    name: str
    # Config options of the ``libcloud`` plugin that only this dialect understands.
    options: frozenset[str] = frozenset()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Dialect:
        """The dialect for a provider configured with ``options``."""
        return cls()

    @abc.abstractmethod
    def create_kwargs(self, *, tags: Mapping[str, str], user_data: str) -> dict[str, Any]:
        """Keyword arguments for ``create_node`` carrying the tags and the user data."""

    def create_node(self, driver: NodeDriver, **kwargs: Any) -> Node:
        """``driver.create_node(**kwargs)``; a dialect whose cloud needs a request parameter
        libcloud has no argument for adds it here."""
        return driver.create_node(**kwargs)

    def tags_of(self, node: Node) -> dict[str, str]:
        raw = (node.extra or {}).get("tags") or {}
        return {str(k): str(v) for k, v in dict(raw).items()}

    def state_of(self, node: Node) -> MachineState:
        return normalise_state(node.state)

    def created_at(self, node: Node) -> float | None:
        """When the cloud made ``node``, in epoch seconds, if it says."""
        return node.created_at.timestamp() if isinstance(node.created_at, datetime) else None

    def list_nodes(
        self, driver: NodeDriver, *, name: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[Node]:
        """Candidates for a lookup; the caller filters again, so this may return more."""
        return list(driver.list_nodes())

    def get_node(self, driver: NodeDriver, node_id: str) -> Node | None:
        return next((n for n in driver.list_nodes() if n.id == node_id), None)

    def find_images(self, driver: NodeDriver, ref: str) -> list[NodeImage] | None:
        """Images matching ``ref`` by id or name, or ``None`` to let the caller scan
        ``list_images()`` (cached) itself."""
        return None

    def is_not_found(self, exc: BaseException) -> bool:
        return http_status(exc) == 404

    def default_key(self, state_dir: Path) -> str | None:
        """The driver's ``key`` argument when no ``key`` credential is configured."""
        return None
