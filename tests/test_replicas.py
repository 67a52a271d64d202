"""`healer run --replicas` end to end (issue 15), daemons on one PostgreSQL database and one lab
world (fake API server, lab cloud, kubelets).

Must-show 2: three replicas, thirty clusters (the lab's, with nodes, and 29 empty ones, each
behind its own fake API server): each cluster has exactly one owner, ten each; after a SIGKILL
of the lab cluster's owner every one of its clusters is owned again within the lease time + 5 s,
and a node crashed meanwhile is replaced exactly once.

Must-show 3: the owner of the cluster is SIGSTOPped in the middle of a workflow and stays stopped
past its lease; the other replica takes the cluster over (a new epoch), resumes the workflow
from its journal and finishes it; SIGCONT: the old owner commits no step and calls the cloud no
more, and its log says it was fenced.

Each daemon has its own state directory (its own lock); the lab cloud's database is shared
through a symlink, as one cloud account is shared by the replicas of a real deployment.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from healer.lab.apiserver.server import FakeApiServer
from healer.store.postgres import PostgresStore
from healer.store.sqlite import SUCCEEDED
from providers.lab.driver import DB_FILENAME
from tests.faults.world import Daemon, World, fault_config, lab_world, until
from tests.postgres import PgDatabase, skip_reason

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
]

LEASE = 3.0  # seconds: the shortest the config takes; renewed every second
BOUND = 60.0


def replica_config(  # type: ignore[no-untyped-def]
    db: PgDatabase, password_file: Path, extra: dict[str, Path] | None = None
):
    """The lab world's config on PostgreSQL, plus an empty cluster per ``extra`` kubeconfig."""

    def config(kubeconfig: Path) -> dict[str, Any]:
        data = fault_config(kubeconfig)
        for name, path in (extra or {}).items():
            data["clusters"].append(
                {
                    "name": name,
                    "kubeconfig": str(path),
                    "provider": {"plugin": "lab"},
                    "pools": [{"name": "workers", "size": 0}],
                }
            )
        data["state"] = {
            "url": db.url,
            "password": {"file": str(password_file)},
            "leaseSeconds": f"{LEASE}s",
        }
        return data

    return config


