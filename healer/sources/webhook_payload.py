"""The alert webhook's wire contract: request bodies -> :class:`NodeEvent` and alert blocks (pure).

Owns the two accepted formats, the mapping from alerts to nodes, and the fixed set of rejection
reasons with the HTTP status each one answers. :mod:`healer.sources.webhook` only moves bytes,
checks credentials and reports; what a body means is decided here, so it can be table-tested and
fuzzed without a server. Nothing here raises on any input.

**Alertmanager** (webhook payload ``"version": "4"``), ``POST /v1/alertmanager/<cluster>`` or
``POST /v1/alertmanager`` (then each alert names its cluster in the ``clusterLabel`` label):

* an alert whose ``alertname`` is in ``blockingAlerts`` becomes a :class:`BlockChange` for its
  cluster (firing -> blocks, resolved -> lifts), not a node condition;
* any other alert is mapped to a node by the first of ``nodeLabels`` it carries (a ``:port``
  suffix is stripped, so ``instance="w-1:9100"`` names ``w-1``; the value is lower-cased) and
  becomes ``CONDITION <type>=True`` while firing and ``=False`` once resolved, where ``<type>`` is
  ``conditions[alertname]`` or else the alertname itself. The webhook owns only the condition
  types named as values in ``conditions`` (:mod:`healer.config.provenance`): an alert whose type
  is not one of them, or is a Kubernetes condition such as ``Ready``, is rejected
  (``condition_not_owned``). ``since`` is the alert's ``startsAt``
  (firing) or ``endsAt`` (resolved), never later than now, so a ``timeout`` in
  ``unhealthyConditions`` counts from when the alert really started;
* several alerts for the same node and condition in one notification fold into one event, firing
  if any of them is.

**Generic**, ``POST /v1/events``: one JSON object ``{"cluster", "node", "condition", "status"}``
with ``status`` one of ``True``/``False``/``Unknown`` (JSON ``true``/``false`` accepted) and
optional ``reason`` and ``message`` strings. ``condition`` must be one the webhook owns (a value
of ``conditions``).

Rejections of a whole request (the HTTP status is in brackets):

``too_large`` [413]            the body is longer than ``maxBody``
``bad_json`` [400]             not UTF-8 or not JSON (NaN and Infinity are not JSON)
``bad_schema`` [422]           valid JSON of the wrong shape; the message names the field
``unsupported_version`` [422]  an Alertmanager payload whose ``version`` is not ``"4"``
``unknown_cluster`` [404]      the cluster in the URL (or the generic body) is not configured
``unknown_node`` [404]         generic format only: the node is not one healer manages
``condition_not_owned`` [403]  generic format only: the webhook may not set that condition

Rejections of single alerts inside an accepted Alertmanager notification (answered 200, listed
in the response and counted): ``unknown_cluster`` (no or an unknown cluster label),
``no_node`` (none of ``nodeLabels`` holds a node name), ``unknown_node`` (a node healer does not
manage), ``bad_condition`` (the condition type is not a CamelCase name: map the alert in
``conditions``), ``condition_not_owned`` (the alert's condition type is not one the webhook
owns: map the alert in ``conditions`` to a type of its own).

The server adds ``unauthorized`` and ``replayed`` [401] and ``body_timeout`` [408] (see
:mod:`healer.sources.webhook`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable, Collection, Container, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any, Final

from healer.config.provenance import CONDITION_NOT_OWNED as CONDITION_NOT_OWNED
from healer.config.provenance import WEBHOOK, Ownership
from healer.model import BlockChange, NodeEvent
from healer.sources.mqtt_payload import is_cluster_name, is_node_name

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

SOURCE: Final = "webhook"
ALERTMANAGER_VERSION: Final = "4"

UNAUTHORIZED: Final = "unauthorized"
REPLAYED: Final = "replayed"
TOO_LARGE: Final = "too_large"
BODY_TIMEOUT: Final = "body_timeout"
BAD_JSON: Final = "bad_json"
BAD_SCHEMA: Final = "bad_schema"
UNSUPPORTED_VERSION: Final = "unsupported_version"
UNKNOWN_CLUSTER: Final = "unknown_cluster"
UNKNOWN_NODE: Final = "unknown_node"
NO_NODE: Final = "no_node"
BAD_CONDITION: Final = "bad_condition"

#: HTTP status for each reason that can reject a whole request.
STATUS: Final[Mapping[str, int]] = {
    UNAUTHORIZED: 401,
    REPLAYED: 401,
    TOO_LARGE: 413,
    BODY_TIMEOUT: 408,
    BAD_JSON: 400,
    BAD_SCHEMA: 422,
    UNSUPPORTED_VERSION: 422,
    UNKNOWN_CLUSTER: 404,
    UNKNOWN_NODE: 404,
    CONDITION_NOT_OWNED: 403,
}
#: Reasons a single alert of an accepted notification can be rejected for.
ALERT_REASONS: Final = frozenset(
    {UNKNOWN_CLUSTER, NO_NODE, UNKNOWN_NODE, BAD_CONDITION, CONDITION_NOT_OWNED}
)
#: Every reason the webhook counts (``healer_events_rejected_total{source="webhook"}``).
REASONS: Final = frozenset(STATUS) | ALERT_REASONS

MAX_ALERTS: Final = 10_000
MAX_LABEL_LEN: Final = 1024
#: How many alert names :meth:`AlertRules.for_name` remembers.
MAX_CACHED_NAMES: Final = 1024

_CONDITION_RE: Final = re.compile(r"[A-Z][A-Za-z0-9]{0,62}")
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_STATUSES: Final = ("True", "False", "Unknown")
# Go's zero time: Alertmanager sends it as endsAt of alerts that have no end yet.
_GO_ZERO_YEAR: Final = 1


@dataclass(frozen=True)
class Rejection:
    """Why something was refused. ``reason`` is one of :data:`REASONS`."""

    reason: str
    message: str
    # Where known, what was refused (for the log line of a refused condition).
    cluster: str | None = None
    node: str | None = None
    condition: str | None = None

    @property
    def status(self) -> int:
        return STATUS.get(self.reason, 422)


@dataclass(frozen=True)
class AlertRules:
    """The parts of ``webhook:`` in the config the mapping needs."""

    node_labels: tuple[str, ...] = ("node", "kubernetes_node", "instance", "nodename", "hostname")
    cluster_label: str = "cluster"
    conditions: Mapping[str, str] = field(default_factory=dict)
    blocking_alerts: frozenset[str] = frozenset()

    @cached_property
    def owners(self) -> Ownership:
        """The webhook owns exactly the condition types its ``conditions`` map names."""
        return Ownership.of(webhook_conditions=self.conditions.values())

    def for_name(self, name: str) -> NameRule:
        """What an alert's name alone decides. Cached per name: the rules do not change once
        made (a new configuration makes new rules), and a sender that makes names up cannot
        grow the cache past :data:`MAX_CACHED_NAMES` (past it, a name is worked out anew)."""
        found = self._by_name.get(name)
        if found is None:
            found = self._rule_for(name)
            if len(self._by_name) < MAX_CACHED_NAMES:
                self._by_name[name] = found
        return found

    @cached_property
    def _by_name(self) -> dict[str, NameRule]:
        return {}

    def _rule_for(self, name: str) -> NameRule:
        condition = self.conditions.get(name, name)
        refusal: tuple[str, str] | None = None
        if _CONDITION_RE.fullmatch(condition) is None:
            refusal = (
                BAD_CONDITION,
                f"alert {_short(name)} does not name a CamelCase condition type; "
                "map it in webhook.conditions",
            )
        elif (refused := self.owners.explain(WEBHOOK, condition)) is not None:
            refusal = (CONDITION_NOT_OWNED, f"alert {_short(name)}: {refused}")
        return NameRule(blocking=name in self.blocking_alerts, condition=condition, refusal=refusal)


@dataclass(frozen=True, slots=True)
class NameRule:
    """What :class:`AlertRules` make of one alert name: whether it is a blocking alert, the
    condition type it sets, and, when that type is not one the webhook may set, the rejection
    (reason, message) of an alert of that name that names a known node."""

    blocking: bool
    condition: str
    refusal: tuple[str, str] | None


@dataclass(frozen=True)
class Parsed:
    """An accepted request: the events to emit, the block changes, the alerts left out."""

    events: tuple[NodeEvent, ...] = ()
    blocks: tuple[BlockChange, ...] = ()
    rejections: tuple[tuple[int, Rejection], ...] = ()  # (alert index, why)


class _Reject(Exception):
    """Internal: unwinds validation with a rejection; never leaves this module."""

    def __init__(self, reason: str, message: str, **about: str) -> None:
        super().__init__(message)
        self.rejection = Rejection(reason, message, **about)


NodeFilter = Callable[[str, str], bool]


def parse_alertmanager(
    body: bytes,
    *,
    path_cluster: str | None,
    rules: AlertRules,
    known_clusters: Container[str],
    now: float,
    max_body: int,
    is_known_node: NodeFilter | None = None,
    timeline: Callable[[float], float] | None = None,
) -> Parsed | Rejection:
    """An Alertmanager (v4) notification -> events and block changes, or why not.

    ``timeline`` places each event's ``since`` (the sender's wall-clock ``startsAt`` or
    ``endsAt``) on the daemon's timeline (``Clock.from_wall``); None keeps it as sent. Block
    changes keep the sender's time."""
    try:
        if path_cluster is not None:
            _check_cluster(path_cluster, known_clusters)
        doc = _decode(body, max_body)
        if "version" not in doc:
            raise _Reject(BAD_SCHEMA, "'version' is missing (Alertmanager sends \"4\")")
        if doc["version"] != ALERTMANAGER_VERSION:
            raise _Reject(
                UNSUPPORTED_VERSION,
                f"Alertmanager payload version {_short(doc['version'])} is not supported "
                '(this daemon reads "4")',
            )
        alerts = doc.get("alerts")
        if not isinstance(alerts, list):
            raise _Reject(BAD_SCHEMA, f"'alerts' must be an array, not {_json_type(alerts)}")
        if len(alerts) > MAX_ALERTS:
            raise _Reject(
                BAD_SCHEMA, f"'alerts' has {len(alerts)} entries; the limit is {MAX_ALERTS}"
            )
        return _map_alerts(
            alerts, path_cluster, rules, known_clusters, is_known_node, now, timeline
        )
    except _Reject as rej:
        return rej.rejection
    except Exception as exc:
        # "Never raises": one odd request must not become a 500. The fuzz tests assert this
        # branch is never what answers, so it hides no known bug.
        return Rejection(BAD_SCHEMA, f"unexpected {type(exc).__name__} while parsing the body")


