"""Per-cluster ownership: the pure decisions (table tests in virtual time) and the lease table's
compare-and-set and fence on SQLite (several replicas on one file, as on one PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from healer.clock import VirtualClock
from healer.planner.ownership import Claim, decide, fair_share, live_replicas, owners
from healer.store.leases import (
    Fenced,
    Lease,
    LeaseFence,
    LeaseTable,
    OwnEverything,
    StoreLeaseDB,
    Token,
)
from healer.store.sqlite import RUNNING, Store, WorkflowRecord

NOW = 1_000.0
C3 = ["a", "b", "c"]


def L(cluster: str, holder: str, epoch: int, expires_at: float) -> Lease:
    return Lease(cluster=cluster, holder=holder, epoch=epoch, expires_at=expires_at)


@pytest.mark.parametrize(
    ("clusters", "replicas", "share"),
    [(30, 3, 10), (30, 2, 15), (30, 4, 8), (1, 3, 1), (0, 2, 0), (5, 1, 5), (7, 0, 7)],
)
def test_fair_share(clusters: int, replicas: int, share: int) -> None:
    assert fair_share(clusters, replicas) == share


def test_live_replicas_are_unexpired_heartbeats_and_me() -> None:
    beats = {"r1": NOW + 5, "r2": NOW, "r3": NOW - 1}
    assert live_replicas(beats, me="r9", now=NOW) == {"r1", "r9"}


# (name, leases, heartbeats, held, claimed clusters, renewed, released, lost)
CASES = [
    ("empty table: a lone replica claims everything", [], {}, {}, C3, [], [], []),
    (
        "two live replicas: at most ceil(3/2)=2 each",
        [],
        {"other": NOW + 10},
        {},
        2,
        [],
        [],
        [],
    ),
    (
        "own live leases renewed, nothing to claim",
        [L("a", "me", 3, NOW + 5), L("b", "me", 1, NOW + 5), L("c", "me", 2, NOW + 5)],
        {},
        {"a": 3, "b": 1, "c": 2},
        [],
        ["a", "b", "c"],
        [],
        [],
    ),
    (
        "another's live lease is never claimed",
        [L("a", "other", 1, NOW + 5)],
        {"other": NOW + 10},
        {},
        ["b", "c"],
        [],
        [],
        [],
    ),
    (
        "an expired lease is taken over at its epoch (the claim bumps it)",
        [L("a", "dead", 7, NOW), L("b", "other", 1, NOW + 5), L("c", "other", 1, NOW + 5)],
        {"other": NOW + 10, "dead": NOW - 3},
        {},
        ["a"],
        [],
        [],
        [],
    ),
    (
        "taken over while paused: lost, and not renewed",
        [L("a", "other", 4, NOW + 5), L("b", "me", 1, NOW + 5)],
        {"other": NOW + 10},
        {"a": 3, "b": 1},
        ["c"],
        ["b"],
        [],
        ["a"],
    ),
    (
        "own lease expired while paused: lost, then claimed again with a new epoch",
        [L("a", "me", 3, NOW - 1)],
        {},
        {"a": 3},
        ["a", "b", "c"],
        [],
        [],
        ["a"],
    ),
    (
        "a replica joins: the one holding all releases beyond its share",
        [L("a", "me", 1, NOW + 5), L("b", "me", 1, NOW + 5), L("c", "me", 1, NOW + 5)],
        {"new1": NOW + 10, "new2": NOW + 10},
        {"a": 1, "b": 1, "c": 1},
        [],
        1,
        2,
        [],
    ),
    (
        "a cluster gone from the config is lost",
        [L("zz", "me", 1, NOW + 5)],
        {},
        {"zz": 1},
        C3,
        [],
        [],
        ["zz"],
    ),
    (
        "a released lease (no holder) is free at once",
        [L("a", "", 2, NOW + 100)],
        {"other": NOW + 10, "third": NOW + 10},
        {},
        1,
        [],
        [],
        [],
    ),
    (
        "own live lease from a previous run of this replica is adopted with a new epoch",
        [L("a", "me", 5, NOW + 5)],
        {},
        {},
        C3,
        [],
        [],
        [],
    ),
]


@pytest.mark.parametrize(
    ("leases", "beats", "held", "claims", "renews", "releases", "lost"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decide(
    leases: list[Lease],
    beats: dict[str, float],
    held: dict[str, int],
    claims: list[str] | int,
    renews: list[str] | int,
    releases: list[str] | int,
    lost: list[str],
) -> None:
    d = decide(clusters=C3, leases=leases, heartbeats=beats, me="me", held=held, now=NOW)
    got_claims = sorted(c.cluster for c in d.claim)
    got_renew = sorted(lease.cluster for lease in d.renew)
    got_release = sorted(lease.cluster for lease in d.release)
    for got, want in ((got_claims, claims), (got_renew, renews), (got_release, releases)):
        if isinstance(want, int):
            assert len(got) == want
        else:
            assert got == want
    assert list(d.lost) == lost
    assert len(d.renew) + len(d.claim) <= d.share
    for claim in d.claim:
        row = next((x for x in leases if x.cluster == claim.cluster), None)
        assert claim.expected_epoch == (row.epoch if row else None)


def test_thirty_clusters_three_replicas_converge_to_one_owner_each() -> None:
    """Rounds of three replicas over one table in virtual time: every cluster ends with exactly
    one holder, and each holds ten; one stops (no heartbeat, no renewal): after its leases
    expire the two others hold all thirty, fifteen each, with bumped epochs."""
    clusters = [f"c{i:02d}" for i in range(30)]
    table: dict[str, Lease] = {}
    beats: dict[str, float] = {}
    held: dict[str, dict[str, int]] = {r: {} for r in ("r1", "r2", "r3")}
    ttl = 15.0

    def round_of(replica: str, now: float) -> None:
        beats[replica] = now + ttl
        d = decide(
            clusters=clusters,
            leases=table.values(),
            heartbeats=beats,
            me=replica,
            held=held[replica],
            now=now,
        )
        for c in d.lost:
            held[replica].pop(c, None)
        for lease in d.release:
            held[replica].pop(lease.cluster)
            table[lease.cluster] = Lease(lease.cluster, "", lease.epoch, now)
        for lease in d.renew:
            table[lease.cluster] = Lease(lease.cluster, replica, lease.epoch, now + ttl)
        for claim in d.claim:
            epoch = (claim.expected_epoch or 0) + 1
            table[claim.cluster] = Lease(claim.cluster, replica, epoch, now + ttl)
            held[replica][claim.cluster] = epoch

    now = NOW
    for _ in range(4):
        for r in ("r1", "r2", "r3"):
            round_of(r, now)
        now += 5
    assert sorted(owners(table.values(), now=now).values()) == sorted(
        ["r1"] * 10 + ["r2"] * 10 + ["r3"] * 10
    )
    assert {r: len(h) for r, h in held.items()} == {"r1": 10, "r2": 10, "r3": 10}
    gone = dict(held["r3"])
    for _ in range(6):  # r3 is dead: 30 s, twice the lease time
        for r in ("r1", "r2"):
            round_of(r, now)
        now += 5
    assert {len(held["r1"]), len(held["r2"])} == {15}
    assert all(table[c].holder in {"r1", "r2"} and table[c].epoch == e + 1 for c, e in gone.items())


# -- the lease table on SQLite: two stores on one file stand for two replicas ---------------


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Two replicas' stores on one database: a SQLite file, or a real PostgreSQL database
    (tests/postgres.py; skipped without the postgresql package)."""
    if request.param == "sqlite":
        pair = [Store(tmp_path / "healer.sqlite") for _ in range(2)]
    else:
        from healer.store.postgres import PostgresStore

        db = request.getfixturevalue("pg_database")
        pair = [
            PostgresStore(db.url, password=db.password, state_dir=tmp_path / f"r{i}")
            for i in range(2)
        ]
    yield pair
    for store in pair:
        store.close()


