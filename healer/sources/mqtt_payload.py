"""The MQTT wire contract: topic layout and JSON payloads -> :class:`NodeEvent` (pure, no I/O).

Owns the schema node agents publish to and the fixed set of rejection reasons. The adapter in
:mod:`healer.sources.mqtt` only moves bytes; every decision about what a message means is here,
so it can be tested table-driven and fuzzed without a broker.

Topic: ``<prefix>/<cluster>/<node>/<channel>``; the prefix (default ``healer/v1``) may contain
slashes. Cluster names are DNS-1123 labels (at most 63 characters), node names DNS-1123
subdomains (at most 253 characters, labels at most 63), as in Kubernetes.

Payload: a UTF-8 JSON object with ``"v": 1``. ``ts`` (seconds since the epoch) is optional and
defaults to the receipt time. Unknown extra fields are ignored so agents can add fields within
version 1 without breaking older daemons.

==========  ============================================================  =====================
channel     payload fields                                                event
==========  ============================================================  =====================
heartbeat   ``ts``                                                        HEARTBEAT
health      ``condition`` (CamelCase, one MQTT owns), ``status``          CONDITION
            (True|False|Unknown), optional ``reason``, ``message``
reboot      ``event``: ``required`` | ``started`` | ``booted``;           CONDITION
            optional ``reason``, ``message``                              RebootRequired=True,
                                                                          REBOOT_STARTED, BOOTED
upgrade     ``event``: ``started`` | ``finished`` | ``failed``;           UPGRADE_STARTED,
            optional ``packages`` (list of names), ``reason``,            UPGRADE_FINISHED,
            ``message``                                                   UPGRADE_FAILED
==========  ============================================================  =====================

The two control channels of reboot arbitration, ``reboot-request`` and ``reboot-permit``, share
this framing but are not events: :mod:`healer.sources.mqtt_reboot` owns them, and the source
routes them there before this parser sees them.

Rejection reasons (stable strings: they are metric labels and log fields):

``bad_topic``            topic is not ``<prefix>/<cluster>/<node>/<channel>`` with valid names
``unknown_channel``      the channel is not one of the four above
``unknown_cluster``      the cluster is not in ``known_clusters``
``too_large``            the payload is longer than ``max_payload`` bytes
``bad_json``             not UTF-8, not JSON, or JSON with NaN/Infinity
``bad_schema``           not an object, ``v`` missing or not an integer, or a field is missing,
                         of the wrong type, out of its set or over its length bound
``unsupported_version``  ``v`` is an integer other than 1
``bad_timestamp``        ``ts`` is not a finite number, is negative, or is more than five minutes
                         in the future
``condition_not_owned``  a ``health`` message sets a condition MQTT does not own: a Kubernetes
                         condition (``Ready``, ``MemoryPressure``, ...: only the Kubernetes API
                         sets those) or one not named in ``mqtt.conditions``
                         (:mod:`healer.config.provenance` has the table)
``unknown_node``         (set by the source, not here) the node is not known to the daemon
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any, Final

from healer.config.provenance import CONDITION_NOT_OWNED as CONDITION_NOT_OWNED
from healer.config.provenance import DEFAULT_OWNERSHIP, MQTT, Ownership
from healer.model import EventKind, NodeEvent

# The free-text limits are part of the payload contract, so they are exported from here too.
from healer.sources.payload_text import MAX_MESSAGE_LEN as MAX_MESSAGE_LEN
from healer.sources.payload_text import MAX_REASON_LEN as MAX_REASON_LEN
from healer.sources.payload_text import (
    PayloadRejected,
    decode_json_object,
    prose,
)
from healer.sources.payload_text import json_type as _json_type
from healer.sources.payload_text import short as _short

SOURCE: Final = "mqtt"
DEFAULT_PREFIX: Final = "healer/v1"
SCHEMA_VERSION: Final = 1
CHANNELS: Final = frozenset({"heartbeat", "health", "reboot", "upgrade"})

BAD_TOPIC: Final = "bad_topic"
UNKNOWN_CHANNEL: Final = "unknown_channel"
UNKNOWN_CLUSTER: Final = "unknown_cluster"
TOO_LARGE: Final = "too_large"
BAD_JSON: Final = "bad_json"
BAD_SCHEMA: Final = "bad_schema"
UNSUPPORTED_VERSION: Final = "unsupported_version"
BAD_TIMESTAMP: Final = "bad_timestamp"
UNKNOWN_NODE: Final = "unknown_node"

#: Every reason :func:`parse_message` can return.
PARSE_REASONS: Final = frozenset(
    {
        BAD_TOPIC,
        UNKNOWN_CHANNEL,
        UNKNOWN_CLUSTER,
        TOO_LARGE,
        BAD_JSON,
        BAD_SCHEMA,
        UNSUPPORTED_VERSION,
        BAD_TIMESTAMP,
        CONDITION_NOT_OWNED,
    }
)
#: Every reason a message from MQTT can be rejected for (adds the source's ``unknown_node``).
REASONS: Final = PARSE_REASONS | {UNKNOWN_NODE}

# Clock skew between agents and the daemon is tolerated up to this much into the future; a
# timestamp beyond it would make a stale node look alive for that long.
MAX_FUTURE_SKEW: Final = 300.0

MAX_PACKAGES: Final = 512
MAX_PACKAGE_LEN: Final = 200

_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_CLUSTER_RE: Final = re.compile(rf"{_LABEL}")
_NODE_RE: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_CONDITION_RE: Final = re.compile(r"[A-Z][A-Za-z0-9]{0,62}")
_STATUSES: Final = ("True", "False", "Unknown")
# Topics already found well formed -> (prefix, cluster, node, channel): a fleet sends on a few
# topics per node again and again, so each is split and matched against the name patterns once.
# Bounded (senders choose topics): emptied when full.
_TOPICS: dict[str, tuple[str, str, str, str]] = {}
_TOPICS_MAX: Final = 65536

_REBOOT_EVENTS: Final[Mapping[str, EventKind]] = {
    "required": EventKind.CONDITION,
    "started": EventKind.REBOOT_STARTED,
    "booted": EventKind.BOOTED,
}
_UPGRADE_EVENTS: Final[Mapping[str, EventKind]] = {
    "started": EventKind.UPGRADE_STARTED,
    "finished": EventKind.UPGRADE_FINISHED,
    "failed": EventKind.UPGRADE_FAILED,
}


@dataclass(frozen=True)
class Rejection:
    """Why a message was not turned into an event. ``reason`` is one of :data:`REASONS`."""

    reason: str
    message: str
    # Where known, what the message was about (for the log line of a refused condition).
    cluster: str | None = None
    node: str | None = None
    condition: str | None = None


class _Reject(Exception):
    """Internal: unwinds validation with a rejection; never leaves this module."""

    def __init__(self, reason: str, message: str, **about: str) -> None:
        super().__init__(message)
        self.rejection = Rejection(reason, message, **about)


def subscription_filter(prefix: str) -> str:
    """The one wildcard subscription that covers every message of the contract."""
    return f"{_normal_prefix(prefix)}/+/+/+"


def heartbeat_filter(prefix: str, cluster: str) -> str:
    """The subscription to one cluster's heartbeats (its owner's, under per-cluster ownership)."""
    return f"{_normal_prefix(prefix)}/{cluster}/+/heartbeat"


def topic_for(prefix: str, cluster: str, node: str, channel: str) -> str:
    """The topic an agent publishes ``channel`` messages for ``cluster``/``node`` to."""
    return f"{_normal_prefix(prefix)}/{cluster}/{node}/{channel}"


def is_cluster_name(name: str) -> bool:
    return len(name) <= 63 and _CLUSTER_RE.fullmatch(name) is not None


def is_node_name(name: str) -> bool:
    return len(name) <= 253 and _NODE_RE.fullmatch(name) is not None


def parse_message(
    topic: str,
    payload: bytes,
    *,
    prefix: str,
    now: float,
    max_payload: int,
    known_clusters: Container[str] | None = None,
    owners: Ownership = DEFAULT_OWNERSHIP,
    timeline: Callable[[float], float] | None = None,
) -> NodeEvent | Rejection:
    """Map one MQTT message to an event, or say why not. Never raises on any input.

    ``known_clusters=None`` accepts every well-formed cluster name (for tools and the lab).
    ``owners`` says which conditions MQTT may set (the agent's own, plus ``mqtt.conditions``).
    ``timeline`` places the agent's wall-clock ``ts`` (checked against ``now``) on the
    daemon's timeline (``Clock.from_wall``) for the event's ``at``; None keeps it as sent.
    """
    try:
        cluster, node, channel = _parse_topic(topic, prefix)
        if known_clusters is not None and cluster not in known_clusters:
            raise _Reject(UNKNOWN_CLUSTER, f"cluster {cluster!r} is not configured")
        doc = _decode(payload, max_payload)
        at = _timestamp(doc, now)
        if timeline is not None:
            at = timeline(at)
        return _to_event(cluster, node, channel, doc, at, owners)
    except _Reject as rej:
        return rej.rejection
    except Exception as exc:
        # The contract is "never raises": one odd message must not take the source down. The
        # fuzz tests assert this branch is never what answers, so it hides no known bug.
        return Rejection(BAD_SCHEMA, f"unexpected {type(exc).__name__} while parsing the message")


def _normal_prefix(prefix: str) -> str:
    # A trailing slash in the configuration would otherwise produce an empty topic level.
    return prefix.rstrip("/")


def _parse_topic(topic: str, prefix: str) -> tuple[str, str, str]:
    known = _TOPICS.get(topic)
    if known is not None and known[0] == prefix:
        return known[1], known[2], known[3]
    parsed = _check_topic(topic, prefix)
    if len(_TOPICS) >= _TOPICS_MAX:
        _TOPICS.clear()
    _TOPICS[topic] = (prefix, *parsed)
    return parsed


def _check_topic(topic: str, prefix: str) -> tuple[str, str, str]:
    head = _normal_prefix(prefix) + "/"
    if not isinstance(topic, str) or not topic.startswith(head):
        raise _Reject(BAD_TOPIC, f"topic does not start with {head!r}")
    parts = topic[len(head) :].split("/")
    if len(parts) != 3:
        raise _Reject(
            BAD_TOPIC, f"expected {head}<cluster>/<node>/<channel>, got {len(parts)} level(s)"
        )
    cluster, node, channel = parts
    if not is_cluster_name(cluster):
        raise _Reject(BAD_TOPIC, f"cluster {_short(cluster)} is not a DNS-1123 label")
    if not is_node_name(node):
        raise _Reject(BAD_TOPIC, f"node {_short(node)} is not a DNS-1123 subdomain")
    if channel not in CHANNELS:
        raise _Reject(
            UNKNOWN_CHANNEL,
            f"channel {_short(channel)} is not one of {', '.join(sorted(CHANNELS))}",
        )
    return cluster, node, channel


def _decode(payload: bytes, max_payload: int) -> dict[str, Any]:
    try:
        doc = decode_json_object(payload, max_payload, what="payload")
    except PayloadRejected as exc:
        raise _Reject(exc.reason, str(exc)) from None
    version = doc.get("v")
    if "v" not in doc:
        raise _Reject(BAD_SCHEMA, "payload has no schema version field 'v'")
    if not _is_int(version):
        raise _Reject(BAD_SCHEMA, f"'v' must be an integer, not {_json_type(version)}")
    if version != SCHEMA_VERSION:
        raise _Reject(
            UNSUPPORTED_VERSION,
            f"schema version {_short(version)} is not supported (this daemon reads v1)",
        )
    return doc


def _timestamp(doc: Mapping[str, Any], now: float) -> float:
    if "ts" not in doc or doc["ts"] is None:
        return now
    ts = doc["ts"]
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise _Reject(BAD_TIMESTAMP, f"'ts' must be a number, not {_json_type(ts)}")
    try:
        value = float(ts)
    except OverflowError:
        raise _Reject(BAD_TIMESTAMP, "'ts' is not a finite number") from None
    if not math.isfinite(value):
        raise _Reject(BAD_TIMESTAMP, "'ts' is not a finite number")
    if value < 0:
        raise _Reject(BAD_TIMESTAMP, f"'ts' {value} is before the epoch")
    if value > now + MAX_FUTURE_SKEW:
        raise _Reject(
            BAD_TIMESTAMP,
            f"'ts' is {value - now:.0f}s in the future (at most {MAX_FUTURE_SKEW:.0f}s allowed)",
        )
    return value


def _to_event(
    cluster: str, node: str, channel: str, doc: Mapping[str, Any], at: float, owners: Ownership
) -> NodeEvent:
    def event(kind: EventKind, **fields: Any) -> NodeEvent:
        return NodeEvent(cluster=cluster, node=node, kind=kind, at=at, source=SOURCE, **fields)

    if channel == "heartbeat":
        return event(EventKind.HEARTBEAT)
    if channel == "health":
        condition = _required_str(doc, "condition")
        if _CONDITION_RE.fullmatch(condition) is None:
            raise _Reject(
                BAD_SCHEMA,
                f"'condition' {_short(condition)} is not a CamelCase name (at most 63 characters)",
            )
        status = _one_of(doc, "status", _STATUSES)
        detail = _prose(doc)
        # Checked once the message is known to be well formed: a malformed one is bad_schema.
        refused = owners.explain(MQTT, condition)
        if refused is not None:
            raise _Reject(
                CONDITION_NOT_OWNED, refused, cluster=cluster, node=node, condition=condition
            )
        return event(EventKind.CONDITION, condition=condition, status=status, detail=detail)
    if channel == "reboot":
        what = _one_of(doc, "event", tuple(_REBOOT_EVENTS))
        kind = _REBOOT_EVENTS[what]
        if kind is EventKind.CONDITION:
            return event(kind, condition="RebootRequired", status="True", detail=_prose(doc))
        return event(kind, detail=_prose(doc))
    # Only "upgrade" is left: _parse_topic admits nothing else.
    what = _one_of(doc, "event", tuple(_UPGRADE_EVENTS))
    detail = _prose(doc)
    packages = _packages(doc)
    if packages is not None:
        detail["packages"] = packages
    return event(_UPGRADE_EVENTS[what], detail=detail)


def _required_str(doc: Mapping[str, Any], key: str) -> str:
    if key not in doc:
        raise _Reject(BAD_SCHEMA, f"field {key!r} is required")
    value = doc[key]
    if not isinstance(value, str):
        raise _Reject(BAD_SCHEMA, f"field {key!r} must be a string, not {_json_type(value)}")
    return value


def _one_of(doc: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = _required_str(doc, key)
    if value not in allowed:
        raise _Reject(
            BAD_SCHEMA, f"field {key!r} is {_short(value)}; expected one of {', '.join(allowed)}"
        )
    return value


def _prose(doc: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return dict(prose(doc))
    except PayloadRejected as exc:
        raise _Reject(exc.reason, str(exc)) from None


def _packages(doc: Mapping[str, Any]) -> list[str] | None:
    value = doc.get("packages")
    if value is None:
        return None
    if not isinstance(value, list):
        raise _Reject(BAD_SCHEMA, f"'packages' must be a list, not {_json_type(value)}")
    if len(value) > MAX_PACKAGES:
        raise _Reject(
            BAD_SCHEMA, f"'packages' has {len(value)} entries; the limit is {MAX_PACKAGES}"
        )
    for i, name in enumerate(value):
        if not isinstance(name, str) or not 0 < len(name) <= MAX_PACKAGE_LEN:
            raise _Reject(
                BAD_SCHEMA,
                f"'packages[{i}]' must be a non-empty string of at most {MAX_PACKAGE_LEN} "
                "characters",
            )
    return list(value)


def _is_int(value: Any) -> bool:
    # JSON true/false arrive as bool, which Python counts as int; they are not versions.
    return isinstance(value, int) and not isinstance(value, bool)
