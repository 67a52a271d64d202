"""Group commit and lean node writes, on both backends: ``Store.batch()`` (one transaction for
every write inside, nested batches no-ops, a failed write undone alone, a lost transaction
rolled back whole, a crash mid-batch leaving the last commit), ``Store.save_heartbeats()`` (the
heartbeat column only) and ``save_node`` writing only what changed (nothing when nothing did).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from healer.errors import StateError, StateUnwritable
from healer.model import ConditionObs, Health, NodeObservation, Verdict
from healer.store import schema
from healer.store.recorder import Recorder
from healer.store.sqlite import SCHEMA_VERSION, Store
from healer.store.writable import recover
from tests.plugins.store import Backend
from tests.test_scheduler import workflow

pytestmark = pytest.mark.usefixtures("state_backend")

OK = Verdict(Health.HEALTHY, "Ready", "Ready=True", None)
SICK = Verdict(Health.UNHEALTHY, "ReadyUnknownTimeout", "Ready=Unknown for 300s", 900.0)


def obs(node: str, *, ready: str = "True", heartbeat: float | None = None) -> NodeObservation:
    return NodeObservation(
        cluster="lab",
        node=node,
        pool="workers",
        conditions={"Ready": ConditionObs(ready, 10.0, "kube")},
        labels={"healer.io/pool": "workers"},
        last_heartbeat=heartbeat,
    )


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """The store under test and a second connection to the same database: what another
    process sees (only what was committed)."""
    a = Store.open(tmp_path)
    b = Store.open(tmp_path)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def names(store: Store) -> list[str]:
    return [r.observation.node for r in store.nodes()]


class Counting:
    """The store's connection, counting the statements that touch the nodes table."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes: list[str] = []

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        if sql.lstrip().upper().startswith(("INSERT INTO NODES", "UPDATE NODES")):
            self.writes.append(sql)
        return self.inner.execute(sql, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def counted(store: Store) -> Counting:
    counting = Counting(store._db)
    store._db = counting
    return counting


# -- batch() ----------------------------------------------------------------------------------


def test_a_batch_is_one_transaction_seen_by_others_only_when_it_ends(
    pair: tuple[Store, Store],
) -> None:
    store, other = pair
    with store.batch():
        store.save_node(obs("n1"), OK, 1.0)
        store.audit(at=1.0, cluster="lab", event="test.one", reason="One", message="one")
        assert names(store) == ["n1"]  # its own writes are visible to itself
        assert names(other) == [] and other.audit_log() == []
    assert names(other) == ["n1"]
    assert [e.event for e in other.audit_log()] == ["test.one"]


def test_a_nested_batch_is_part_of_the_outer_one(pair: tuple[Store, Store]) -> None:
    store, other = pair
    with store.batch():
        with store.batch():
            store.save_node(obs("n1"), OK, 1.0)
        assert names(other) == []  # the inner end committed nothing
        store.save_node(obs("n2"), OK, 1.0)
    assert names(other) == ["n1", "n2"]


def test_an_exception_out_of_a_batch_rolls_it_back_and_the_records_are_written_again(
    pair: tuple[Store, Store],
) -> None:
    store, other = pair
    with pytest.raises(RuntimeError, match="boom"), store.batch():
        store.save_node(obs("n1"), OK, 1.0)
        raise RuntimeError("boom")
    assert names(other) == [] and names(store) == []
    store.save_node(obs("n1"), OK, 1.0)  # not skipped as "unchanged": it was never kept
    assert names(other) == ["n1"]


def test_a_failed_write_in_a_batch_is_undone_alone_and_the_batch_commits_the_rest(
    pair: tuple[Store, Store],
) -> None:
    store, other = pair
    store.create_workflow(workflow("wf1", "n1", at=1.0))
    with store.batch():
        store.save_node(obs("n1"), OK, 1.0)
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
            store.create_workflow(workflow("wf1", "n1", at=2.0))  # its journal line too
        store.save_node(obs("n2"), OK, 1.0)
    assert names(other) == ["n1", "n2"]
    assert [s["step"] for s in other.steps("wf1")] == ["created"]


def test_writes_outside_any_batch_commit_one_by_one(pair: tuple[Store, Store]) -> None:
    store, other = pair
    store.save_node(obs("n1"), OK, 1.0)
    assert names(other) == ["n1"]


async def test_a_write_of_another_task_during_a_batch_commits_on_its_own(
    pair: tuple[Store, Store],
) -> None:
    store, other = pair
    written = asyncio.Event()

    async def elsewhere() -> None:
        store.audit(at=1.0, cluster="lab", event="test.other", reason="Other", message="x")
        written.set()

    with store.batch():
        store.save_node(obs("n1"), OK, 1.0)
        task = asyncio.create_task(elsewhere())
        await written.wait()
        # The other task's row is committed, with the batch so far (committed first).
        assert [e.event for e in other.audit_log()] == ["test.other"]
        assert names(other) == ["n1"]
        store.save_node(obs("n2"), OK, 1.0)
        assert names(other) == ["n1"]
    await task
    assert names(other) == ["n1", "n2"]


def lose_transaction(store: Store, backend: Backend) -> None:
    """Make the batch's transaction fail: a full disk on SQLite, a connection the server
    dropped on PostgreSQL."""
    if backend.name == "sqlite":
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages}")
        return
    pid = store._db.execute("SELECT pg_backend_pid()").fetchone()[0]
    killer = Store.open(Path(store.path).parent)
    try:
        killer._db.execute("SELECT pg_terminate_backend(?)", (pid,))
    finally:
        killer.close()