@pytest.fixture
def tables(stores):  # type: ignore[no-untyped-def]
    return tuple(LeaseTable(StoreLeaseDB(store)) for store in stores)


def test_claim_is_compare_and_set(tables) -> None:  # type: ignore[no-untyped-def]
    t1, t2 = tables
    assert t1.claim("a", holder="r1", expected_epoch=None, now=NOW, until=NOW + 15) == 1
    # r2 read the table before r1's insert: its claim of a new row loses.
    assert t2.claim("a", holder="r2", expected_epoch=None, now=NOW, until=NOW + 15) is None
    # Live: nobody takes it, even at the right epoch.
    assert t2.claim("a", holder="r2", expected_epoch=1, now=NOW + 1, until=NOW + 16) is None
    # Expired: taken over with epoch 2; r1's stale renewal and a second claim at 1 both lose.
    assert t2.claim("a", holder="r2", expected_epoch=1, now=NOW + 15, until=NOW + 30) == 2
    assert not t1.renew(Token("a", "r1", 1), now=NOW + 15, until=NOW + 30)
    assert t1.claim("a", holder="r1", expected_epoch=1, now=NOW + 15, until=NOW + 30) is None
    assert t2.renew(Token("a", "r2", 2), now=NOW + 20, until=NOW + 35)
    assert t1.leases() == [Lease("a", "r2", 2, NOW + 35)]
    # Released: free at once; the next claim bumps the epoch again.
    assert t2.release(Token("a", "r2", 2), now=NOW + 21)
    assert t1.claim("a", holder="r1", expected_epoch=2, now=NOW + 21, until=NOW + 36) == 3