def parse_generic(
    body: bytes,
    *,
    known_clusters: Container[str],
    now: float,
    max_body: int,
    is_known_node: NodeFilter | None = None,
    conditions: Collection[str] = (),
) -> Parsed | Rejection:
    """A generic ``{cluster, node, condition, status}`` object -> one event, or why not.

    ``conditions`` are the condition types the webhook owns (the values of
    ``webhook.conditions``); any other is refused (``condition_not_owned``)."""
    try:
        doc = _decode(body, max_body)
        cluster = _str_field(doc, "cluster")
        node = _str_field(doc, "node")
        condition = _str_field(doc, "condition")
        status = doc.get("status")
        if isinstance(status, bool):
            status = "True" if status else "False"
        if status not in _STATUSES:
            raise _Reject(
                BAD_SCHEMA, f"'status' is {_short(status)}; expected one of {', '.join(_STATUSES)}"
            )
        if not is_cluster_name(cluster):
            raise _Reject(BAD_SCHEMA, f"'cluster' {_short(cluster)} is not a DNS-1123 label")
        _check_cluster(cluster, known_clusters)
        if not is_node_name(node):
            raise _Reject(BAD_SCHEMA, f"'node' {_short(node)} is not a DNS-1123 subdomain")
        if _CONDITION_RE.fullmatch(condition) is None:
            raise _Reject(
                BAD_SCHEMA,
                f"'condition' {_short(condition)} is not a CamelCase name (at most 63 characters)",
            )
        if is_known_node is not None and not is_known_node(cluster, node):
            raise _Reject(UNKNOWN_NODE, f"node {cluster}/{node} is not managed by healer")
        refused = Ownership.of(webhook_conditions=conditions).explain(WEBHOOK, condition)
        if refused is not None:
            raise _Reject(
                CONDITION_NOT_OWNED, refused, cluster=cluster, node=node, condition=condition
            )
        detail = _prose(doc)
        event = NodeEvent.of_condition(
            cluster,
            node,
            at=now,
            source=SOURCE,
            condition=condition,
            status=status,
            since=None,
            detail=detail,
        )
        return Parsed(events=(event,))
    except _Reject as rej:
        return rej.rejection
    except Exception as exc:
        return Rejection(BAD_SCHEMA, f"unexpected {type(exc).__name__} while parsing the body")