def test_a_batch_whose_transaction_is_lost_keeps_nothing_and_says_so(
    pair: tuple[Store, Store], state_backend: Backend
) -> None:
    store, other = pair
    store.save_node(obs("n0"), OK, 1.0)
    with pytest.raises(StateUnwritable), store.batch():
        store.save_node(obs("n0", ready="Unknown"), SICK, 2.0)
        lose_transaction(store, state_backend)
        with pytest.raises(StateUnwritable):
            for i in range(200):  # enough to need a new page on SQLite
                store.audit(at=2.0, cluster="lab", event="test.big", reason="B", message="x" * 500)
                store.save_node(obs(f"n{i + 1}"), OK, 2.0)
        # Every later write of the lost batch says so too (nothing of it will be kept).
        with pytest.raises(StateUnwritable):
            store.save_node(obs("late"), OK, 2.0)
    assert store.writes.problem is not None
    if state_backend.name == "sqlite":
        store._db.execute("PRAGMA max_page_count = 1073741823")
    assert [(r.observation.node, r.health) for r in other.nodes()] == [("n0", Health.HEALTHY)]
    assert other.audit_log() == []
    # The store works again, and writes what the lost batch had (it is not "unchanged").
    store.save_node(obs("n0", ready="Unknown"), SICK, 3.0)
    assert [r.health for r in other.nodes()] == [Health.UNHEALTHY]


def test_a_failed_write_without_savepoint_loses_a_postgresql_batch_whole(
    pair: tuple[Store, Store], state_backend: Backend
) -> None:
    """A node record write has no savepoint (one statement: cheap on PostgreSQL). If it fails
    there, the transaction is aborted: the batch is lost, and says so to each later write and
    at its end. SQLite undoes just the statement."""
    store, other = pair
    bad = NodeObservation(cluster=None, node="bad")  # type: ignore[arg-type]
    if state_backend.name == "sqlite":
        with store.batch():
            store.save_node(obs("n1"), OK, 1.0)
            with pytest.raises(Exception, match=r"(?i)null"):
                store.save_node(bad, OK, 1.0)
            store.save_node(obs("n2"), OK, 1.0)
        assert names(other) == ["n1", "n2"]
        return
    with pytest.raises(StateError, match="rolled back"), store.batch():
        store.save_node(obs("n1"), OK, 1.0)
        with pytest.raises(Exception, match=r"(?i)null"):
            store.save_node(bad, OK, 1.0)
        with pytest.raises(StateError, match="rolled back"):
            store.save_node(obs("n2"), OK, 1.0)
    assert names(other) == []
    store.save_node(obs("n1"), OK, 1.0)
    assert names(other) == ["n1"]