def test_heartbeats_upsert(tables) -> None:  # type: ignore[no-untyped-def]
    t1, t2 = tables
    t1.heartbeat("r1", until=NOW + 15)
    t2.heartbeat("r2", until=NOW + 15)
    t1.heartbeat("r1", until=NOW + 20)
    assert t2.heartbeats() == {"r1": NOW + 20, "r2": NOW + 15}


def _fence(table: LeaseTable, clock: VirtualClock, me: str) -> LeaseFence:
    return LeaseFence(table, me=me, now=clock.wall, timeline=clock.now, margin=5.0)


def _workflow(cluster: str, started: float) -> WorkflowRecord:
    return WorkflowRecord(
        id=f"wf-{cluster}",
        cluster=cluster,
        pool="workers",
        node="n1",
        role="worker",
        state=RUNNING,
        step="cordon",
        reason="ReadyUnknownTimeout",
        evidence={},
        replacement_name="n1-r",
        started_at=started,
        updated_at=started,
    )


def test_step_commit_refused_after_takeover_and_said(stores, tables) -> None:  # type: ignore[no-untyped-def]
    """The store's fence hook: r1's commit goes through while it holds the lease; paused past
    it and taken over by r2, r1's next commit is refused inside its transaction (nothing
    written) and logged as ownership.fenced."""
    s1, _ = stores
    t1, t2 = tables
    clock = VirtualClock(start=0.0)
    fence = _fence(t1, clock, "r1")
    s1.set_fence(fence.store_check)
    fence.held["a"] = (
        t1.claim("a", holder="r1", expected_epoch=None, now=clock.wall(), until=clock.wall() + 15)
        or 0
    )
    wf = _workflow("a", clock.wall())
    s1.create_workflow(wf)
    s1.journal(wf.id, "cordon", "started", clock.wall(), {})
    clock.step(16)  # paused past the lease
    assert (
        t2.claim("a", holder="r2", expected_epoch=1, now=clock.wall(), until=clock.wall() + 15) == 2
    )
    with capture_logs() as logs, pytest.raises(Fenced) as exc:
        s1.update_workflow(wf.with_(step="drain"), journal=("cordon", "done", {}))
    assert exc.value.epoch == 1 and exc.value.cluster == "a"
    assert [x["step"] for x in s1.steps(wf.id)] == ["created", "cordon"]
    assert (s1.workflow(wf.id) or wf).step == "cordon"
    line = next(x for x in logs if x["event"] == "ownership.fenced")
    assert line["cluster"] == "a" and line["refused"] == "step commit"
    with pytest.raises(Fenced):  # and a workflow of a cluster never held is not even created
        s1.create_workflow(_workflow("b", clock.wall()))
    assert s1.workflow("wf-b") is None


def test_provider_guard_refuses_once_the_lease_time_is_spent(tables) -> None:  # type: ignore[no-untyped-def]
    """The guard of a provider call: allowed with more than the margin of the lease left by
    this process's monotonic clock, refused after a pause that spent it, even before anybody
    took the lease over, and refused after a takeover."""
    t1, t2 = tables
    clock = VirtualClock(start=0.0)
    fence = _fence(t1, clock, "r1")
    fence.held["a"] = (
        t1.claim("a", holder="r1", expected_epoch=None, now=clock.wall(), until=clock.wall() + 15)
        or 0
    )
    calls: list[str] = []
    with fence.guard("a", what="destroy_machine"):
        calls.append("destroy")
    clock.step(11)  # 4 s of the lease left: less than the margin
    with pytest.raises(Fenced), fence.guard("a", what="create_machine"):
        calls.append("create")
    clock.step(5)
    t2.claim("a", holder="r2", expected_epoch=1, now=clock.wall(), until=clock.wall() + 15)
    with pytest.raises(Fenced), fence.guard("a", what="power_off_machine"):
        calls.append("power_off")
    with pytest.raises(Fenced), fence.guard("b", what="destroy_machine"):
        calls.append("never held")
    assert calls == ["destroy"]


