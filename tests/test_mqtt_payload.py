"""The MQTT wire contract: every channel mapping, every rejection reason, and fuzzing."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healer.config.provenance import Ownership
from healer.model import EventKind, NodeEvent
from healer.sources.mqtt_payload import (
    MAX_FUTURE_SKEW,
    MAX_MESSAGE_LEN,
    MAX_PACKAGES,
    MAX_REASON_LEN,
    PARSE_REASONS,
    REASONS,
    Rejection,
    is_node_name,
    parse_message,
    subscription_filter,
    topic_for,
)

NOW = 1_700_000_000.0
PREFIX = "healer/v1"
MAX = 16384
T = "healer/v1/prod/node-1"  # + "/<channel>"
# As with `mqtt.conditions: [NodeDiskFailing]`: the agents' own condition besides the built-in
# ones. Kubernetes conditions (Ready, DiskPressure, ...) are never MQTT's (test_provenance.py).
OWNERS = Ownership.of(mqtt_conditions=["NodeDiskFailing"])


def parse(
    topic: str,
    payload: bytes | dict[str, Any] | str,
    *,
    prefix: str = PREFIX,
    known: set[str] | None = None,
    max_payload: int = MAX,
) -> NodeEvent | Rejection:
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    if isinstance(payload, str):
        payload = payload.encode()
    return parse_message(
        topic,
        payload,
        prefix=prefix,
        now=NOW,
        max_payload=max_payload,
        known_clusters=known,
        owners=OWNERS,
    )


# -- every channel maps to the right event -------------------------------------------------


def v1(**fields: Any) -> dict[str, Any]:
    return {"v": 1, **fields}


def ready(status: Any = "True", **fields: Any) -> dict[str, Any]:
    return v1(condition="Ready", status=status, **fields)


def disk(status: Any = "True", **fields: Any) -> dict[str, Any]:
    return v1(condition="NodeDiskFailing", status=status, **fields)


K = EventKind
ACCEPTED = [
    # channel, payload, expected event fields
    pytest.param("heartbeat", v1(ts=NOW - 0.5), {"kind": K.HEARTBEAT, "at": NOW - 0.5}, id="hb"),
    pytest.param("heartbeat", v1(), {"kind": K.HEARTBEAT, "at": NOW}, id="hb-no-ts"),
    pytest.param("heartbeat", v1(ts=1_699_999_990), {"at": 1_699_999_990.0}, id="hb-int-ts"),
    pytest.param("heartbeat", v1(ts=None), {"at": NOW}, id="hb-null-ts"),
    pytest.param(
        "heartbeat", v1(ts=NOW + MAX_FUTURE_SKEW), {"at": NOW + MAX_FUTURE_SKEW}, id="ts-skew-limit"
    ),
    pytest.param(
        "heartbeat", v1(agent="x", up=5), {"kind": K.HEARTBEAT}, id="extra-fields-ignored"
    ),
    pytest.param(
        "health",
        disk("True", reason="SmartError", message="no"),
        {
            "kind": K.CONDITION,
            "condition": "NodeDiskFailing",
            "status": "True",
            "detail": {"reason": "SmartError", "message": "no"},
        },
        id="health",
    ),
    pytest.param(
        "health",
        v1(condition="RebootRequired", status="Unknown"),
        {"condition": "RebootRequired", "status": "Unknown", "detail": {}},
        id="health-minimal",
    ),
    pytest.param("health", disk("False"), {"status": "False"}, id="health-false"),
    pytest.param(
        "reboot",
        v1(event="required", reason="KernelUpdate"),
        {
            "kind": K.CONDITION,
            "condition": "RebootRequired",
            "status": "True",
            "detail": {"reason": "KernelUpdate"},
        },
        id="reboot-required",
    ),
    pytest.param(
        "reboot", v1(event="started"), {"kind": K.REBOOT_STARTED, "condition": None}, id="reboot"
    ),
    pytest.param(
        "reboot", v1(event="booted", ts=NOW - 3), {"kind": K.BOOTED, "at": NOW - 3}, id="booted"
    ),
    pytest.param(
        "upgrade",
        v1(event="started", packages=["linux-image-amd64", "openssl"]),
        {"kind": K.UPGRADE_STARTED, "detail": {"packages": ["linux-image-amd64", "openssl"]}},
        id="upgrade-started",
    ),
    pytest.param(
        "upgrade",
        v1(event="finished"),
        {"kind": K.UPGRADE_FINISHED, "detail": {}},
        id="upgrade-finished",
    ),
    pytest.param(
        "upgrade",
        v1(event="failed", packages=[], message="dpkg error"),
        {"kind": K.UPGRADE_FAILED, "detail": {"packages": [], "message": "dpkg error"}},
        id="upgrade-failed",
    ),
]


@pytest.mark.parametrize(("channel", "payload", "expected"), ACCEPTED)
def test_channel_maps_to_event(
    channel: str, payload: dict[str, Any], expected: dict[str, Any]
) -> None:
    event = parse(f"{T}/{channel}", payload)
    assert isinstance(event, NodeEvent), event
    assert (event.cluster, event.node, event.source) == ("prod", "node-1", "mqtt")
    for name, value in expected.items():
        assert getattr(event, name) == value, name


def test_prefix_with_slashes_and_trailing_slash() -> None:
    topic = "site/a/healer/prod/node-1.example.com/heartbeat"
    for prefix in ("site/a/healer", "site/a/healer/"):
        event = parse(topic, {"v": 1}, prefix=prefix)
        assert isinstance(event, NodeEvent)
        assert event.node == "node-1.example.com"
    assert subscription_filter("site/a/healer/") == "site/a/healer/+/+/+"
    assert topic_for("healer/v1", "c", "n", "health") == "healer/v1/c/n/health"


def test_known_clusters_accepts_configured_cluster() -> None:
    assert isinstance(parse(f"{T}/heartbeat", {"v": 1}, known={"prod"}), NodeEvent)


# -- every rejection reason ----------------------------------------------------------------

HB, HEALTH, REBOOT, UPGRADE = (f"{T}/{c}" for c in ("heartbeat", "health", "reboot", "upgrade"))
LONG_NODE = ".".join(["n" * 50] * 5)  # 254 characters
REJECTED = [
    # topic, payload, reason
    pytest.param("other/v1/prod/node-1/heartbeat", v1(), "bad_topic", id="wrong-prefix"),
    pytest.param("healer/v1", v1(), "bad_topic", id="prefix-only"),
    pytest.param("healer/v1x/prod/node-1/heartbeat", v1(), "bad_topic", id="prefix-not-a-level"),
    pytest.param("healer/v1/prod/heartbeat", v1(), "bad_topic", id="too-few-levels"),
    pytest.param("healer/v1/prod/node-1/heartbeat/x", v1(), "bad_topic", id="too-many-levels"),
    pytest.param("healer/v1/prod//heartbeat", v1(), "bad_topic", id="empty-node"),
    pytest.param("healer/v1/Prod/node-1/heartbeat", v1(), "bad_topic", id="upper-case-cluster"),
    pytest.param("healer/v1/prod.eu/node-1/heartbeat", v1(), "bad_topic", id="dotted-cluster"),
    pytest.param(f"healer/v1/{'c' * 64}/node-1/heartbeat", v1(), "bad_topic", id="cluster-64"),
    pytest.param("healer/v1/prod/-node/heartbeat", v1(), "bad_topic", id="node-leading-dash"),
    pytest.param("healer/v1/prod/node_1/heartbeat", v1(), "bad_topic", id="node-underscore"),
    pytest.param("healer/v1/prod/a..b/heartbeat", v1(), "bad_topic", id="node-empty-label"),
    pytest.param(f"healer/v1/prod/{'n' * 64}/heartbeat", v1(), "bad_topic", id="node-label-64"),
    pytest.param(f"healer/v1/prod/{LONG_NODE}/heartbeat", v1(), "bad_topic", id="node-254"),
    pytest.param(f"{T}/metrics", v1(), "unknown_channel", id="unknown-channel"),
    pytest.param(f"{T}/Heartbeat", v1(), "unknown_channel", id="channel-case"),
    pytest.param("healer/v1/staging/node-1/heartbeat", v1(), "unknown_cluster", id="cluster"),
    pytest.param(HB, json.dumps(v1(pad="x" * MAX)), "too_large", id="too-large"),
    pytest.param(HB, b'{"v": 1, "x": "\xff"}', "bad_json", id="not-utf8"),
    pytest.param(HB, "v=1", "bad_json", id="not-json"),
    pytest.param(HB, b"", "bad_json", id="empty"),
    pytest.param(HB, '{"v": 1', "bad_json", id="truncated"),
    pytest.param(HB, '{"v": 1, "ts": NaN}', "bad_json", id="nan"),
    pytest.param(HB, '{"v": 1, "ts": -Infinity}', "bad_json", id="infinity"),
    pytest.param(HB, "[" * 5000 + "]" * 5000, "bad_json", id="deep-nesting"),
    pytest.param(HB, '{"v": 1, "ts": ' + "9" * 5000 + "}", "bad_json", id="huge-int"),
    pytest.param(HB, "[1]", "bad_schema", id="array"),
    pytest.param(HB, '"hello"', "bad_schema", id="string"),
    pytest.param(HB, "null", "bad_schema", id="null"),
    pytest.param(HB, {"ts": NOW}, "bad_schema", id="no-version"),
    pytest.param(HB, {"v": "1"}, "bad_schema", id="version-string"),
    pytest.param(HB, {"v": 1.0}, "bad_schema", id="version-float"),
    pytest.param(HB, {"v": True}, "bad_schema", id="version-bool"),
    pytest.param(HB, {"v": 2}, "unsupported_version", id="version-2"),
    pytest.param(HB, {"v": 0}, "unsupported_version", id="version-0"),
    pytest.param(HB, v1(ts="2023-11-14T22:13:20Z"), "bad_timestamp", id="ts-string"),
    pytest.param(HB, v1(ts=True), "bad_timestamp", id="ts-bool"),
    pytest.param(HB, '{"v": 1, "ts": 1e400}', "bad_timestamp", id="ts-overflow"),
    pytest.param(HB, v1(ts=NOW + MAX_FUTURE_SKEW + 1), "bad_timestamp", id="ts-future"),
    pytest.param(HB, v1(ts=-1), "bad_timestamp", id="ts-negative"),
    pytest.param(HEALTH, v1(status="False"), "bad_schema", id="no-condition"),
    pytest.param(HEALTH, v1(condition="Ready"), "bad_schema", id="no-status"),
    pytest.param(HEALTH, ready(False), "bad_schema", id="status-bool"),
    pytest.param(HEALTH, ready("false"), "bad_schema", id="status-case"),
    pytest.param(HEALTH, v1(condition="ready", status="True"), "bad_schema", id="condition-lower"),
    pytest.param(HEALTH, v1(condition="Disk Full", status="True"), "bad_schema", id="cond-space"),
    pytest.param(HEALTH, v1(condition="A" * 64, status="True"), "bad_schema", id="cond-long"),
    pytest.param(HEALTH, ready(reason=3), "bad_schema", id="reason-number"),
    # Well formed, but MQTT does not own the condition (healer.config.provenance).
    pytest.param(HEALTH, ready("False"), "condition_not_owned", id="forged-ready-false"),
    pytest.param(HEALTH, ready("True"), "condition_not_owned", id="forged-ready-true"),
    pytest.param(
        HEALTH, v1(condition="DiskPressure", status="True"), "condition_not_owned", id="kube-cond"
    ),
    pytest.param(
        HEALTH, v1(condition="GpuFailed", status="True"), "condition_not_owned", id="unnamed"
    ),
    pytest.param(HEALTH, ready(reason="r" * (MAX_REASON_LEN + 1)), "bad_schema", id="reason-long"),
    pytest.param(HEALTH, ready(message="m" * (MAX_MESSAGE_LEN + 1)), "bad_schema", id="msg-long"),
    pytest.param(REBOOT, v1(), "bad_schema", id="reboot-no-event"),
    pytest.param(REBOOT, v1(event="finished"), "bad_schema", id="reboot-bad-event"),
    pytest.param(UPGRADE, v1(event="booted"), "bad_schema", id="upgrade-bad-event"),
    pytest.param(UPGRADE, v1(event="started", packages="ssl"), "bad_schema", id="pkgs-string"),
    pytest.param(UPGRADE, v1(event="started", packages=[1]), "bad_schema", id="pkg-number"),
    pytest.param(UPGRADE, v1(event="started", packages=[""]), "bad_schema", id="pkg-empty"),
    pytest.param(
        UPGRADE,
        v1(event="started", packages=["p"] * (MAX_PACKAGES + 1)),
        "bad_schema",
        id="too-many-packages",
    ),
]


@pytest.mark.parametrize(("topic", "payload", "reason"), REJECTED)
def test_rejection(topic: str, payload: bytes | dict[str, Any] | str, reason: str) -> None:
    result = parse(topic, payload, known={"prod"})
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result.message
    assert result.message
    assert len(result.message) < 300  # messages name the problem, never echo the payload


def test_every_documented_reason_is_exercised() -> None:
    assert {p.values[2] for p in REJECTED} == PARSE_REASONS
    assert PARSE_REASONS | {"unknown_node"} == REASONS


def test_topic_checks_come_before_payload_checks() -> None:
    # A bad topic with a bad payload is reported for the topic: that is what identifies the sender.
    result = parse("healer/v1/prod/node-1/nope", b"\xff" * (MAX + 1), known={"prod"})
    assert isinstance(result, Rejection) and result.reason == "unknown_channel"


def test_node_name_bounds() -> None:
    assert is_node_name(".".join(["n" * 63] * 3) + "." + "n" * 61)  # 253 characters
    assert not is_node_name(".".join(["n" * 63] * 3) + "." + "n" * 62)  # 254


# -- fuzzing: never raises, invalid input always yields a Rejection ------------------------

# Strategies are kept cheap (sampled values rather than regexes and deep recursion) so that
# 10,000 examples run in a few seconds; the interesting values are the boundary ones anyway.
_CLUSTERS = ["prod", "a", "b0", "x" * 63]
_NODES = [*_CLUSTERS, "node-1", "n.example.com"]
_BAD_NAMES = ["Bad", "", "-x", "x_y", "a..b", "é", "+", "#", "x" * 64]
# Mostly valid names so that most messages get past the topic checks to the payload checks.
_clusters = st.sampled_from(_CLUSTERS * 8 + _BAD_NAMES + ["n.example.com"])
_nodes = st.sampled_from(_NODES * 6 + _BAD_NAMES)
_channels = st.sampled_from(["heartbeat", "health", "reboot", "upgrade"] * 4 + ["Health", "x"])
_valid_topics = st.builds(lambda c, n, ch: f"{PREFIX}/{c}/{n}/{ch}", _clusters, _nodes, _channels)
_any_topics = st.one_of(
    st.text(max_size=40),
    st.builds(lambda rest: f"{PREFIX}/{rest}", st.text(alphabet="ab/-.", max_size=20)),
    _valid_topics,
)
_json_scalars = st.one_of(
    st.sampled_from([None, True, False, 0, 1, 2, -1, 1.0, 2**64, "", "1", "True", "Ready"]),
    st.floats(),
    st.text(max_size=8),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from("vtsx"), inner, max_size=3)
    ),
    max_leaves=5,
)
_ABSENT = object()
_WEIRD: list[Any] = [
    _ABSENT,
    None,
    True,
    False,
    0,
    -1,
    2**64,
    1.5,
    "",
    "x",
    [],
    {},
    ["a"],
    {"v": 1},
]
_LONG_REASON, _LONG_MESSAGE = "r" * (MAX_REASON_LEN + 1), "m" * (MAX_MESSAGE_LEN + 1)
# Per key: valid values (repeated, so most documents get deep) plus the edge cases; sampled,
# not generated, to keep each example cheap.
_FIELD_OPTIONS: dict[str, list[Any]] = {
    "v": [1] * 20 + [2, "1", 1.0, *_WEIRD],
    "ts": [_ABSENT, NOW, NOW - 1e6, NOW + MAX_FUTURE_SKEW] * 3
    + [NOW + MAX_FUTURE_SKEW + 0.001, -0.5, 1e308, math.nan, -math.inf, *_WEIRD],
    "condition": ["Ready", "DiskPressure"] * 8 + ["ready", "A" * 64, "Disk Full", *_WEIRD],
    "status": ["True", "False", "Unknown"] * 6 + ["true", *_WEIRD],
    "event": ["required", "started", "booted", "finished", "failed"] * 4 + ["Started", *_WEIRD],
    "reason": [_ABSENT] * 15 + ["KernelUpdate", "r" * MAX_REASON_LEN, _LONG_REASON, *_WEIRD],
    "message": [_ABSENT] * 15 + ["ok", "m" * MAX_MESSAGE_LEN, _LONG_MESSAGE, *_WEIRD],
    "packages": [_ABSENT] * 10
    + [["openssl"], []] * 3
    + [[""], ["p" * 201], ["a", 1], ["p"] * (MAX_PACKAGES + 1), *_WEIRD],
}
# Objects built from the schema's own keys, so the fuzzer reaches the deep validation paths.
_schema_docs = st.builds(
    lambda *values: {k: v for k, v in zip(_FIELD_OPTIONS, values, strict=True) if v is not _ABSENT},
    *(st.sampled_from(options) for options in _FIELD_OPTIONS.values()),
)


def _dump(value: Any) -> bytes:
    # allow_nan=True (the default) so NaN/Infinity reach the parser, which must refuse them.
    return json.dumps(value).encode()


_payloads = st.one_of(
    st.binary(max_size=100),
    st.builds(_dump, _json_values),
    st.builds(_dump, _schema_docs),
    st.builds(lambda t: t.encode("utf-8", "surrogatepass"), st.text(max_size=40)),
)
_KNOWN = frozenset({"prod", "a", "b0"})


def _check_invariants(topic: str, payload: bytes) -> None:
    result = parse_message(
        topic, payload, prefix=PREFIX, now=NOW, max_payload=512, known_clusters=None
    )
    if isinstance(result, Rejection):
        assert result.reason in PARSE_REASONS
        # The defensive catch-all in parse_message must never be what answered.
        assert not result.message.startswith("unexpected"), result.message
        return
    # Anything accepted really is valid: re-derive the contract independently.
    assert isinstance(result, NodeEvent)
    assert topic == f"{PREFIX}/{result.cluster}/{result.node}/" + topic.rsplit("/", 1)[1]
    assert len(payload) <= 512
    doc = json.loads(payload)
    assert type(doc) is dict and type(doc["v"]) is int and doc["v"] == 1
    assert math.isfinite(result.at) and 0 <= result.at <= NOW + MAX_FUTURE_SKEW
    assert result.source == "mqtt"
    if result.kind is EventKind.CONDITION:
        assert result.status in ("True", "False", "Unknown")


# Each example is a batch of messages: hypothesis' per-example engine overhead (~1 ms here)
# dominates the microseconds parse_message takes, and batching keeps >= 10,000 messages
# (2 tests x 400 examples x 13 messages = 10,400) to a few seconds. Shrinking still isolates
# the one failing message in a batch.
_BATCH = 13
_FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(st.lists(st.tuples(_any_topics, _payloads), min_size=_BATCH, max_size=_BATCH))
def test_fuzz_random_topics_and_payloads(messages: list[tuple[str, bytes]]) -> None:
    for topic, payload in messages:
        _check_invariants(topic, payload)


@_FUZZ
@given(st.lists(st.tuples(_valid_topics, _schema_docs), min_size=_BATCH, max_size=_BATCH))
def test_fuzz_schema_shaped_payloads(messages: list[tuple[str, dict[str, Any]]]) -> None:
    for topic, doc in messages:
        _check_invariants(topic, _dump(doc))


@settings(max_examples=300, deadline=None)
@given(topic=_valid_topics, doc=_schema_docs, known=st.sets(st.sampled_from(sorted(_KNOWN))))
def test_fuzz_known_clusters(topic: str, doc: dict[str, Any], known: set[str]) -> None:
    def run(clusters: set[str] | None) -> NodeEvent | Rejection:
        return parse_message(
            topic, _dump(doc), prefix=PREFIX, now=NOW, max_payload=MAX, known_clusters=clusters
        )

    result, unrestricted = run(known), run(None)
    topic_ok = not (
        isinstance(unrestricted, Rejection)
        and unrestricted.reason in ("bad_topic", "unknown_channel")
    )
    if topic_ok and topic.split("/")[2] not in known:
        assert isinstance(result, Rejection) and result.reason == "unknown_cluster"
    else:
        assert result == unrestricted