# -- audit rows of a lost batch ---------------------------------------------------------------


class FailingCommit:
    """The SQLite connection, whose COMMIT fails as on a full disk."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        if sql == "COMMIT":
            exc = sqlite3.OperationalError("database or disk is full")
            exc.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
            raise exc
        return self.inner.execute(sql, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def events(store: Store) -> list[tuple[str, float]]:
    return [(e.event, e.at) for e in store.audit_log()]


def lose(store: Store, other: Store, backend: Backend) -> None:
    """:func:`lose_transaction` with the connection ``other`` killing it on PostgreSQL (a new
    store would wait on the locks of the batch's audit rows to bring its schema up)."""
    if backend.name == "sqlite":
        lose_transaction(store, backend)
        return
    pid = store._db.execute("SELECT pg_backend_pid()").fetchone()[0]
    other._db.execute("SELECT pg_terminate_backend(?)", (pid,))


def test_audit_rows_of_a_batch_whose_commit_fails_are_held_and_written_after(
    pair: tuple[Store, Store], state_backend: Backend
) -> None:
    """In the daemon (keep_trying runs: ``writes.retrying``), the rows a lost batch had are
    held, in order, and written when the database takes writes again, before those recorded
    meanwhile; the node record is the tracker's to write again (save_unsaved)."""
    store, other = pair
    store.writes.retrying = True
    record = Recorder(store).record
    with pytest.raises(StateUnwritable), store.batch():
        record("node.unhealthy", cluster="lab", node="n1", reason="R", message="one", at=1.0)
        store.save_node(obs("n1", ready="Unknown"), SICK, 1.0)
        record("remediation.refused", cluster="lab", node="n1", reason="R", message="two", at=2.0)
        if state_backend.name == "sqlite":
            store._db = FailingCommit(store._db)
        else:
            lose(store, other, state_backend)
    if isinstance(store._db, FailingCommit):
        store._db = store._db.inner
    assert store.writes.problem is not None
    record("node.recovered", cluster="lab", node="n1", reason="R", message="three", at=3.0)
    assert events(other) == [] and names(other) == []
    recover(store)
    assert events(other) == [
        ("node.unhealthy", 1.0),
        ("remediation.refused", 2.0),
        ("node.recovered", 3.0),
    ]


def test_audit_rows_of_a_batch_lost_midway_are_held_before_the_write_that_lost_it(
    pair: tuple[Store, Store], state_backend: Backend
) -> None:
    store, other = pair
    store.writes.retrying = True
    record = Recorder(store).record
    with pytest.raises(StateUnwritable), store.batch():
        record("test.before", cluster="lab", reason="R", message="in the batch", at=1.0)
        lose(store, other, state_backend)
        # The write that fails (held by the recorder) and one after it (held at once).
        record("test.failed", cluster="lab", reason="R", message="x" * 300_000, at=2.0)
        record("test.after", cluster="lab", reason="R", message="after", at=3.0)
    if state_backend.name == "sqlite":
        store._db.execute("PRAGMA max_page_count = 1073741823")
    assert events(other) == []
    recover(store)
    assert events(other) == [("test.before", 1.0), ("test.failed", 2.0), ("test.after", 3.0)]


def test_a_command_holds_nothing_of_a_lost_batch_the_error_goes_up(
    pair: tuple[Store, Store], state_backend: Backend
) -> None:
    """Nothing retries in a command: the batch's error is the caller's, and no row waits for
    an episode end that will not come."""
    store, other = pair
    with pytest.raises(StateUnwritable), store.batch():
        store.audit(at=1.0, cluster="lab", event="test.one", reason="R", message="one")
        lose(store, other, state_backend)
        store.audit(at=2.0, cluster="lab", event="test.big", reason="R", message="x" * 300_000)
    if state_backend.name == "sqlite":
        store._db.execute("PRAGMA max_page_count = 1073741823")
    recover(store)
    assert events(other) == []


CRASH = """
import os, signal, sys
from pathlib import Path
from healer.model import NodeObservation, Health, Verdict
from healer.store.sqlite import Store
url = sys.argv[2]
if url:
    from healer.store.postgres import PostgresStore
    store = PostgresStore.connect(url, password=sys.argv[3], state_dir=Path(sys.argv[1]))
else:
    store = Store.open(Path(sys.argv[1]))
ok = Verdict(Health.HEALTHY, "Ready", "Ready=True", None)
with store.batch():
    store.save_node(NodeObservation(cluster="lab", node="kept"), ok, 1.0)
    store.audit(at=1.0, cluster="lab", event="test.kept", reason="Kept", message="kept")
with store.batch():
    store.save_node(NodeObservation(cluster="lab", node="lost"), ok, 2.0)
    store.save_heartbeats([("lab", "kept", 99.0)])
    store.audit(at=2.0, cluster="lab", event="test.lost", reason="Lost", message="lost")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_crash_mid_batch_leaves_the_last_committed_state(
    tmp_path: Path, state_backend: Backend
) -> None:
    section = state_backend.state_section(tmp_path)
    url = section["url"] if section else ""
    password = Path(section["password"]["file"]).read_text().strip() if section else ""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CRASH), str(tmp_path), url, password],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    store = Store.open(tmp_path)
    try:
        rows = store.nodes()
        assert [(r.observation.node, r.observation.last_heartbeat) for r in rows] == [
            ("kept", None)
        ]
        assert [e.event for e in store.audit_log()] == ["test.kept"]
    finally:
        store.close()


# -- save_heartbeats and lean save_node -------------------------------------------------------


def record_text(store: Store, node: str) -> str:
    row = store._db.execute("SELECT record FROM nodes WHERE node=?", (node,)).fetchone()
    return str(row[0])


def test_save_heartbeats_writes_the_heartbeat_column_only_and_skips_unknown_nodes(
    pair: tuple[Store, Store],
) -> None:
    store, other = pair
    store.save_node(obs("n1", heartbeat=5.0), OK, 1.0)
    store.save_node(obs("n2", heartbeat=5.0), OK, 1.0)
    text = record_text(store, "n1")
    assert "last_heartbeat" not in json.loads(text)
    store.save_heartbeats([("lab", "n1", 7.0), ("lab", "ghost", 7.0)])
    with store.batch():
        store.save_heartbeats([("lab", "n2", 8.0)])
    assert record_text(store, "n1") == text  # the record itself was not rewritten
    beats = {r.observation.node: r.observation.last_heartbeat for r in other.nodes()}
    assert beats == {"n1": 7.0, "n2": 8.0}
    assert [r.updated_at for r in other.nodes()] == [1.0, 1.0]
    store.save_heartbeats([])  # nothing to write: no transaction at all


def test_save_node_writes_only_what_changed(store: Store, counted: Counting) -> None:
    store.save_node(obs("n1", heartbeat=1.0), OK, 1.0)
    assert len(counted.writes) == 1 and counted.writes[0].startswith("INSERT")
    store.save_node(obs("n1", heartbeat=1.0), OK, 2.0)  # same record, same verdict
    assert len(counted.writes) == 1
    store.save_node(obs("n1", heartbeat=2.0), OK, 3.0)  # a newer heartbeat only
    assert counted.writes[-1].startswith("UPDATE nodes SET last_heartbeat=?")
    store.save_node(obs("n1", heartbeat=2.0), SICK, 4.0)  # the verdict only
    assert counted.writes[-1].startswith("UPDATE nodes SET health=?")
    assert "record" not in counted.writes[-1]
    store.save_node(obs("n1", ready="Unknown", heartbeat=2.0), SICK, 5.0)  # the record
    assert counted.writes[-1].startswith("INSERT") and len(counted.writes) == 4
    [row] = store.nodes()
    assert row.observation == obs("n1", ready="Unknown", heartbeat=2.0)
    assert (row.health, row.reason, row.next_check_at, row.updated_at) == (
        Health.UNHEALTHY,
        "ReadyUnknownTimeout",
        900.0,
        5.0,  # when the record or the verdict last changed
    )


def test_an_observation_changed_in_place_is_still_written(store: Store, counted: Counting) -> None:
    o = obs("n1")
    store.save_node(o, OK, 1.0)
    o.labels["new"] = "label"  # frozen by convention only: the store compares copies
    store.save_node(o, OK, 2.0)
    assert len(counted.writes) == 2
    assert store.nodes()[0].observation.labels["new"] == "label"


def test_a_node_read_back_at_start_is_not_written_again_unchanged(tmp_path: Path) -> None:
    first = Store.open(tmp_path)
    first.save_node(obs("n1", heartbeat=3.0), OK, 1.0)
    first.close()
    store = Store.open(tmp_path)
    try:
        [row] = store.nodes()
        counting = Counting(store._db)
        store._db = counting  # type: ignore[assignment]
        store.save_node(row.observation, OK, 2.0)
        assert counting.writes == []
    finally:
        store.close()


def test_a_record_of_schema_3_keeps_its_heartbeat_and_takes_the_new_column(
    tmp_path: Path,
) -> None:
    """A record written before migration 004 holds its heartbeat in its JSON: read from there,
    and written whole (heartbeat into its column) at its next save."""
    store = Store.open(tmp_path)
    with store.transaction() as db:
        db.execute("ALTER TABLE nodes DROP COLUMN last_heartbeat")
        db.execute("UPDATE meta SET value='3' WHERE key='schema'")
        legacy = obs("old", heartbeat=42.0).to_json()
        db.execute(
            "INSERT INTO nodes VALUES (?,?,?,?,?,?,?,?)",
            ("lab", "old", json.dumps(legacy), "healthy", "Ready", "Ready=True", None, 1.0),
        )
    store.close()
    store = Store.open(tmp_path)
    try:
        assert store.get_meta("schema") == SCHEMA_VERSION
        [row] = store.nodes()
        assert row.observation == obs("old", heartbeat=42.0)
        store.save_node(row.observation, OK, 2.0)  # not known column by column: written whole
        assert "last_heartbeat" not in json.loads(record_text(store, "old"))
        assert store.nodes()[0].observation.last_heartbeat == 42.0
        store.save_heartbeats([("lab", "old", 43.0)])
        assert store.nodes()[0].observation.last_heartbeat == 43.0
    finally:
        store.close()


def test_sqlite_adds_a_column_once_and_postgresql_takes_the_line_as_it_is() -> None:
    sql = "CREATE TABLE IF NOT EXISTS t (a TEXT);\nALTER TABLE t ADD COLUMN IF NOT EXISTS b REAL;\n"
    assert "ALTER" not in schema.for_dialect(sql, schema.SQLITE)
    postgres = schema.for_dialect(sql, schema.POSTGRES)
    assert "column_name = 'b') THEN ALTER TABLE t ADD COLUMN b DOUBLE PRECISION;" in postgres
    assert schema.added_columns(sql) == [("t", "b", "REAL")]
    fenced = "-- dialect: postgresql\nALTER TABLE t ADD COLUMN IF NOT EXISTS c REAL;\n"
    assert schema.added_columns(fenced) == []


def test_the_heartbeat_column_exists_on_a_fresh_database(store: Store) -> None:
    store.save_heartbeats([("lab", "nobody", 1.0)])
    store.save_node(obs("n1", heartbeat=1.0), OK, 1.0)
    row = store._db.execute("SELECT last_heartbeat FROM nodes").fetchone()
    assert row[0] == 1.0