def test_own_everything_never_fences() -> None:
    fence = OwnEverything()
    assert fence.owns("any")
    with fence.guard("any", what="destroy_machine"):
        pass


def test_claim_records_who_it_took_from() -> None:
    d = decide(
        clusters=["a"],
        leases=[L("a", "dead", 2, NOW - 1)],
        heartbeats={},
        me="me",
        held={},
        now=NOW,
    )
    assert d.claim == (Claim(cluster="a", expected_epoch=2, taken_from="dead"),)


# -- the ownership job: rounds of two replicas over one table, in virtual time -----------------


async def test_ownership_rounds_share_take_over_and_stop_work(tables) -> None:  # type: ignore[no-untyped-def]
    """r1 alone takes all three; r2 joins: r1 releases beyond its share (2), r2 takes the rest;
    r2 stops beating (SIGKILL): after the lease r1 takes its cluster over with a new epoch and
    resumes its work there, while r2, woken, finds it lost, stops work on it and says so."""
    from healer.jobs.ownership import Ownership

    clock = VirtualClock(start=0.0)
    calls: list[tuple[str, str, str]] = []

    def replica(me: str, table: LeaseTable) -> Ownership:
        async def lost(cluster: str) -> None:
            calls.append((me, "lost", cluster))

        async def gained(cluster: str) -> None:
            calls.append((me, "gained", cluster))

        return Ownership(
            table=table,
            fence=_fence(table, clock, me),
            clusters=lambda: C3,
            lease_seconds=15.0,
            now=clock.wall,
            on_lost=lost,
            on_gained=gained,
        )

    r1, r2 = replica("r1", tables[0]), replica("r2", tables[1])
    await r1.run_once()
    assert sorted(r1.fence.held) == C3 and set(r1.fence.held.values()) == {1}
    clock.step(5)
    await r2.run_once()  # r2's heartbeat is in, but r1 still holds all: nothing free yet
    assert r2.fence.held == {}
    await r1.run_once()  # share 2: r1 lets one go
    assert len(r1.fence.held) == 2
    released = (set(C3) - set(r1.fence.held)).pop()
    assert ("r1", "lost", released) in calls  # work stopped before the lease was handed back
    await r2.run_once()
    assert r2.fence.held == {released: 2}
    assert ("r2", "gained", released) in calls

    # r2 is killed: no more rounds. r1 renews every 5 s; after 15 s r2's lease is expired.
    for _ in range(3):
        clock.step(5)
        await r1.run_once()
    clock.step(1)
    await r1.run_once()
    assert sorted(r1.fence.held) == C3 and r1.fence.held[released] == 3
    assert ("r1", "gained", released) in calls

    with capture_logs() as logs:  # r2 was only paused: it wakes and finds the cluster gone
        await r2.run_once()
    assert r2.fence.held == {}
    assert ("r2", "lost", released) in calls
    line = next(x for x in logs if x["event"] == "ownership.fenced")
    assert line["cluster"] == released and line["epoch"] == 2


async def test_clean_stop_hands_leases_back(tables) -> None:  # type: ignore[no-untyped-def]
    from healer.jobs.ownership import Ownership

    clock = VirtualClock(start=0.0)

    async def nothing(cluster: str) -> None:
        return None

    r1 = Ownership(
        table=tables[0],
        fence=_fence(tables[0], clock, "r1"),
        clusters=lambda: C3,
        lease_seconds=15.0,
        now=clock.wall,
        on_lost=nothing,
        on_gained=nothing,
    )
    await r1.run_once()
    await r1.release_all()
    assert r1.fence.held == {}
    assert all(not lease.live(clock.wall()) for lease in tables[1].leases())


# -- the workflow runner under a fence: refused acts leave no trace ----------------------------

OLD = "lab-workers-old00001"


