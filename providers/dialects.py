"""Per-driver dialects: how one libcloud driver spells tags, user data, lookups and "not found".

libcloud normalises nodes but not these: EC2 takes tags as ``ex_metadata`` and reads them back
from ``node.extra["tags"]``, GCE has *labels* with a restricted alphabet, the lab takes
``ex_tags``. Healer cannot run without tags (they are how it tells its machines from anyone
else's), so a driver without a dialect is refused up front rather than guessed at.

A dialect's methods run in the provider's worker threads and may block.
"""

from __future__ import annotations

import abc
import gzip
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from libcloud.common.exceptions import BaseHTTPError
from libcloud.compute.base import Node, NodeDriver, NodeImage
from libcloud.compute.types import NodeState

from healer.cloud.machines import MachineState
from healer.errors import PermanentError

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


EC2_USER_DATA_LIMIT = 16384  # bytes, before base64


class Dialect(abc.ABC):
    """The behaviour shared by every driver; subclasses override what their driver spells
    differently. A base class rather than a protocol because the defaults are real behaviour."""

    name: str

    @abc.abstractmethod
    def create_kwargs(self, *, tags: Mapping[str, str], user_data: str) -> dict[str, Any]:
        """Keyword arguments for ``create_node`` carrying the tags and the user data."""

    def tags_of(self, node: Node) -> dict[str, str]:
        raw = (node.extra or {}).get("tags") or {}
        return {str(k): str(v) for k, v in dict(raw).items()}

    def state_of(self, node: Node) -> MachineState:
        return normalise_state(node.state)

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


class LabDialect(Dialect):
    name = "healer_lab"

    def create_kwargs(self, *, tags: Mapping[str, str], user_data: str) -> dict[str, Any]:
        return {"ex_tags": dict(tags), "ex_userdata": user_data}

    def get_node(self, driver: NodeDriver, node_id: str) -> Node | None:
        found = driver.list_nodes(ex_node_ids=[node_id])
        return found[0] if found else None

    def default_key(self, state_dir: Path) -> str | None:
        from providers.lab.driver import DB_FILENAME

        return str(state_dir / DB_FILENAME)


