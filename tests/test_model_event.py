"""NodeEvent.of_condition: the webhook's fast constructor makes the event the dataclass makes."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from healer.model import EventKind, NodeEvent


def _both(**fields: object) -> tuple[NodeEvent, NodeEvent]:
    args = {
        "at": 12.5,
        "source": "webhook",
        "condition": "NodeDiskFailing",
        "status": "True",
        "since": 10.0,
        "detail": {"alert": "NodeDiskFailing"},
    } | fields
    fast = NodeEvent.of_condition("lab", "w-1", **args)  # type: ignore[arg-type]
    slow = NodeEvent(cluster="lab", node="w-1", kind=EventKind.CONDITION, **args)  # type: ignore[arg-type]
    return fast, slow


@pytest.mark.parametrize("fields", [{}, {"since": None}, {"status": "False", "detail": {}}])
def test_it_is_the_event_the_dataclass_makes(fields: dict[str, object]) -> None:
    fast, slow = _both(**fields)
    assert fast == slow and hash(repr(fast)) == hash(repr(slow))
    assert fast.evidence() == slow.evidence() and fast.to_json() == slow.to_json()
    assert NodeEvent.from_json(fast.to_json()) == slow
    assert pickle.loads(pickle.dumps(fast)) == slow


def test_it_sets_every_field_of_the_dataclass() -> None:
    # A field added to NodeEvent and forgotten in of_condition fails here, not in production.
    fast, _ = _both()
    assert list(vars(fast)) == [f.name for f in dataclasses.fields(NodeEvent)]


def test_it_is_frozen_like_any_other() -> None:
    fast, _ = _both()
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.status = "False"  # type: ignore[misc]
