"""Fuzzing the webhook parsers: at least 10,000 random bodies, no exception escapes, every
rejection is counted.

Bodies are random bytes, random JSON, and objects built from the formats' own keys (so the fuzzer
gets past the JSON layer into the deep validation). Each accepted result is re-checked against
the contract independently; each result is then counted with the functions the server uses and
the metric deltas compared with what the parser returned. A last test sends a few hundred
mutated bodies through the real aiohttp handler.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healer.clock import VirtualClock
from healer.config import WebhookConfig
from healer.model import EventKind, NodeEvent
from healer.sources.mqtt_payload import is_node_name
from healer.sources.webhook import WebhookServer, count_accepted, count_rejection
from healer.sources.webhook_payload import (
    ALERT_REASONS,
    REASONS,
    STATUS,
    AlertRules,
    Parsed,
    Rejection,
    parse_alertmanager,
    parse_generic,
)
from healer.telemetry.metrics import EVENTS_RECEIVED, EVENTS_REJECTED

NOW = 1_700_000_000.0
MAX = 2048
KNOWN = frozenset({"lab", "prod"})
RULES = AlertRules(
    conditions={"disk_failing": "NodeDiskFailing", "Broken": "not a name"},
    blocking_alerts=frozenset({"KubeAPIDown"}),
)
_CONDITION_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def _total(counter: Any) -> float:
    # The counter's own collect(), not the registry's: that one also reads /proc every time.
    return sum(
        s.value
        for metric in counter.collect()
        for s in metric.samples
        if s.name.endswith("_total") and s.labels.get("source") == "webhook"
    )


def rejected_total() -> float:
    return _total(EVENTS_REJECTED)


def received_total() -> float:
    return _total(EVENTS_RECEIVED)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["version", "alerts", "labels", "x"]), inner, max_size=3),
    ),
    max_leaves=6,
)
_ABSENT = object()
_WEIRD: list[Any] = [_ABSENT, None, True, 0, -1, 1.5, "", "x", [], {}, ["a"], {"a": 1}]


# Schema-shaped documents are built from a hypothesis-drawn seed by plain ``random``: drawing
# every field through hypothesis strategies made generation, not parsing, take most of the time.
# Each field is valid most of the time (deep paths need mostly-valid documents) and otherwise
# one of the edge cases.
_BAD_RATE = 0.08
_GOOD_TIMES = [
    "2023-11-14T22:10:00Z",
    "2023-11-14T22:10:00.123456789+02:00",
    "0001-01-01T00:00:00Z",
    "2099-01-01T00:00:00z",
    _ABSENT,
]
_BAD_TIMES = [
    "9999-12-31T23:59:59-23:59",
    "0000-01-01T00:00:00Z",
    "2023-13-40T25:61:61Z",
    "2023-11-14",
    "yesterday",
    *_WEIRD,
]
_LABEL_KEYS = ["node", "instance", "cluster", "hostname", "kubernetes_node", "job"]
_LABEL_VALUES = ["w-1", "W-2:9100", "[fd00::1]:9100", "lab", "prod", "stranger", "other", "a b"]
_ALERT_NAMES = ["NodeDiskFailing", "KubeAPIDown", "disk_failing", "Broken", "lower", "A" * 64]


def _pick(rng: random.Random, good: list[Any], bad: list[Any]) -> Any:
    return rng.choice(bad) if rng.random() < _BAD_RATE else rng.choice(good)


def _put(doc: dict[str, Any], key: str, value: Any) -> None:
    if value is not _ABSENT:
        doc[key] = value


def _alert_doc(rng: random.Random) -> Any:
    if rng.random() < _BAD_RATE / 2:
        return rng.choice(_WEIRD[1:])
    labels: Any = {
        k: _pick(rng, _LABEL_VALUES, ["x" * 1025, *_WEIRD[2:]])
        for k in rng.sample(_LABEL_KEYS, rng.randint(0, 3))
    }
    _put(labels, "alertname", _pick(rng, _ALERT_NAMES, [_ABSENT, "", 7]))
    doc: dict[str, Any] = {}
    _put(doc, "status", _pick(rng, ["firing", "resolved"], ["Firing", *_WEIRD]))
    _put(doc, "labels", _pick(rng, [labels], _WEIRD))
    _put(doc, "startsAt", _pick(rng, _GOOD_TIMES, _BAD_TIMES))
    _put(doc, "endsAt", _pick(rng, _GOOD_TIMES, _BAD_TIMES))
    _put(doc, "fingerprint", _pick(rng, ["abc", "def", _ABSENT], ["", "f" * 100, *_WEIRD]))
    return doc


def _am_doc(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    doc: dict[str, Any] = {}
    _put(doc, "version", _pick(rng, ["4"], ["3", 4, *_WEIRD]))
    alerts = [_alert_doc(rng) for _ in range(rng.randint(1, 4))]
    _put(doc, "alerts", _pick(rng, [alerts], [[], *_WEIRD]))
    _put(doc, "status", rng.choice(["firing", "resolved", _ABSENT]))
    return doc


def _generic_doc(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    doc: dict[str, Any] = {}
    _put(doc, "cluster", _pick(rng, ["lab", "prod"], ["other", "Lab", *_WEIRD]))
    _put(doc, "node", _pick(rng, ["w-1", "w-1.example"], ["stranger", "W 1", "-x", *_WEIRD]))
    _put(doc, "condition", _pick(rng, ["NodeDiskFailing", "Ready"], ["x", "A" * 64, *_WEIRD]))
    _put(doc, "status", _pick(rng, ["True", "False", "Unknown", True, False], ["true", *_WEIRD]))
    _put(doc, "reason", _pick(rng, [_ABSENT, "Xid79"], ["r" * 129, *_WEIRD]))
    _put(doc, "message", _pick(rng, [_ABSENT, "ok"], ["m" * 1025, *_WEIRD]))
    return doc


_seeds = st.integers(min_value=0, max_value=2**32 - 1)
_am_docs = _seeds.map(_am_doc)
_generic_docs = _seeds.map(_generic_doc)


def _dump(value: Any) -> bytes:
    return json.dumps(value).encode()  # NaN/Infinity reach the parser, which must refuse them


_bodies = st.one_of(
    st.binary(max_size=120),
    st.builds(_dump, _json_values),
    st.builds(_dump, _am_docs),
    st.builds(_dump, _generic_docs),
    st.builds(lambda t: t.encode("utf-8", "surrogatepass"), st.text(max_size=40)),
)


def is_known_node(cluster: str, node: str) -> bool:
    return node != "stranger"


def check(kind: str, body: bytes, path_cluster: str | None) -> None:
    if kind == "alertmanager":
        result = parse_alertmanager(
            body,
            path_cluster=path_cluster,
            rules=RULES,
            known_clusters=KNOWN,
            now=NOW,
            max_body=MAX,
            is_known_node=is_known_node,
        )
    else:
        result = parse_generic(
            body,
            known_clusters=KNOWN,
            now=NOW,
            max_body=MAX,
            is_known_node=is_known_node,
            conditions=frozenset(RULES.conditions.values()),
        )
    rejected_before, received_before = rejected_total(), received_total()
    if isinstance(result, Rejection):
        assert result.reason in STATUS, result
        assert result.status in (400, 401, 403, 404, 413, 422)
        # The defensive catch-all must never be what answered.
        assert not result.message.startswith("unexpected"), result.message
        count_rejection(result)
        assert rejected_total() == rejected_before + 1
        assert received_total() == received_before
        return
    assert isinstance(result, Parsed)
    assert len(body) <= MAX
    for _, rejection in result.rejections:
        assert rejection.reason in ALERT_REASONS
    for event in result.events:
        assert isinstance(event, NodeEvent)
        assert event.kind is EventKind.CONDITION and event.source == "webhook"
        assert event.cluster in KNOWN and is_node_name(event.node) and event.node != "stranger"
        assert event.condition and event.condition[0].isupper()
        assert set(event.condition) <= _CONDITION_CHARS and len(event.condition) <= 63
        assert event.status in ("True", "False", "Unknown")
        assert event.since is None or event.since <= NOW
    for block in result.blocks:
        assert block.alert in RULES.blocking_alerts and block.cluster in KNOWN
    if kind == "generic":
        assert len(result.events) == 1 and not result.blocks and not result.rejections
    count_accepted(result)
    assert rejected_total() == rejected_before + len(result.rejections)
    assert received_total() == received_before + len(result.events) + len(result.blocks)


# Batches of bodies per example keep hypothesis' per-example overhead from dominating:
# 2 tests x 400 examples x 13 bodies = 10,400 bodies, a few seconds in all.
_BATCH = 13
_FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from([None, "lab", "lab", "nowhere"]),
            st.one_of(_bodies, st.builds(_dump, _am_docs)),
        ),
        min_size=_BATCH,
        max_size=_BATCH,
    )
)
def test_fuzz_alertmanager_bodies(requests: list[tuple[str | None, bytes]]) -> None:
    for path_cluster, body in requests:
        check("alertmanager", body, path_cluster)


@_FUZZ
@given(
    st.lists(st.one_of(_bodies, st.builds(_dump, _generic_docs)), min_size=_BATCH, max_size=_BATCH)
)
def test_fuzz_generic_bodies(bodies: list[bytes]) -> None:
    for body in bodies:
        check("generic", body, None)


def test_every_reason_is_documented() -> None:
    import healer.sources.webhook_payload as payload

    assert payload.__doc__ is not None
    for reason in REASONS:
        assert f"``{reason}``" in payload.__doc__, reason


def _mutate(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        if op < 0.3 and data:
            del data[rng.randrange(len(data)) :]
        elif op < 0.7 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            data.insert(rng.randrange(len(data) + 1), rng.choice(b'{}[]":,0aZ\\'))
    return bytes(data)


async def test_mutated_bodies_through_the_real_handler(tmp_path: Path) -> None:
    """Every request gets a 200 or its documented status, never a 500, and is counted."""
    valid = _dump(
        {
            "version": "4",
            "alerts": [
                {"status": "firing", "labels": {"alertname": "NodeDiskFailing", "node": "w-1"}},
                {"status": "resolved", "labels": {"alertname": "KubeAPIDown"}},
            ],
        }
    )

    async def emit(event: NodeEvent) -> None:
        pass

    server = WebhookServer(
        config=WebhookConfig.model_validate(
            {"allowUnauthenticated": True, "maxBody": 1024, "blockingAlerts": ["KubeAPIDown"]}
        ),
        known_clusters=["lab"],
        clock=VirtualClock(),
        emit=emit,
    )
    rng = random.Random(1234)
    statuses: set[int] = set()
    async with TestClient(TestServer(server.app())) as client:
        for i in range(300):
            body = valid if i % 10 == 0 else _mutate(rng, valid)
            before = rejected_total() + received_total()
            resp = await client.post("/v1/alertmanager/lab", data=body)
            statuses.add(resp.status)
            answer = await resp.json()
            assert resp.status in (200, 400, 413, 422), (body, answer)
            if resp.status != 200:
                assert answer["error"] in REASONS
                assert rejected_total() + received_total() == before + 1
            else:
                counted = answer["accepted"] + len(answer["blocks"]) + len(answer["rejected"])
                assert rejected_total() + received_total() == before + counted
    assert {200, 400} <= statuses