class Ec2Dialect(Dialect):
    """EC2 and EC2-compatible drivers (every ``BaseEC2NodeDriver``).

    Tags go in as ``ex_metadata`` (sent as a ``TagSpecification`` on ``RunInstances``, so a
    machine is never visible untagged) and lookups are filtered on the server: listing a whole
    account to find one name would not scale.
    """

    name = "ec2"
    # Listed as "live" for lookups; "shutting-down" is a termination in progress.
    _LIVE = ["pending", "running", "stopping", "stopped"]
    _NOT_FOUND = ("InvalidInstanceID.NotFound", "InvalidAMIID.NotFound", "InvalidAMIID.Malformed")

    def __init__(self, *, image_owner: str = "self") -> None:
        # Names of AMIs are not unique across accounts; anyone can publish "debian-12". A name
        # is therefore only looked up among images of one owner ("self" unless configured).
        self.image_owner = image_owner

    def create_kwargs(self, *, tags: Mapping[str, str], user_data: str) -> dict[str, Any]:
        # libcloud base64-encodes ex_userdata itself. EC2 takes at most 16 KiB of user data;
        # cloud-init recognises gzip by its magic bytes, so larger documents go gzipped.
        data: str | bytes | None = user_data or None
        if user_data and len(user_data.encode()) > EC2_USER_DATA_LIMIT:
            data = gzip.compress(user_data.encode(), mtime=0)
            if len(data) > EC2_USER_DATA_LIMIT:
                raise PermanentError(
                    f"user data is {len(data)} bytes even gzipped; EC2 accepts {EC2_USER_DATA_LIMIT}"
                )
        return {"ex_metadata": dict(tags), "ex_userdata": data}

    def state_of(self, node: Node) -> MachineState:
        # libcloud maps "shutting-down" to UNKNOWN; for healer it is already gone, and treating
        # it as live would let a retried destroy terminate it a second time.
        status = (node.extra or {}).get("status")
        if status == "shutting-down":
            return MachineState.TERMINATED
        if status == "stopping":
            return MachineState.STOPPED
        return normalise_state(node.state)

    def list_nodes(
        self, driver: NodeDriver, *, name: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[Node]:
        filters: dict[str, Any] = {"instance-state-name": list(self._LIVE)}
        if name is not None:
            filters["tag:Name"] = name
        for key, value in (tags or {}).items():
            filters[f"tag:{key}"] = value
        return list(driver.list_nodes(ex_filters=filters))

    def get_node(self, driver: NodeDriver, node_id: str) -> Node | None:
        try:
            found = driver.list_nodes(ex_node_ids=[node_id])
        except BaseHTTPError as exc:
            if self.is_not_found(exc):
                return None
            raise
        return found[0] if found else None

    def find_images(self, driver: NodeDriver, ref: str) -> list[NodeImage] | None:
        ec2: Any = driver  # the EC2 driver's list_images takes ex_ filters the base lacks
        try:
            if ref.startswith("ami-"):
                return list(ec2.list_images(ex_image_ids=[ref]))
            return list(ec2.list_images(ex_owner=self.image_owner, ex_filters={"name": ref}))
        except BaseHTTPError as exc:
            if self.is_not_found(exc):
                return []
            raise

    def is_not_found(self, exc: BaseException) -> bool:
        # EC2 answers 400 with an error code, not 404.
        message = str(getattr(exc, "message", "") or exc)
        return http_status(exc) == 400 and any(code in message for code in self._NOT_FOUND)


# GCE label keys and values: lowercase letters, digits, "-" and "_", at most 63 characters;
# keys start with a letter. Tags like "healer.io/pool" need an encoding: every other character
# becomes "_" plus two hex digits per UTF-8 byte ("healer.io/pool" -> "healer_2eio_2fpool"), and
# "_" itself is escaped so that decoding is exact.
_GCE_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_GCE_ESCAPE = re.compile(r"_([0-9a-f]{2})")
_GCE_MAX = 63


def gce_encode(text: str) -> str:
    return "".join(c if c in _GCE_PLAIN else "".join(f"_{b:02x}" for b in c.encode()) for c in text)


def gce_decode(label: str) -> str:
    out = bytearray()
    pos = 0
    for match in _GCE_ESCAPE.finditer(label):
        out += label[pos : match.start()].encode()
        out.append(int(match.group(1), 16))
        pos = match.end()
    out += label[pos:].encode()
    return out.decode("utf-8", errors="replace")


class GceDialect(Dialect):
    """Google Compute Engine: tags become labels (encoded), user data the ``user-data`` key."""

    name = "gce"

    def create_kwargs(self, *, tags: Mapping[str, str], user_data: str) -> dict[str, Any]:
        labels: dict[str, str] = {}
        for key, value in tags.items():
            k, v = gce_encode(key), gce_encode(value)
            if not k[:1].isalpha():
                raise PermanentError(f"tag {key!r} cannot be a GCE label: keys must start a-z")
            for what, text in (("key", k), ("value", v)):
                if len(text) > _GCE_MAX:
                    raise PermanentError(
                        f"tag {key!r}: its encoded GCE label {what} {text!r} is longer than "
                        f"{_GCE_MAX} characters"
                    )
            labels[k] = v
        kwargs: dict[str, Any] = {"ex_labels": labels}
        if user_data:
            kwargs["ex_metadata"] = {"user-data": user_data}
        return kwargs

    def tags_of(self, node: Node) -> dict[str, str]:
        labels = (node.extra or {}).get("labels") or {}
        return {gce_decode(str(k)): gce_decode(str(v)) for k, v in dict(labels).items()}

    def list_nodes(
        self, driver: NodeDriver, *, name: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[Node]:
        return list(driver.list_nodes(ex_zone="all"))

    def get_node(self, driver: NodeDriver, node_id: str) -> Node | None:
        return next((n for n in driver.list_nodes(ex_zone="all") if n.id == node_id), None)


# Dialects by libcloud provider name, then by driver class (so EC2-compatible drivers registered
# under other names, and subclasses, are recognised).
_BY_NAME: dict[str, type[Dialect]] = {
    "ec2": Ec2Dialect,
    "gce": GceDialect,
    "healer_lab": LabDialect,
}
_BY_CLASS: dict[str, type[Dialect]] = {
    "BaseEC2NodeDriver": Ec2Dialect,
    "GCENodeDriver": GceDialect,
    "LabNodeDriver": LabDialect,
}


def dialect_class_for(driver_name: str, driver_cls: type) -> type[Dialect] | None:
    found = _BY_NAME.get(driver_name.lower())
    if found is not None:
        return found
    for klass in driver_cls.__mro__:
        if klass.__name__ in _BY_CLASS:
            return _BY_CLASS[klass.__name__]
    return None


def supported_drivers() -> list[str]:
    return sorted(_BY_NAME)