def strip_port(value: str) -> str:
    """``"w-1:9100"`` -> ``"w-1"``, ``"[fd00::1]:9100"`` -> ``"fd00::1"``; a bare IPv6 address or
    a plain name is returned unchanged."""
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    host, sep, port = value.rpartition(":")
    if sep and host and ":" not in host and port.isdigit():
        return host
    return value


# --- internals -------------------------------------------------------------------------------


def _map_alerts(
    alerts: list[Any],
    path_cluster: str | None,
    rules: AlertRules,
    known_clusters: Container[str],
    is_known_node: NodeFilter | None,
    now: float,
    timeline: Callable[[float], float] | None = None,
) -> Parsed:
    """Check and map the alerts in one pass. A malformed alert refuses the whole request
    (:func:`_check_alert` raises), so nothing mapped before it is kept: the same answer as
    checking them all first, without a second walk."""
    blocks: list[BlockChange] = []
    rejections: list[tuple[int, Rejection]] = []
    # (cluster, node, condition) -> [firing, since, alert name]; insertion order is kept.
    folded: dict[tuple[str, str, str], list[Any]] = {}
    cluster_label, node_labels = rules.cluster_label, rules.node_labels
    for index, raw in enumerate(alerts):
        name, firing, labels, since = _check_alert(index, raw, now)
        cluster = path_cluster if path_cluster is not None else labels.get(cluster_label)
        if cluster is None or cluster not in known_clusters:
            what = (
                f"alert {_short(name)} has no {cluster_label!r} label and the URL names no cluster"
                if cluster is None
                else f"cluster {_short(cluster)} is not configured"
            )
            rejections.append((index, Rejection(UNKNOWN_CLUSTER, what)))
            continue
        rule = rules.for_name(name)
        if rule.blocking:
            blocks.append(BlockChange(cluster, name, _fingerprint(raw, labels), firing, since))
            continue
        node = _node_of(labels, node_labels)
        if node is None:
            rejections.append(
                (
                    index,
                    Rejection(
                        NO_NODE,
                        f"alert {_short(name)} carries none of the labels "
                        f"{', '.join(node_labels)} with a node name",
                    ),
                )
            )
            continue
        if is_known_node is not None and not is_known_node(cluster, node):
            rejections.append(
                (index, Rejection(UNKNOWN_NODE, f"node {cluster}/{node} is not managed by healer"))
            )
            continue
        condition = rule.condition
        if rule.refusal is not None:
            reason, message = rule.refusal
            about = (
                {"cluster": cluster, "node": node, "condition": condition}
                if reason == CONDITION_NOT_OWNED
                else {}
            )
            rejections.append((index, Rejection(reason, message, **about)))
            continue
        key = (cluster, node, condition)
        seen = folded.get(key)
        if seen is None:
            folded[key] = [firing, since, name]
        elif firing and not seen[0]:
            folded[key] = [True, since, name]
        elif firing == seen[0] and since < seen[1]:
            # Same state from several alerts: the earliest start is when the condition began.
            seen[1] = since
    events: list[NodeEvent] = []
    # Each sender time placed on our timeline once per request (alerts of a group share it).
    placed: dict[float, float] = {}
    for (cluster, node, condition), (firing, since, name) in folded.items():
        if timeline is not None:
            ours = placed.get(since)
            if ours is None:
                ours = placed[since] = timeline(since)
            since = ours
        events.append(
            NodeEvent.of_condition(
                cluster,
                node,
                at=now,
                source=SOURCE,
                condition=condition,
                status="True" if firing else "False",
                since=since,
                detail={"alert": name},
            )
        )
    return Parsed(events=tuple(events), blocks=tuple(blocks), rejections=tuple(rejections))


