"""The recorder writes the audit row, the log line and the metric of one event together."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter
from structlog.testing import capture_logs

from healer.clock import VirtualClock
from healer.store.recorder import Recorder
from healer.store.sqlite import Store

# Every test here runs on both state backends (tests/plugins/store.py).
pytestmark = pytest.mark.usefixtures("state_backend")


def counter() -> Counter:
    return Counter("t_events", "test", ["cluster"], registry=CollectorRegistry())


def test_one_call_writes_row_line_and_metric(store: Store) -> None:
    clock = VirtualClock(start=1000.0)
    metric = counter()
    rec = Recorder(store, clock=clock)
    with capture_logs() as logs:
        rec.record(
            "remediation.refused",
            cluster="c1",
            node="n1",
            pool="workers",
            reason="BreakerOpen",
            message="breaker is open",
            evidence={"scope": "cluster"},
            level="warning",
            metric=metric.labels("c1"),
            scope="cluster",
        )
    [row] = store.audit_log()
    assert (row.at, row.cluster, row.node, row.pool, row.workflow_id) == (
        1000.0,
        "c1",
        "n1",
        "workers",
        None,
    )
    assert (row.event, row.reason, row.message) == (
        "remediation.refused",
        "BreakerOpen",
        "breaker is open",
    )
    assert row.evidence == {"scope": "cluster"}
    assert logs == [
        {
            "event": "remediation.refused",
            "log_level": "warning",
            "cluster": "c1",
            "node": "n1",
            "pool": "workers",
            "reason": "BreakerOpen",
            "detail": "breaker is open",
            "scope": "cluster",
        }
    ]
    assert metric.labels("c1")._value.get() == 1.0


def test_unset_context_is_left_out_of_the_line_and_fields_override(store: Store) -> None:
    rec = Recorder(store)
    with capture_logs() as logs:
        rec.record(
            "breaker.opened",
            at=5.0,
            cluster="c1",
            reason="TooManyUnhealthy",
            message="3 of 4 unhealthy; no remediation until `healer breaker reset`",
            level="error",
            detail="3 of 4 unhealthy",
            workflow_id=None,
        )
    assert logs == [
        {
            "event": "breaker.opened",
            "log_level": "error",
            "cluster": "c1",
            "reason": "TooManyUnhealthy",
            "detail": "3 of 4 unhealthy",
        }
    ]
    [row] = store.audit_log()
    assert row.at == 5.0 and row.node is None and row.evidence == {}


@pytest.mark.parametrize("log_line", [True, False])
def test_workflow_id_goes_on_the_line_as_workflow_unless_there_is_no_line(
    store: Store, log_line: bool
) -> None:
    with capture_logs() as logs:
        Recorder(store).record(
            "node.adopted",
            at=1.0,
            cluster="c",
            node="n",
            workflow_id="wf1",
            reason="Adopted",
            message="m",
            log_line=log_line,
        )
    assert [e["workflow"] for e in logs] == (["wf1"] if log_line else [])
    assert [(r.event, r.workflow_id) for r in store.audit_log()] == [("node.adopted", "wf1")]


def test_no_at_and_no_clock_is_an_error_naming_the_event(store: Store) -> None:
    with pytest.raises(TypeError, match=r"state\.first_start"):
        Recorder(store).record("state.first_start", cluster="*", reason="R", message="m")
    assert store.audit_log() == []


def test_a_row_that_cannot_be_written_leaves_no_line_and_no_count(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def audit(**row: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "audit", audit)
    metric = counter()
    with capture_logs() as logs, pytest.raises(sqlite3.OperationalError, match="disk is full"):
        Recorder(store).record(
            "orphan.found",
            at=1.0,
            cluster="c",
            reason="NotInState",
            message="m",
            metric=metric.labels("c"),
        )
    assert logs == []
    assert metric.labels("c")._value.get() == 0.0


def test_the_component_logger_is_used(store: Store) -> None:
    calls: list[tuple[str, str, dict[str, Any]]] = []

    class Log:
        def __getattr__(self, level: str) -> Any:
            return lambda event, **kw: calls.append((level, event, kw))

    Recorder(store, log=Log()).record(
        "config.reloaded", at=2.0, cluster="*", reason="Reload", message="reloaded"
    )
    assert calls == [
        ("info", "config.reloaded", {"cluster": "*", "reason": "Reload", "detail": "reloaded"})
    ]


def test_without_a_store_only_the_line_and_the_metric() -> None:
    metric = counter()
    with capture_logs() as logs:
        Recorder(None).record(
            "config.reload_rejected",
            cluster="*",
            reason="InvalidConfig",
            message="bad",
            level="error",
            metric=metric.labels("*"),
        )
    assert [(e["event"], e["reason"]) for e in logs] == [
        ("config.reload_rejected", "InvalidConfig")
    ]
    assert metric.labels("*")._value.get() == 1.0