@pytest.mark.parametrize("lost", ["commit", "provider call"])
async def test_runner_abandons_a_fenced_workflow_without_a_trace(
    lost: str, fake_api, kube, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """``commit``: the lease was taken over before the workflow started: its first journal
    write is refused inside its transaction and nothing more happens. ``provider call``: the
    lease is ours but too little of it is left (a margin above the lease time stands for a
    process that was paused after its check): the steps up to the fence commit, the power-off
    is refused, the machine keeps running, and the workflow is left running for the owner."""
    from healer.clock import RealClock
    from healer.provisioning.userdata import render_user_data
    from healer.workflow.runner import WorkflowRunner
    from tests.helpers import lab_cloud_with_worker, lab_like_config, running_workflow

    provider = await lab_cloud_with_worker(tmp_path, OLD)
    fake_api.add_node(OLD, labels={"healer.io/pool": "workers"}, ready=False)
    store = Store.open(tmp_path)
    try:
        table = LeaseTable(StoreLeaseDB(store))
        wall = store.db_now
        epoch = table.claim("lab", holder="me", expected_epoch=None, now=wall(), until=wall() + 30)
        assert epoch == 1
        if lost == "commit":
            table.release(Token("lab", "me", 1), now=wall())
            table.claim("lab", holder="other", expected_epoch=1, now=wall(), until=wall() + 30)
        clock = RealClock()
        fence = LeaseFence(
            table, me="me", now=wall, timeline=clock.now, margin=5.0 if lost == "commit" else 60.0
        )
        fence.held["lab"] = 1
        wf = running_workflow(store, OLD, "lab-workers-wf012345")
        store.set_fence(fence.store_check)
        runner = WorkflowRunner(
            config=lab_like_config(
                remediation={"drainTimeout": "1s", "retry": {"attempts": 2, "initialDelay": 0.05}}
            ),
            store=store,
            clock=clock,
            kube={"lab": kube},
            providers={"lab": provider},
            user_data=render_user_data,
            join_poll_interval=0.05,
            fence=fence,
        )
        with capture_logs() as logs:
            await runner.start(wf)
            async with asyncio.timeout(15):
                await runner.wait_idle()
        fenced = [x for x in logs if x["event"] == "ownership.fenced"]
        assert fenced and fenced[0]["cluster"] == "lab"
        assert any(x["event"] == "remediation.abandoned" for x in logs)
        final = store.workflow(wf.id)
        assert final is not None and final.state == RUNNING  # left for the owner to resume
        steps = [s["step"] for s in store.steps(wf.id)]
        if lost == "commit":
            assert steps == ["created"]
        else:
            assert fenced[0]["refused"] == "power_off_machine"
            assert steps[-1] == "fence" and "fence" not in [
                s["step"] for s in store.steps(wf.id) if s["status"] == "done"
            ]
        machine = await provider.get_machine(OLD)
        assert machine is not None and machine.state == "running"
    finally:
        await provider.close()
        store.close()


def test_status_shows_each_clusters_owner(
    pg_database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from healer.cli.main import main
    from healer.store.postgres import PostgresStore

    password = tmp_path / "pw"
    password.write_text(pg_database.password)
    password.chmod(0o600)
    cfg = tmp_path / "healer.yaml"
    cluster = {"provider": {"plugin": "lab"}, "pools": [{"name": "workers", "size": 1}]}
    cfg.write_text(
        yaml.safe_dump(
            {
                "state": {"url": pg_database.url, "password": {"file": str(password)}},
                "clusters": [{"name": "alpha", **cluster}, {"name": "beta", **cluster}],
            }
        )
    )
    store = PostgresStore(pg_database.url, password=pg_database.password, state_dir=tmp_path)
    try:
        table = LeaseTable(StoreLeaseDB(store))
        now = store.db_now()
        table.claim("alpha", holder="mgmt-a", expected_epoch=None, now=now, until=now + 60)
    finally:
        store.close()
    assert main(["status", "-c", str(cfg), "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    head = out.index("OWNER")  # the owners' table: CLUSTER OWNER EPOCH LEASE
    rows = out[head:].split("\n\n")[0].splitlines()[1:]
    assert rows[0].split()[:3] == ["alpha", "mgmt-a", "1"] and rows[0].endswith("s left")
    assert rows[1].split() == ["beta", "NONE", "-", "-"]
    assert main(["status", "-c", str(cfg), "--state-dir", str(tmp_path), "--json"]) == 0
    owners = json.loads(capsys.readouterr().out)["owners"]
    assert [(o["cluster"], o["owner"], o["epoch"]) for o in owners] == [
        ("alpha", "mgmt-a", 1),
        ("beta", None, None),
    ]
