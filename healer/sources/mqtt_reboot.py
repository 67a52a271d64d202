"""The reboot arbitration protocol on MQTT: agents ask, healer answers (pure, no I/O).

Owns the two control topics and their payloads; the decision itself is
:mod:`healer.planner.reboots`. The payload framing is that of the v1 contract
(:mod:`healer.sources.mqtt_payload`: a UTF-8 JSON object with ``"v": 1`` and an optional ``ts``),
and so are the rejection reasons.

``<prefix>/<cluster>/<node>/reboot-request`` (agent -> healer, QoS 1, not retained)::

    {"v": 1, "id": "3f2a9c", "ts": 1700000000, "reason": "reboot-required"}

``id`` (1-64 characters of ``A-Za-z0-9._-``) is chosen by the agent and echoed in the answer;
``reason`` is optional free text (at most 128 characters).

``<prefix>/<cluster>/<node>/reboot-permit`` (healer -> agent, QoS 1, not retained)::

    {"v": 1, "id": "3f2a9c", "granted": true, "reason": "Granted", "message": "...",
     "expiresAt": 1700000600, "ts": 1700000000}
    {"v": 1, "id": "3f2a9c", "granted": false, "reason": "PoolBusy", "message": "...",
     "retryAfter": 60, "ts": 1700000000}

Not retained, so an agent never acts on an answer meant for an earlier request: it subscribes to
its ``reboot-permit`` topic *before* publishing the request, matches ``id``, and asks again (same
or new id) when no answer comes. A grant must be used (the agent publishes ``reboot`` /
``started``) before ``expiresAt``; after that the agent asks again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Container
from typing import Any, Final

from healer.model import Permit, RebootRequest
from healer.sources.mqtt_payload import (
    BAD_SCHEMA,
    BAD_TOPIC,
    MAX_REASON_LEN,
    SCHEMA_VERSION,
    UNKNOWN_CLUSTER,
    Rejection,
    _decode,
    _Reject,
    _timestamp,
    is_cluster_name,
    is_node_name,
)
from healer.sources.payload_text import short as _short

REBOOT_REQUEST: Final = "reboot-request"
REBOOT_PERMIT: Final = "reboot-permit"
CONTROL_CHANNELS: Final = frozenset({REBOOT_REQUEST, REBOOT_PERMIT})

_ID_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")


def control_topic(prefix: str, cluster: str, node: str, channel: str) -> str:
    if channel not in CONTROL_CHANNELS:
        raise ValueError(f"unknown control channel {channel!r}")
    return f"{prefix.rstrip('/')}/{cluster}/{node}/{channel}"


def control_channel(topic: str, prefix: str) -> str | None:
    """The control channel ``topic`` is on, or None for every other topic."""
    head = prefix.rstrip("/") + "/"
    if not topic.startswith(head):
        return None
    channel = topic.rpartition("/")[2]
    return channel if channel in CONTROL_CHANNELS else None


def parse_reboot_request(
    topic: str,
    payload: bytes,
    *,
    prefix: str,
    now: float,
    max_payload: int,
    known_clusters: Container[str] | None = None,
) -> RebootRequest | Rejection:
    """One ``reboot-request`` message -> a request, or why not. Never raises."""
    try:
        head = prefix.rstrip("/") + "/"
        parts = topic[len(head) :].split("/") if topic.startswith(head) else []
        if len(parts) != 3 or parts[2] != REBOOT_REQUEST:
            raise _Reject(BAD_TOPIC, f"expected {head}<cluster>/<node>/{REBOOT_REQUEST}")
        cluster, node, _ = parts
        if not is_cluster_name(cluster):
            raise _Reject(BAD_TOPIC, f"cluster {_short(cluster)} is not a DNS-1123 label")
        if not is_node_name(node):
            raise _Reject(BAD_TOPIC, f"node {_short(node)} is not a DNS-1123 subdomain")
        if known_clusters is not None and cluster not in known_clusters:
            raise _Reject(UNKNOWN_CLUSTER, f"cluster {cluster!r} is not configured")
        doc = _decode(payload, max_payload)
        at = _timestamp(doc, now)
        request_id = doc.get("id")
        if not isinstance(request_id, str) or _ID_RE.fullmatch(request_id) is None:
            raise _Reject(
                BAD_SCHEMA, "'id' must be 1-64 characters of letters, digits, '.', '_' or '-'"
            )
        reason = doc.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_LEN):
            raise _Reject(
                BAD_SCHEMA, f"'reason' must be a string of at most {MAX_REASON_LEN} characters"
            )
        return RebootRequest(cluster=cluster, node=node, id=request_id, at=at, reason=reason)
    except _Reject as rej:
        return rej.rejection
    except Exception as exc:
        return Rejection(BAD_SCHEMA, f"unexpected {type(exc).__name__} while parsing the message")


def permit_payload(permit: Permit, *, now: float) -> bytes:
    doc: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "id": permit.id,
        "granted": permit.granted,
        "reason": permit.reason,
        "message": permit.message,
        "ts": round(now, 3),
    }
    if permit.retry_after is not None:
        doc["retryAfter"] = round(permit.retry_after, 3)
    if permit.expires_at is not None:
        doc["expiresAt"] = round(permit.expires_at, 3)
    return json.dumps(doc).encode()
