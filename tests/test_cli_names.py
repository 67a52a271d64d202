"""Every operator command checks the cluster, pool and node names it is given against the
configuration and the state, and refuses an unknown one with the closest known name (exit 2)
instead of, say, pausing a cluster that does not exist."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from healer.cli.main import main
from healer.model import Health, NodeObservation, Verdict
from healer.store.sqlite import Store
from healer.suggest import did_you_mean

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HEALER_CONFIG", "HEALER_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)


def _lab_state(state: Path) -> Path:
    store = Store.open(state)
    try:
        for node, pool in (("w-1", "workers"), ("w-2", "workers"), ("cp-1", "control-plane")):
            store.save_node(
                NodeObservation(cluster="lab", node=node, pool=pool),
                Verdict(Health.HEALTHY, "Healthy", "no unhealthy condition present", None),
                time.time(),
            )
    finally:
        store.close()
    return state


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    ("name", "known", "expected"),
    [
        ("nosuch", ["lab"], "; did you mean 'lab'?"),
        ("prdo", ["prod", "staging"], "; did you mean 'prod'?"),
        ("x", ["alpha", "beta", "gamma"], "; known: alpha, beta, gamma"),
        ("x", [], ""),
        ("workrs", ["control-plane", "workers"], "; did you mean 'workers'?"),
    ],
)
def test_did_you_mean(name: str, known: list[str], expected: str) -> None:
    assert did_you_mean(name, known) == expected


def test_pause_of_an_unknown_cluster_fails_with_a_suggestion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(_lab_state(tmp_path))
    rc, out, err = _run(capsys, "pause", "--cluster", "nosuch", "--state-dir", state)
    assert rc == 2 and out == ""
    assert "unknown cluster 'nosuch'" in err and "did you mean 'lab'?" in err
    rc, _, err = _run(
        capsys, "pause", "--cluster", "lab", "--pool", "wrokers", "--state-dir", state
    )
    assert rc == 2 and "unknown pool 'wrokers' in cluster 'lab'" in err
    assert "did you mean 'workers'?" in err
    store = Store.open(tmp_path)
    try:
        assert store.pauses() == {}  # nothing was paused by either
    finally:
        store.close()
    rc, out, _ = _run(
        capsys, "pause", "--cluster", "lab", "--pool", "workers", "--state-dir", state
    )
    assert rc == 0 and out.strip() == "paused pool:lab/workers"
    rc, out, _ = _run(
        capsys, "resume", "--cluster", "lab", "--pool", "workers", "--state-dir", state
    )
    assert rc == 0 and out.strip() == "resumed pool:lab/workers"


def test_a_cluster_only_the_configuration_names_can_be_paused_before_the_daemon_saw_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    config = str(REPO / "config" / "lab.yaml")
    rc, _, err = _run(capsys, "pause", "--cluster", "lab", "--state-dir", str(state))
    assert rc == 2 and "names no cluster; pass -c" in err
    rc, out, _ = _run(capsys, "pause", "--cluster", "lab", "-c", config, "--state-dir", str(state))
    assert rc == 0 and out.strip() == "paused cluster:lab"
    rc, _, err = _run(capsys, "pause", "--cluster", "lba", "-c", config, "--state-dir", str(state))
    assert rc == 2 and "did you mean 'lab'?" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["breaker", "show", "--cluster", "nosuch"],
        ["breaker", "reset", "--cluster", "nosuch"],
        ["status", "--cluster", "nosuch"],
        ["history", "--cluster", "nosuch"],
        ["remediate", "w-1", "--cluster", "nosuch"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_every_command_that_takes_a_cluster_checks_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    rc, _, err = _run(capsys, *argv, "--state-dir", str(_lab_state(tmp_path)))
    assert rc == 2, err
    assert "unknown cluster 'nosuch'" in err and "did you mean 'lab'?" in err


def test_unknown_nodes_are_refused_with_a_suggestion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(_lab_state(tmp_path))
    rc, _, err = _run(capsys, "remediate", "w-3", "--cluster", "lab", "--state-dir", state)
    assert rc == 2 and "unknown node 'w-3' in cluster 'lab'" in err
    assert "did you mean 'w-2' or 'w-1'?" in err  # equally close: both, by difflib's order
    rc, _, err = _run(capsys, "history", "wr-1", "--state-dir", state)
    assert rc == 2 and "unknown node 'wr-1'; did you mean 'w-1'" in err


def test_remediate_without_a_daemon_fails_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(_lab_state(tmp_path))
    started = time.monotonic()
    rc, out, err = _run(
        capsys, "remediate", "w-1", "--cluster", "lab", "--yes", "--json", "--state-dir", state
    )
    assert time.monotonic() - started < 2  # not the 30 s --timeout
    assert rc == 3
    assert f"no healer daemon is running on {state}" in err
    assert json.loads(out)["result"] == "no_daemon"
    store = Store.open(tmp_path)
    try:
        assert store.pending_requests() == []  # nothing filed for a daemon to find later
    finally:
        store.close()


def test_breaker_show_says_so_when_every_breaker_is_closed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(_lab_state(tmp_path))
    rc, out, _ = _run(capsys, "breaker", "show", "--state-dir", state)
    assert rc == 0 and out.strip() == "no breaker is open"
    rc, out, _ = _run(capsys, "breaker", "show", "--cluster", "lab", "--state-dir", state)
    assert rc == 0 and out.strip() == "lab: breaker closed, bad-upgrade breaker closed"


@pytest.mark.parametrize("command", ["plan", "apply", "destroy"])
def test_provisioning_commands_suggest_the_cluster_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    config = str(REPO / "config" / "provision-lab.yaml")
    argv = [command, "-c", config, "--cluster", "dmeo", "--state-dir", str(tmp_path)]
    rc, out, err = _run(capsys, *argv)
    assert rc == 2, out + err
    assert "no cluster named 'dmeo' (clusters: demo); did you mean 'demo'?" in err
    assert list(tmp_path.iterdir()) == []  # nothing written