def _check_alert(index: int, raw: Any, now: float) -> tuple[str, bool, dict[str, str], float]:
    """One alert's shape: ``(alertname, firing, labels, since)``, or :class:`_Reject`
    (``bad_schema``) naming the field. ``since`` is never later than ``now``."""
    if not isinstance(raw, dict):
        raise _Reject(BAD_SCHEMA, f"alerts[{index}] must be an object, not {_json_type(raw)}")
    status = raw.get("status")
    if status == "firing":
        firing = True
    elif status == "resolved":
        firing = False
    else:
        raise _Reject(
            BAD_SCHEMA,
            f"alerts[{index}].status is {_short(status)}; expected 'firing' or 'resolved'",
        )
    labels = raw.get("labels")
    if not isinstance(labels, dict):
        raise _Reject(
            BAD_SCHEMA, f"alerts[{index}].labels must be an object, not {_json_type(labels)}"
        )
    for value in labels.values():
        if not isinstance(value, str) or len(value) > MAX_LABEL_LEN:
            raise _bad_label(index, labels)
    name = labels.get("alertname")
    if not name:
        raise _Reject(BAD_SCHEMA, f"alerts[{index}].labels.alertname is missing")
    stamp = _time(raw, "startsAt" if firing else "endsAt", index)
    # Never in the future: a sender's clock ahead of ours must not delay a threshold.
    since = now if stamp is None or stamp > now else stamp
    return name, firing, labels, since