async def spawn_replica(
    world: World, name: str, root: Path, *, failpoints: str | None = None
) -> Daemon:
    """`healer run --replicas --replica-id NAME` with its own state directory."""
    state = root / f"replica-{name}"
    state.mkdir(mode=0o700, exist_ok=True)
    cloud = state / DB_FILENAME
    if not cloud.exists():
        cloud.symlink_to(world.state / DB_FILENAME)
    log = state / "daemon.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFY_", "WATCHDOG_")) and k != "HEALER_FAILPOINTS"
    } | ({"HEALER_FAILPOINTS": failpoints} if failpoints else {})
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "healer.cli",
            "run",
            "-c",
            str(world.config_path),
            "--state-dir",
            str(state),
            "--replicas",
            "--replica-id",
            name,
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    daemon = Daemon(proc, log, 0, None)
    world.daemons.append(daemon)
    return daemon


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (state T in /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def owner(store: PostgresStore, cluster: str = "lab") -> str | None:
    from healer.store.leases import owners_report

    rows = owners_report(store, [cluster]) or []
    return next((r["owner"] for r in rows if r["cluster"] == cluster), None)


async def test_sigstopped_owner_is_fenced(tmp_path: Path, pg_database: PgDatabase) -> None:
    password = tmp_path / "pg-password"
    password.write_text(pg_database.password)
    password.chmod(0o600)
    lab = tmp_path / "lab"
    async with lab_world(lab, config=replica_config(pg_database, password)) as world:
        store = PostgresStore(pg_database.url, password=pg_database.password, state_dir=tmp_path)
        try:
            # A stops itself (SIGSTOP) with the fence step journalled as started, just before
            # its power-off call: paused in the middle of the workflow, holding nothing.
            a = await spawn_replica(world, "A", tmp_path, failpoints="workflow.fence.before=stop")
            await a.ready()
            await until(lambda: owner(store) == "A", BOUND, "A to own lab", tail=a.tail)
            b = await spawn_replica(world, "B", tmp_path)
            await b.ready()
            assert owner(store) == "A"

            target = world.harness.pool_nodes("workers")[0]
            world.harness.crash(target)

            await until(lambda: stopped(a.pid), BOUND, "A to stop mid-workflow", tail=a.tail)
            wf = store.workflows(node=target)[0]
            assert wf.step == "fence", wf
            try:
                await until(lambda: owner(store) == "B", LEASE + 5, "B to take lab over")
                took = b.events("ownership.acquired")
                assert any(e.get("taken_from") == "A" for e in took), took

                def succeeded() -> bool:
                    return any(wf.state == SUCCEEDED for wf in store.workflows(node=target))

                await until(succeeded, BOUND, f"B to finish replacing {target}", tail=b.tail)
                machines = world.harness.cloud.machines(include_terminated=True)
                destroys = world.harness.cloud.destroy_log()
                steps = store.steps(store.workflows(node=target)[0].id)
                a_seen = len(a.events())
            finally:
                os.kill(a.pid, signal.SIGCONT)

            await until(
                lambda: a.logged("ownership.fenced"), 15, "A to say it is fenced", tail=a.tail
            )
            await asyncio.sleep(LEASE)  # A's loop runs on: whatever it would still do, it does now
            after = a.events()[a_seen:]
            assert not [e for e in after if str(e.get("event", "")).endswith("_done")], after
            fenced = [e for e in after if e.get("event") == "ownership.fenced"]
            assert fenced and all(e["cluster"] == "lab" for e in fenced), after
            # No provider call and no step commit from A after SIGCONT: the cloud and the
            # journal are as B left them.
            assert world.harness.cloud.machines(include_terminated=True) == machines
            assert world.harness.cloud.destroy_log() == destroys
            assert store.steps(store.workflows(node=target)[0].id) == steps
            assert len(store.workflows(node=target)) == 1
            inv = await world.invariants(store)
            assert inv["ok"], inv
            assert a.running and b.running
        finally:
            store.close()


EXTRA = 29  # empty clusters beside the lab's: thirty in all


async def test_three_replicas_thirty_clusters_kill_one(
    tmp_path: Path, pg_database: PgDatabase
) -> None:
    password = tmp_path / "pg-password"
    password.write_text(pg_database.password)
    password.chmod(0o600)
    apis: list[FakeApiServer] = []
    extra: dict[str, Path] = {}
    try:
        for i in range(EXTRA):
            api = FakeApiServer()
            await api.start()
            apis.append(api)
            extra[f"c{i:02d}"] = api.write_kubeconfig(tmp_path / f"c{i:02d}.kubeconfig")
        config = replica_config(pg_database, password, extra)
        async with lab_world(tmp_path / "lab", config=config) as world:
            store = PostgresStore(
                pg_database.url, password=pg_database.password, state_dir=tmp_path
            )
            try:
                await _kill_one(world, store, tmp_path)
            finally:
                store.close()
    finally:
        for api in apis:
            await api.stop()


def _owners(store: PostgresStore, clusters: list[str]) -> dict[str, str | None]:
    from healer.store.leases import owners_report

    return {r["cluster"]: r["owner"] for r in owners_report(store, clusters) or []}


async def _kill_one(world: World, store: PostgresStore, root: Path) -> None:
    from collections import Counter

    clusters = ["lab", *(f"c{i:02d}" for i in range(EXTRA))]
    replicas = {name: await spawn_replica(world, name, root) for name in ("A", "B", "C")}
    for daemon in replicas.values():
        await daemon.ready(timeout=BOUND)

    def shared_fairly() -> bool:
        counts = Counter(_owners(store, clusters).values())
        return counts == Counter({"A": 10, "B": 10, "C": 10})

    await until(shared_fairly, BOUND, "ten clusters per replica")
    owners = _owners(store, clusters)
    print("owners:", dict(Counter(owners.values())))
    # Each cluster has exactly one owner, and each replica believes it owns only its own: the
    # clusters each one acquired and did not lose or release since.
    for name, daemon in replicas.items():
        held: set[str] = set()
        for e in daemon.events():
            if e.get("event") == "ownership.acquired":
                held.add(e["cluster"])
            elif e.get("event") in ("ownership.fenced", "ownership.released"):
                held.discard(e["cluster"])
        assert held == {c for c, o in owners.items() if o == name}, (name, held)

    victim = owners["lab"]
    assert victim is not None
    orphaned = sorted(c for c, o in owners.items() if o == victim)
    loop = asyncio.get_running_loop()
    await replicas[victim].kill()
    killed_at = loop.time()
    target = world.harness.pool_nodes("workers")[0]
    world.harness.crash(target)

    def taken_over() -> bool:
        now = _owners(store, clusters)
        return all(now[c] not in (None, victim) for c in orphaned)

    await until(taken_over, LEASE + 5, f"{victim}'s clusters to be owned again")
    took = loop.time() - killed_at
    print(f"{victim}'s {len(orphaned)} clusters owned again after {took:.1f}s (lease {LEASE}s)")
    survivors = Counter(_owners(store, clusters).values())
    assert sum(survivors.values()) == 30 and set(survivors) == set(replicas) - {victim}
    assert all(n == 15 for n in survivors.values()), survivors

    def replaced() -> bool:
        return any(wf.state == SUCCEEDED for wf in store.workflows(node=target))

    new_owner = _owners(store, clusters)["lab"] or ""
    await until(replaced, BOUND, f"{target} to be replaced", tail=replicas[new_owner].tail)
    assert len(store.workflows(node=target)) == 1
    inv = await world.invariants(store)
    assert inv["ok"], inv
