"""`healer status` at fleet size (issue 12): the pool table counted by the database, every node
listed only up to STATUS_NODES_LISTED (or with --nodes, or in --json), else the nodes that are not
healthy; no node's whole record decoded, and of the audit log only the reboot rows read. And the
plugins' capabilities, declared in the `healer.capabilities` entry points so `healer validate`
reads them without importing libcloud, are the ones the plugin classes give.

Counted, not timed: a test fails when a code path goes back to decoding every record or every
audit row (what made `healer status` take 1.5 s on 10k nodes)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from healer.cli.common import STATUS_NODES_LISTED
from healer.cli.main import main
from healer.cloud import registry
from healer.model import Health, NodeObservation, Role, Verdict
from healer.planner.reboot_status import reboot_view
from healer.store.sqlite import DB_NAME, Store

CLUSTERS = 3
PER_CLUSTER = 40  # 120 nodes: more than STATUS_NODES_LISTED
UNHEALTHY = {3, 17, 29}  # node indexes in each cluster


def seed_fleet(state_dir: Path) -> None:
    """CLUSTERS clusters of PER_CLUSTER nodes (node 0 of each in pool cp, the rest in workers),
    UNHEALTHY of each unhealthy; plenty of audit rows, of which two about reboots."""
    store = Store.open(state_dir)
    now = time.time()
    try:
        for c in range(CLUSTERS):
            cluster = f"c{c}"
            for i in range(PER_CLUSTER):
                pool, role = ("cp", Role.CONTROL_PLANE) if i == 0 else ("workers", Role.WORKER)
                obs = NodeObservation(
                    cluster=cluster, node=f"{cluster}-n{i:02d}", pool=pool, role=role
                )
                health = Health.UNHEALTHY if i in UNHEALTHY else Health.HEALTHY
                store.save_node(obs, Verdict(health, f"{health}Why", "", None), now)
                store.audit(
                    at=now - i,
                    cluster=cluster,
                    node=obs.node,
                    event="node.adopted",
                    reason="Adopted",
                    message="seen in a list",
                )
        for cluster, node, event, evidence in [
            ("c1", "c1-n05", "reboot.refused", {"blockers": [{"reason": "PoolBusy"}]}),
            ("c2", "c2-n06", "reboot.granted", {"granted_at": now, "expires_at": now + 600}),
        ]:
            store.audit(
                at=now, cluster=cluster, node=node, event=event, reason="R", message="m",
                evidence=evidence,
            )  # fmt: skip
    finally:
        store.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    seed_fleet(tmp_path)
    return tmp_path


def _status(capsys: pytest.CaptureFixture[str], state: Path, *argv: str) -> str:
    capsys.readouterr()
    assert main(["status", "--state-dir", str(state), *argv]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def _node_rows(out: str) -> list[str]:
    return [line.split()[1] for line in out.splitlines() if line.startswith("c") and "-n" in line]


def test_past_the_limit_the_table_lists_the_nodes_not_healthy(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert CLUSTERS * PER_CLUSTER > STATUS_NODES_LISTED
    out = _status(capsys, fleet)
    lines = out.splitlines()
    for c in range(CLUSTERS):
        assert f"c{c}         cp                  -     1  1 healthy" in lines
        assert f"c{c}         workers             -    39  36 healthy, 3 unhealthy" in lines
    total, bad = CLUSTERS * PER_CLUSTER, CLUSTERS * len(UNHEALTHY)
    assert f"nodes not healthy: {bad} of {total} ({total - bad} healthy not listed; " in out
    assert _node_rows(out) == [f"c{c}-n{i:02d}" for c in range(CLUSTERS) for i in sorted(UNHEALTHY)]
    assert "reboots: 1 granted or in progress, 1 waiting" in out

    every = _status(capsys, fleet, "--nodes")
    assert len(_node_rows(every)) == total and "not listed" not in every
    # One cluster of 40 nodes is under the limit: every node of it.
    one = _status(capsys, fleet, "--cluster", "c1")
    assert _node_rows(one) == [f"c1-n{i:02d}" for i in range(PER_CLUSTER)]
    assert "c0 " not in one


def test_json_lists_every_node_with_its_pool_and_role(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = json.loads(_status(capsys, fleet, "--json"))
    assert len(status["nodes"]) == CLUSTERS * PER_CLUSTER
    assert status["nodes"][0] == {
        "cluster": "c0",
        "node": "c0-n00",
        "pool": "cp",
        "role": "control-plane",
        "health": "healthy",
        "reason": "healthyWhy",
        "message": "",
    }
    pools = {(p["cluster"], p["pool"]): p for p in status["pools"]}
    assert pools[("c2", "workers")]["nodes"] == 39
    assert pools[("c2", "workers")]["health"] == {"healthy": 36, "unhealthy": 3}
    assert [w["node"] for w in status["reboots"]["waiting"]] == ["c1-n05"]
    assert [g["node"] for g in status["reboots"]["grants"]] == ["c2-n06"]


@pytest.fixture
def no_records(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Fail any decoding of a node's whole record; count the audit rows read."""

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("a node's whole record was decoded")

    monkeypatch.setattr(NodeObservation, "from_json", staticmethod(refuse))
    monkeypatch.setattr(Store, "nodes", refuse)
    read: list[int] = []
    audit_log = Store.audit_log

    def counted(self: Store, **kwargs: Any) -> Any:
        rows = audit_log(self, **kwargs)
        read.append(len(rows))
        return rows

    monkeypatch.setattr(Store, "audit_log", counted)
    yield read


