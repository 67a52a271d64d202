"""What the webhook's hot path remembers or shortcuts never changes an answer.

The tracker finds each node's one key by (cluster, node) (``knows``, and every event's fold),
the alert rules their verdict per alert name, the parser the node each label value names, and
the server the bytes of a plain "all accepted" answer; a debug line is skipped when its level is
off. Each is checked here against the answer it stands for,
including after what it was made from has changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from structlog.testing import capture_logs

from healer.clock import VirtualClock
from healer.health.tracker import HealthTracker
from healer.model import LABEL_POOL, EventKind, NodeEvent, NodeKey
from healer.sources import webhook_payload
from healer.sources.webhook import _accepted_body
from healer.sources.webhook_payload import (
    BAD_CONDITION,
    BAD_SCHEMA,
    CONDITION_NOT_OWNED,
    MAX_CACHED_NAMES,
    UNKNOWN_NODE,
    AlertRules,
    NameRule,
    Parsed,
    Rejection,
    parse_alertmanager,
)
from healer.store.sqlite import Store
from healer.telemetry.logs import enabled_for
from tests.helpers import lab_like_config


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[HealthTracker]:
    store = Store.open(tmp_path / "state")
    try:
        yield HealthTracker(config=lab_like_config(), store=store, clock=VirtualClock())
    finally:
        store.close()


async def _add(tracker: HealthTracker, node: str) -> None:
    await tracker.handle(
        NodeEvent("lab", node, EventKind.NODE_ADDED, 0.0, "kube", labels={LABEL_POOL: "workers"})
    )


def _forget(tracker: HealthTracker, node: str) -> None:
    """The node is gone for good (a deleted node stays known, as gone, until forgotten)."""
    tracker.forget(NodeKey("lab", node))


DISK_RULES = AlertRules(conditions={"NodeDiskFailing": "NodeDiskFailing"})


def _parse(body: bytes, **overrides: Any) -> Parsed | Rejection:
    """``parse_alertmanager`` of ``body`` for cluster ``lab`` (``overrides`` change the rest)."""
    args: dict[str, Any] = {
        "path_cluster": "lab",
        "rules": DISK_RULES,
        "known_clusters": {"lab"},
        "now": 100.0,
        "max_body": 4096,
    }
    return parse_alertmanager(body, **{**args, **overrides})


# -- HealthTracker.knows --------------------------------------------------------------------


async def test_knows_follows_nodes_as_they_come_and_go(tracker: HealthTracker) -> None:
    assert not tracker.knows("lab", "w-1")
    await _add(tracker, "w-1")
    assert tracker.knows("lab", "w-1") and tracker.knows("lab", "w-1")  # the kept key
    assert not tracker.knows("lab", "w-2") and not tracker.knows("prod", "w-1")
    _forget(tracker, "w-1")
    assert not tracker.knows("lab", "w-1"), "a node gone is not known, though its key was kept"
    assert not tracker.knows("lab", "w-1")
    await _add(tracker, "w-1")
    assert tracker.knows("lab", "w-1")


async def test_knows_follows_many_nodes_coming_and_going(tracker: HealthTracker) -> None:
    """The keys of nodes gone are let go with them; what is known is still known, and an event
    for a node found by its key folds into that node."""
    names = [f"w-{i}" for i in range(200)]
    for name in names:
        await _add(tracker, name)
        assert tracker.knows("lab", name)
    for name in names[:190]:
        _forget(tracker, name)
    for i in range(200):  # new nodes, while the keys of the gone ones wait
        await _add(tracker, f"x-{i}")
        assert tracker.knows("lab", f"x-{i}")
    assert [n for n in names if tracker.knows("lab", n)] == names[190:]
    assert all(tracker.knows("lab", f"x-{i}") for i in range(200))
    assert {obs.node for obs, _ in tracker.nodes("lab")} == {
        *names[190:],
        *(f"x-{i}" for i in range(200)),
    }


async def test_an_alert_for_a_node_gone_is_refused_though_it_was_known(
    tracker: HealthTracker,
) -> None:
    body = json.dumps(
        {
            "version": "4",
            "alerts": [
                {"status": "firing", "labels": {"alertname": "NodeDiskFailing", "node": "w-1"}}
            ],
        }
    ).encode()

    def parse() -> Parsed | Rejection:
        return _parse(body, is_known_node=tracker.knows)

    await _add(tracker, "w-1")
    first = parse()
    assert isinstance(first, Parsed) and [e.node for e in first.events] == ["w-1"]
    _forget(tracker, "w-1")
    second = parse()
    assert isinstance(second, Parsed) and not second.events
    assert [(i, r.reason) for i, r in second.rejections] == [(0, UNKNOWN_NODE)]


# -- AlertRules.for_name ----------------------------------------------------------------------

RULES = AlertRules(
    conditions={"node_disk_failing": "NodeDiskFailing", "KubeletDown": "Ready"},
    blocking_alerts=frozenset({"KubeAPIDown"}),
)


@pytest.mark.parametrize(
    ("name", "blocking", "condition", "reason"),
    [
        ("node_disk_failing", False, "NodeDiskFailing", None),  # mapped to a type it owns
        ("NodeDiskFailing", False, "NodeDiskFailing", None),  # a type it owns, by name
        ("KubeAPIDown", True, "KubeAPIDown", CONDITION_NOT_OWNED),  # blocking: no condition
        ("KubeletDown", False, "Ready", CONDITION_NOT_OWNED),  # a Kubernetes condition
        ("Ready", False, "Ready", CONDITION_NOT_OWNED),
        ("SomethingElse", False, "SomethingElse", CONDITION_NOT_OWNED),  # not named
        ("disk_failing", False, "disk_failing", BAD_CONDITION),  # not CamelCase
        ("A" * 64, False, "A" * 64, BAD_CONDITION),  # too long
    ],
)
def test_name_rules_cached_or_not(
    name: str, blocking: bool, condition: str, reason: str | None
) -> None:
    first, again = RULES.for_name(name), RULES.for_name(name)
    assert first == again == RULES._rule_for(name)
    assert (first.blocking, first.condition) == (blocking, condition)
    assert (first.refusal[0] if first.refusal else None) == reason


def test_made_up_names_do_not_grow_the_name_cache_past_its_bound() -> None:
    rules = AlertRules(conditions={"X": "NodeDiskFailing"})
    for i in range(MAX_CACHED_NAMES + 50):
        rule = rules.for_name(f"Made{i}")
        assert rule == NameRule(False, f"Made{i}", rule.refusal) and rule.refusal is not None
    assert len(rules._by_name) == MAX_CACHED_NAMES
    assert rules.for_name("X") == NameRule(False, "NodeDiskFailing", None)  # still right


# -- node names from labels -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "node"),
    [
        ("w-1", "w-1"),
        (" W-1:9100 ", "w-1"),
        ("[fd00::1]:9100", None),  # an address, not a node name
        ("a b", None),
        ("w-1.example.com", "w-1.example.com"),
    ],
)
def test_node_names_from_label_values_cached_or_not(value: str, node: str | None) -> None:
    assert webhook_payload._node_name(value) == node
    assert webhook_payload._node_name(value) == node  # from the cache
    assert webhook_payload._node_name.__wrapped__(value) == node


# -- one pass over the alerts -----------------------------------------------------------------


def test_a_malformed_alert_after_good_ones_refuses_the_whole_request() -> None:
    good = {"status": "firing", "labels": {"alertname": "NodeDiskFailing", "node": "w-1"}}
    body = json.dumps({"version": "4", "alerts": [good, good, {"status": "firing"}]}).encode()
    result = _parse(body)
    assert result == Rejection(BAD_SCHEMA, "alerts[2].labels must be an object, not null")


def test_a_bad_label_is_named_in_the_refusal() -> None:
    labels: dict[str, Any] = {"alertname": "X", "node": "w-1", "big": "x" * 1025, "n": 7}
    body = json.dumps({"version": "4", "alerts": [{"status": "firing", "labels": labels}]})
    result = _parse(body.encode(), rules=AlertRules(), max_body=1 << 20)
    assert isinstance(result, Rejection) and result.reason == BAD_SCHEMA
    assert result.message.startswith("alerts[0].labels.'big' must be a string of at most")


# -- the answer and the debug line ------------------------------------------------------------


@pytest.mark.parametrize("accepted", [0, 1, 3, 250])
def test_the_accepted_body_is_what_json_response_sends(accepted: int) -> None:
    made = web.json_response({"accepted": accepted, "blocks": [], "rejected": []})
    assert _accepted_body(accepted) == made.body


@pytest.fixture
def restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.mark.usefixtures("restore_logging")
def test_enabled_for_follows_the_configured_level() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    assert not enabled_for(logging.DEBUG)
    assert enabled_for(logging.INFO) and enabled_for(logging.ERROR)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    assert enabled_for(logging.DEBUG)
    structlog.configure(wrapper_class=structlog.stdlib.BoundLogger)
    assert enabled_for(logging.DEBUG), "a wrapper of unknown level decides for itself"


@pytest.mark.usefixtures("restore_logging")
def test_a_debug_line_skipped_at_info_is_the_one_the_logger_would_drop() -> None:
    log = structlog.get_logger("test")
    for level in (logging.DEBUG, logging.INFO):
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
        with capture_logs() as logs:
            log.debug("test.line")
        assert bool(logs) == enabled_for(logging.DEBUG) == (level == logging.DEBUG)


def test_each_sender_time_is_placed_on_our_timeline_once_per_request() -> None:
    def firing(node: str, starts: str) -> dict[str, Any]:
        labels = {"alertname": "NodeDiskFailing", "node": node}
        return {"status": "firing", "labels": labels, "startsAt": starts}

    early, late = "2023-11-14T22:00:00Z", "2023-11-14T22:10:00Z"
    alerts = [firing("w-1", early), firing("w-2", early), firing("w-3", late)]
    body = json.dumps({"version": "4", "alerts": alerts}).encode()
    asked: list[float] = []

    def timeline(sent: float) -> float:
        asked.append(sent)
        return sent - 7.0

    result = _parse(body, now=2e9, timeline=timeline)
    assert isinstance(result, Parsed)
    assert asked == [1_699_999_200.0, 1_699_999_800.0]
    assert [(e.node, e.since) for e in result.events] == [
        ("w-1", asked[0] - 7.0),
        ("w-2", asked[0] - 7.0),
        ("w-3", asked[1] - 7.0),
    ]
