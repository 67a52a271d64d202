"""``restates``: the tracker's short cut for an event that only repeats a node's condition (an
alert sent again). Wherever it says yes, ``with_evidence`` must be exactly what ``apply_event``
gives; wherever ``apply_event`` would change more than the evidence, it must say no."""

from __future__ import annotations

import pytest

from healer.config.provenance import Ownership
from healer.health.observe import apply_event, restates, with_evidence
from healer.model import ConditionObs, EventKind, NodeEvent, NodeObservation

T0 = 1_700_000_000.0
OWNERS = Ownership.of(webhook_conditions=["NodeDiskFailing"])

NODE = NodeObservation(
    cluster="c1",
    node="w-1",
    first_seen=T0,
    ever_ready=True,
    conditions={
        "Ready": ConditionObs("True", T0, "kube"),
        "NodeDiskFailing": ConditionObs("True", T0 + 5, "webhook"),
    },
    recent=tuple({"kind": "condition", "at": T0 + i, "source": "kube"} for i in range(20)),
)


def cond(source: str, name: str, status: str, since: float | None = None) -> NodeEvent:
    return NodeEvent(
        "c1",
        "w-1",
        EventKind.CONDITION,
        T0 + 60,
        source,
        condition=name,
        status=status,
        since=since,
        detail={"alert": name},
    )


CASES = {
    "alert sent again": (NODE, cond("webhook", "NodeDiskFailing", "True", T0 + 1), True),
    "alert resolved": (NODE, cond("webhook", "NodeDiskFailing", "False"), False),
    "new condition": (NODE, cond("webhook", "NodeDiskFailing", "True"), True),
    "condition not yet seen": (
        NODE.with_(conditions={"Ready": NODE.conditions["Ready"]}),
        cond("webhook", "NodeDiskFailing", "True"),
        False,
    ),
    "not its owner": (NODE, cond("mqtt", "NodeDiskFailing", "True"), False),
    "Ready restated": (NODE, cond("kube", "Ready", "True"), True),
    "Ready, never ready before": (
        NODE.with_(ever_ready=False),
        cond("kube", "Ready", "True"),
        False,
    ),
    "Ready during a reboot": (
        NODE.with_(reboot_started_at=T0 + 30),
        cond("kube", "Ready", "True", T0 + 40),
        False,
    ),
    "Ready False restated": (
        NODE.with_(conditions={"Ready": ConditionObs("False", T0, "kube")}, reboot_started_at=T0),
        cond("kube", "Ready", "False"),
        True,
    ),
    "heartbeat": (NODE, NodeEvent("c1", "w-1", EventKind.HEARTBEAT, T0 + 60, "mqtt"), False),
    "labels": (NODE, NodeEvent("c1", "w-1", EventKind.LABELS, T0 + 60, "kube", labels={}), False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_restates_only_what_changes_nothing_but_the_evidence(name: str) -> None:
    previous, event, expected = CASES[name]
    folded = apply_event(
        previous, event, exclude_label="healer.io/exclude", pool_roles={}, owners=OWNERS
    )
    assert restates(previous, event, OWNERS) is expected
    if expected:
        assert with_evidence(previous, event) == folded
        assert folded.recent[-1] == event.evidence()
        assert len(folded.recent) == len(previous.recent)  # still bounded
    elif event.kind is EventKind.CONDITION and OWNERS.may_set(event.source, event.condition or ""):
        # apply_event moves more than the evidence here: the short cut must not be taken.
        assert folded.with_(recent=previous.recent) != previous