@pytest.mark.parametrize("argv", [[], ["--nodes"], ["--json"], ["--cluster", "c2"]], ids=str)
def test_status_decodes_no_node_record_and_reads_only_the_reboot_rows(
    fleet: Path, capsys: pytest.CaptureFixture[str], no_records: list[int], argv: list[str]
) -> None:
    _status(capsys, fleet, *argv)
    # 120 node.adopted rows in the log: status read the two about reboots (or the one of c2).
    assert sum(no_records) == (1 if argv[:1] == ["--cluster"] else 2)


def test_name_checks_decode_no_node_record(
    fleet: Path, capsys: pytest.CaptureFixture[str], no_records: list[int]
) -> None:
    assert main(["pause", "--cluster", "c1x", "--state-dir", str(fleet)]) == 2
    assert "unknown cluster 'c1x'" in capsys.readouterr().err
    assert main(["pause", "--cluster", "c1", "--pool", "wrokers", "--state-dir", str(fleet)]) == 2
    assert "did you mean 'workers'?" in capsys.readouterr().err
    assert main(["history", "c1-n7", "--state-dir", str(fleet)]) == 2
    assert "unknown node 'c1-n7'" in capsys.readouterr().err


def test_the_last_reboot_event_of_a_node_wins_across_event_kinds(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    now = time.time()
    grant = {"granted_at": now, "expires_at": now + 600}
    try:
        for at, node, event, evidence in [
            (now - 3, "w-1", "reboot.granted", grant),
            (now - 2, "w-1", "reboot.refused", {}),  # refused after its grant: waits
            (now - 3, "w-2", "reboot.refused", {}),
            (now - 2, "w-2", "reboot.granted", grant),  # granted after a refusal: granted
            (now - 1, "w-3", "reboot.granted", grant),
            (now - 0, "w-3", "reboot.released", {}),  # released: neither
        ]:
            store.audit(
                at=at, cluster="lab", node=node, event=event, reason="R", message="m",
                evidence=evidence,
            )  # fmt: skip
        view = reboot_view(store, now=now)
    finally:
        store.close()
    assert [g.node for g in view.grants] == ["w-2"]
    assert [w.node for w in view.waiting] == ["w-1"]


# -- capabilities, declared beside the plugin ------------------------------------------------


@pytest.mark.parametrize(
    ("plugin", "options"),
    [
        ("lab", {}),
        ("libcloud", {"driver": "ec2"}),
        ("libcloud", {"driver": "GCE"}),
        ("libcloud", {"driver": "healer_lab"}),
        ("libcloud", {"driver": "openstack"}),
        ("libcloud", {}),
    ],
    ids=str,
)
def test_declared_capabilities_are_the_plugin_classes(
    plugin: str, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert plugin in registry._entry_points(registry.CAPABILITIES_GROUP)
    declared = registry.capabilities_for(plugin, options)
    assert declared == registry._factory(plugin).capabilities_for(options)
    # A plugin that declares nothing there is asked through its class: the same answer.
    monkeypatch.setattr(
        registry,
        "_entry_points",
        lambda group=registry.ENTRY_POINT_GROUP, real=registry._entry_points: (
            {} if group == registry.CAPABILITIES_GROUP else real(group)
        ),
    )
    assert registry.capabilities_for(plugin, options) == declared


def test_capabilities_of_a_plugin_not_installed_say_so() -> None:
    caps = registry.capabilities_for("nosuch", {"driver": "ec2"})
    assert not (caps.supports_networks or caps.supports_firewalls or caps.supports_load_balancers)
    assert "unknown provider plugin 'nosuch'" in caps.notes[0]


def test_a_log_line_while_status_reads_goes_to_stderr_not_into_the_json(tmp_path: Path) -> None:
    """The first command after an upgrade brings the schema up and logs it: the line goes to
    stderr, `healer status --json` stays JSON."""
    seed_fleet(tmp_path)
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("UPDATE meta SET value='1' WHERE key='schema'")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALER_")}
    done = subprocess.run(
        [sys.executable, "-m", "healer.cli", "status", "--json", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["nodes"]) == CLUSTERS * PER_CLUSTER
    assert "state.schema_upgraded" in done.stderr