def _bad_label(index: int, labels: Mapping[str, Any]) -> _Reject:
    """The refusal of the first label of ``labels`` that is not a short enough string."""
    key = next(k for k, v in labels.items() if not isinstance(v, str) or len(v) > MAX_LABEL_LEN)
    return _Reject(
        BAD_SCHEMA,
        f"alerts[{index}].labels.{_short(key, 30)} must be a string of at most "
        f"{MAX_LABEL_LEN} characters",
    )


def _fingerprint(raw: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """The alert's ``fingerprint`` (at most 64 characters), or one made of its labels."""
    fingerprint = raw.get("fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint:
        canonical = json.dumps(sorted(labels.items()), separators=(",", ":"))
        fingerprint = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return fingerprint[:64]


def _node_of(labels: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for label in names:
        value = labels.get(label)
        if value:
            node = _node_name(value)
            if node is not None:
                return node
    return None


@lru_cache(maxsize=4096)
def _node_name(value: str) -> str | None:
    """The node a label value names (``:port`` stripped, lower-cased), None if it names none.
    Cached: a pure function of the value, and the same nodes come back in every notification."""
    node = strip_port(value.strip()).lower()
    return node if is_node_name(node) else None


def _check_cluster(cluster: str, known: Container[str]) -> None:
    if cluster not in known:
        raise _Reject(UNKNOWN_CLUSTER, f"cluster {_short(cluster)} is not configured")


def _decode(body: bytes, max_body: int) -> dict[str, Any]:
    try:
        doc = decode_json_object(body, max_body, what="body")
    except PayloadRejected as exc:
        raise _Reject(exc.reason, str(exc)) from None
    return doc


def _time(raw: Mapping[str, Any], key: str, index: int) -> float | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _Reject(BAD_SCHEMA, f"alerts[{index}].{key} {_short(value)} is not an RFC 3339 time")
    try:
        return _instant(value)
    except ValueError as exc:
        raise _Reject(BAD_SCHEMA, f"alerts[{index}].{key} {_short(value)} {exc}") from None


@lru_cache(maxsize=4096)
def _instant(value: str) -> float | None:
    """An RFC 3339 time -> Unix seconds (None for Go's zero time); ValueError saying what is
    wrong with it. Cached: Alertmanager sends the same ``startsAt`` again with every repeat of
    a firing alert (a refused value is not cached, it is checked again)."""
    if _RFC3339.fullmatch(value) is None:
        raise ValueError("is not an RFC 3339 time")
    try:
        parsed = dt.datetime.fromisoformat(value.upper())
    except ValueError:
        raise ValueError("is not a valid date") from None
    if parsed.year <= _GO_ZERO_YEAR:
        return None
    try:
        return parsed.timestamp()
    except (OverflowError, ValueError):
        raise ValueError("is out of range") from None


def _str_field(doc: Mapping[str, Any], key: str) -> str:
    if key not in doc:
        raise _Reject(BAD_SCHEMA, f"field {key!r} is required")
    value = doc[key]
    if not isinstance(value, str):
        raise _Reject(BAD_SCHEMA, f"field {key!r} must be a string, not {_json_type(value)}")
    return value


def _prose(doc: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return dict(prose(doc))
    except PayloadRejected as exc:
        raise _Reject(exc.reason, str(exc)) from None
