"""``healer simulate``: the catalogue's output is pinned (golden files, virtual time: the same on
every run), ``--compare`` shows what another configuration decides differently, JSONL histories
round-trip and bad ones are refused with their line, and a state database's recorded history
reproduces the remediations its daemon made (on a real lab session:
tests/test_lab_scenarios.py, test_a_lab_session_is_reproduced).

Regenerate the golden files after a deliberate change of a decision or a message with
``UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_simulate.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from healer.cli.main import main
from healer.cli.parser import SIMULATE_SCENARIOS
from healer.clock import VirtualClock
from healer.config import load_config
from healer.health.tracker import HealthTracker
from healer.model import LABEL_CLUSTER, LABEL_POOL, EventKind, NodeEvent
from healer.simulate import report
from healer.simulate.catalogue import EPOCH, SCENARIOS, scenario
from healer.simulate.engine import simulate
from healer.simulate.history import HistoryError, Timings, from_recorded, read_jsonl, to_jsonl
from healer.store.history import read_history
from healer.store.sqlite import RUNNING, SUCCEEDED, Store, WorkflowRecord

REPO = Path(__file__).resolve().parent.parent
LAB = "config/lab.yaml"
TOLERANT = "tests/data/simulate/lab-tolerant.yaml"
GOLDEN = REPO / "tests" / "golden" / "simulate"


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with UPDATE_GOLDEN=1 to write it"
    assert text == path.read_text(), f"output differs from {path} (UPDATE_GOLDEN=1 rewrites it)"


@pytest.fixture(scope="module")
def lab_config():  # type: ignore[no-untyped-def]
    return load_config(REPO / LAB)


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_catalogue_output_is_pinned(lab_config, name: str) -> None:  # type: ignore[no-untyped-def]
    outcome = await simulate(lab_config, scenario(name, lab_config))
    assert outcome.settled
    golden(f"{name}.txt", report.text(outcome, config=LAB))


async def test_the_same_run_twice_decides_the_same(lab_config) -> None:  # type: ignore[no-untyped-def]
    history = scenario("rolling-kernel-upgrade", lab_config)
    first = await simulate(lab_config, history)
    second = await simulate(lab_config, history)
    assert first.decisions == second.decisions
    # The real arbiter refused reboots while a peer rebooted, and the node that never came back
    # was replaced for it.
    reasons = {(d.event, d.reason) for d in first.decisions}
    assert ("reboot.refused", "PoolBusy") in reasons
    assert ("remediation.started", "RebootTimeout") in reasons


async def test_compare_shows_the_decisions_that_differ(lab_config) -> None:  # type: ignore[no-untyped-def]
    history = scenario("zone-outage", lab_config)
    a = await simulate(lab_config, history)
    b = await simulate(load_config(REPO / TOLERANT), replace(history, timings=a.timings))
    changes = report.diff(a, b)
    only_a = {(c.key[0], c.key[3]) for c in changes if c.b is None}
    only_b = {(c.key[0], c.key[3]) for c in changes if c.a is None}
    assert ("remediation.refused", "TooManyUnhealthyInZone") in only_a
    assert ("remediation.started", "ReadyUnknownTimeout") in only_b
    golden("zone-outage.compare.txt", report.diff_text(a, b, configs=(LAB, TOLERANT)))
    # A configuration compared with itself differs in nothing.
    assert report.diff(a, a) == []


async def test_jsonl_round_trip(lab_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    history = scenario("slow-provider", lab_config)
    path = tmp_path / "h.jsonl"
    path.write_text(to_jsonl(history))
    back = read_jsonl(path)
    assert back.happenings == history.happenings
    assert back.timings == history.timings == Timings(100.0, 20.0, 10.0, 2)
    a, b = await simulate(lab_config, history), await simulate(lab_config, back)
    assert a.decisions == b.decisions


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("{not json", ":2: not JSON"),
        ('{"kind": "condition", "cluster": "lab", "node": "n", "at": 1}', ":2: a condition event"),
        ('{"kind": "explode", "cluster": "lab", "node": "n", "at": 1}', ":2: kind 'explode'"),
        ('{"kind": "node_added", "cluster": "lab", "node": "n", "at": "soon"}', ":2: 'at' 'soon'"),
        ('{"kind": "reboot_request", "node": "n", "at": 1}', ":2: a reboot_request needs"),
        ('{"kind": "provider", "create": -1}', ":2: 'create' must be"),
        ("[1, 2]", ":2: each line must be a JSON object"),
    ],
)
def test_a_bad_history_line_is_named(tmp_path: Path, line: str, error: str) -> None:
    path = tmp_path / "bad.jsonl"
    ok = {"kind": "node_added", "cluster": "lab", "node": "n", "at": "2026-01-01T00:00:00Z"}
    path.write_text(json.dumps(ok) + "\n" + line + "\n")
    with pytest.raises(HistoryError, match=str(path) + error.replace("(", r"\(")):
        read_jsonl(path)


def test_the_parser_lists_the_catalogue() -> None:
    assert list(SIMULATE_SCENARIOS) == list(SCENARIOS)


def _event(kind: EventKind, node: str, at: float, **kw: object) -> NodeEvent:
    return NodeEvent("lab", node, kind, at=at, source="kube", **kw)  # type: ignore[arg-type]


async def _record_session(config, state_dir: Path, *, remediated: str, wrong: str | None = None):  # type: ignore[no-untyped-def]
    """A daemon's state database as a session leaves it: the events its real tracker consumed
    (recorded by the tracker itself), and the workflow it ran for ``remediated`` (with its
    replacement's events, which a replay must leave out)."""
    store = Store.open(state_dir)
    clock = VirtualClock(start=EPOCH)
    tracker = HealthTracker(config=config, store=store, clock=clock)
    labels = {LABEL_POOL: "workers", LABEL_CLUSTER: "lab"}
    ready = {"Ready": ("True", EPOCH - 600)}
    await tracker.handle(_event(EventKind.LIST_STARTED, "", EPOCH))
    for i in range(1, 6):
        node = f"w{i}"
        await tracker.handle(
            _event(EventKind.NODE_ADDED, node, EPOCH, labels=labels, conditions=ready)
        )
    await tracker.handle(_event(EventKind.SYNCED, "", EPOCH))
    for t in (1.0, 2.0):  # heartbeats and repeats change nothing: not recorded
        await clock.advance(1.0)
        await tracker.handle(_event(EventKind.HEARTBEAT, "w1", EPOCH + t))
        await tracker.handle(
            _event(EventKind.NODE_ADDED, "w1", EPOCH + t, labels=labels, conditions=ready)
        )
    crash = EPOCH + 30
    await clock.advance(crash - clock.now())
    await tracker.handle(
        _event(
            EventKind.CONDITION, remediated, crash, condition="Ready", status="Unknown", since=crash
        )
    )
    started = crash + 5
    for i, node in enumerate([remediated, *([wrong] if wrong else [])]):
        wf = WorkflowRecord(
            id=f"wf{i}",
            cluster="lab",
            pool="workers",
            node=node,
            role="worker",  # type: ignore[arg-type]
            state=SUCCEEDED if i == 0 else RUNNING,
            step="done",
            reason="ReadyUnknownTimeout",
            evidence={},
            replacement_name=f"lab-workers-new{i}",
            started_at=started,
            updated_at=started,
        )
        store.create_workflow(wf)
    # What healer's own remediation caused: the old node deleted, the replacement joined.
    await tracker.handle(_event(EventKind.NODE_DELETED, remediated, started + 5))
    await tracker.handle(
        _event(
            EventKind.NODE_ADDED,
            "lab-workers-new0",
            started + 20,
            labels=labels,
            conditions={"Ready": ("True", started + 20)},
        )
    )
    store.close()


async def test_a_recorded_history_reproduces_the_sessions_remediations(
    lab_config, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    await _record_session(lab_config, tmp_path, remediated="w3")
    with sqlite3.connect(tmp_path / "healer.sqlite") as db:
        kinds = [json.loads(r[0])["kind"] for r in db.execute("SELECT event FROM node_events")]
    # The list (markers + 5 nodes), the crash, the deletion, the replacement: no heartbeat,
    # no repeated NODE_ADDED of an unchanged node.
    assert kinds.count("heartbeat") == 0
    assert kinds.count("node_added") == 6 and len(kinds) == 10
    recorded = read_history(tmp_path)
    history = from_recorded(recorded)
    assert history.consequences == 2  # the deletion and the replacement
    outcome = await simulate(lab_config, history)
    rep = report.compare_recorded(outcome)
    assert rep.reproduced and [r.node for r, _ in rep.both] == ["w3"]
    started = next(d for d in outcome.decisions if d.event == "remediation.started")
    assert started.at == EPOCH + 35  # Ready=Unknown at +30, the lab's 5s timeout
    assert "the simulation makes the same ones" in report.text(outcome, config=LAB)


async def test_a_remediation_the_replay_does_not_make_is_reported(
    lab_config, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    await _record_session(lab_config, tmp_path, remediated="w3", wrong="w5")
    outcome = await simulate(lab_config, from_recorded(read_history(tmp_path)))
    rep = report.compare_recorded(outcome)
    assert not rep.reproduced
    assert [r.node for r in rep.only_recorded] == ["w5"]
    assert "w5 ReadyUnknownTimeout at +00:00:35 (running): not started" in report.text(
        outcome, config=LAB
    )


@pytest.fixture
def logging_restored():  # type: ignore[no-untyped-def]
    """The command quiets structlog for its run; later tests read log lines."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.usefixtures("logging_restored")
def test_cli_json_and_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = str(REPO / LAB)
    assert main(["simulate", "-c", config, "--scenario", "partition", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["start"] == "2026-01-01T00:00:00Z" and doc["settled"]
    started = [d for d in doc["decisions"] if d["event"] == "remediation.started"]
    assert started and all(d["offset"].startswith("+00:0") for d in started)
    # A history for a cluster the config does not have, and a state directory with no database.
    other = tmp_path / "other.jsonl"
    other.write_text('{"kind": "node_added", "cluster": "prod", "node": "n", "at": 1}\n')
    assert main(["simulate", "-c", config, "--history", str(other)]) == 2
    assert "cluster(s) prod that" in capsys.readouterr().err
    assert main(["simulate", "-c", config, "--history", str(tmp_path)]) == 2
    assert "no such state database" in capsys.readouterr().err
    # --write-history to a place that cannot be written: said before anything runs.
    out = str(tmp_path / "missing" / "h.jsonl")
    assert main(["simulate", "-c", config, "--scenario", "partition", "--write-history", out]) == 2
    assert "cannot write the history" in capsys.readouterr().err
    out = str(tmp_path / "h.jsonl")
    assert main(["simulate", "-c", config, "--scenario", "partition", "--write-history", out]) == 0
    assert "partition (built-in) against" in capsys.readouterr().out
    assert read_jsonl(Path(out)).happenings == scenario("partition", load_config(config)).happenings


def test_the_recorded_events_are_trimmed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("healer.store.sqlite.NODE_EVENTS_KEPT", 10)
    store = Store.open(tmp_path)
    for i in range(1, 1001):
        store.record_event(_event(EventKind.NODE_DELETED, f"n{i}", EPOCH + i))
    store.close()
    events = read_history(tmp_path).events
    assert [e.node for e in events] == [f"n{i}" for i in range(991, 1001)]


def test_help_does_not_import_the_simulator() -> None:
    code = (
        "import sys; from healer.cli.parser import build_parser; "
        "build_parser().parse_args(['simulate', '--scenario', 'partition']); "
        "print(sorted(m for m in sys.modules if m.startswith(('healer.simulate', 'healer.config'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_documented_history_file_parses(tmp_path: Path) -> None:
    """docs/simulate.md's JSONL example is a history read_jsonl takes whole."""
    text = (REPO / "docs" / "simulate.md").read_text()
    block = text.split("```json\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "doc.jsonl"
    path.write_text(block)
    history = read_jsonl(path)
    assert history.timings == Timings(create=120, destroy=30, join=90, create_failures=0)
    kinds = [h.to_json()["kind"] for h in history.happenings]
    assert kinds == [
        "list_started",
        "node_added",
        "synced",
        "condition",
        "reboot_request",
    ]
