"""`healer lab` as an operator meets it (issue 14), through the real command: a scenario's state
kept for `healer history`, ISO times in its report, a timeline that fits 100 columns, a bad
`--report` refused up front; the interactive lab answering mistakes, noticing carried-over
pauses, resetting them, and restarting without writing noise into the audit log.

Each test starts the whole lab once or twice (seconds each); run one at a time.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from healer.store.sqlite import Store

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TIMEOUT = 150


def healer(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "healer.cli", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _numbers(value: Any, key: str = "") -> list[tuple[str, float]]:
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in _numbers(v, str(k))]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v, key)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [(key, float(value))]
    return []


def test_a_scenario_keeps_its_state_and_reports_iso_times_in_a_timeline_that_fits(
    tmp_path: Path,
) -> None:
    proc = healer("lab", "--scenario", "crash", "--report", "crash.json", cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    report = json.loads((tmp_path / "crash.json").read_text())

    [rem] = report["remediations"]
    for key in ("detected_at", "started_at", "completed_at", "failure_injected_at"):
        assert ISO.match(rem[key]), (key, rem[key])
    assert all(ISO.match(s["at"]) for s in rem["steps"])
    assert rem["detected_at"] <= rem["started_at"] <= rem["completed_at"]
    assert rem["start_delay_s"] >= 0
    # No epoch seconds anywhere: every number left is a duration, a count or a threshold.
    assert [(k, n) for k, n in _numbers(report) if n > 1e9] == []

    lines = proc.stdout.splitlines()
    assert len(lines) > 20
    too_wide = [line for line in lines if len(line) > 100]
    assert too_wide == [], too_wide

    state = tmp_path / "lab-state" / "scenarios" / "crash"
    assert f"healer history --state-dir {state.relative_to(tmp_path)}" in proc.stdout
    history = healer("history", "--state-dir", str(state), cwd=tmp_path)
    assert history.returncode == 0, history.stderr
    assert "remediation.succeeded" in history.stdout and rem["node"] in history.stdout


def test_a_report_that_cannot_be_written_is_refused_before_the_lab_starts(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    proc = healer("lab", "--scenario", "crash", "--report", "nosuch/crash.json", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--report nosuch/crash.json: directory nosuch does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "lab-state").exists()  # nothing ran
    assert time.monotonic() - started < 20


def test_the_interactive_lab_answers_mistakes_and_restarts_quietly(tmp_path: Path) -> None:
    state = tmp_path / "lab-state"
    typed = "partition 2\noutage abc\ncrsh lab-workers\nbreaker\nquit\n"
    first = healer("lab", "--state-dir", str(state), cwd=tmp_path, stdin=typed)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    for said in (
        "partition: 2 is not a fraction between 0 and 1",
        "outage: 'abc' is not a number; usage: outage SECONDS",
        "unknown command 'crsh'; did you mean 'crash'?",
        "usage: breaker reset",
    ):
        assert said in first.stdout
    assert "Traceback" not in first.stdout + first.stderr
    assert "lab.injected" not in first.stdout  # nothing was done

    assert (
        healer("pause", "--cluster", "lab", "--state-dir", str(state), cwd=tmp_path).returncode == 0
    )
    audited = _audit_events(state)

    second = healer("lab", "--state-dir", str(state), cwd=tmp_path, stdin="reset\nquit\n")
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert "NOTICE: carried over from the last lab session" in second.stdout
    assert "paused cluster:lab since 20" in second.stdout
    assert "  resumed cluster:lab" in second.stdout

    # The restart wrote what the operator did and nothing about Nodes coming and going.
    new = _audit_events(state)[len(audited) :]
    assert new == ["operator.resumed"], new
    store = Store.open(state)
    try:
        assert store.pauses() == {}
    finally:
        store.close()


def _audit_events(state: Path) -> list[str]:
    store = Store.open(state)
    try:
        return [e.event for e in store.audit_log(cluster=None)]
    finally:
        store.close()
