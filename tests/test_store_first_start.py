"""Opening the state database: a missing, zero-byte or foreign ``healer.sqlite`` is a first start
(said so, never a reason to act); a foreign one is moved aside untouched; healer's own is kept."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from healer.errors import StateError
from healer.store.sqlite import (
    DB_NAME,
    EMPTY_DATABASE,
    FOREIGN_DATABASE,
    NO_DATABASE,
    Store,
    examine_state,
)


def foreign_sqlite(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE songs (title TEXT, artist TEXT)")
        db.execute("INSERT INTO songs VALUES ('Blue Monday', 'New Order')")
        db.commit()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _connect_without_writing(path: Path) -> None:
    sqlite3.connect(path).close()  # leaves a zero-byte file, as some tools do


@pytest.mark.parametrize(
    ("prepare", "reason"),
    [
        (lambda p: None, NO_DATABASE),
        (lambda p: p.write_bytes(b""), EMPTY_DATABASE),
        (_connect_without_writing, EMPTY_DATABASE),
    ],
    ids=["missing", "zero-byte", "connect-without-writing"],
)
def test_no_state_is_a_first_start(tmp_path: Path, prepare, reason: str) -> None:  # type: ignore[no-untyped-def]
    prepare(tmp_path / DB_NAME)
    store = Store.open(tmp_path)
    try:
        assert store.first_start is not None and store.first_start.reason == reason
        assert store.first_start.moved_to is None
        assert "first start" in store.first_start.message
        assert "never by its age" in store.first_start.message
        # Usable at once: a healer database now.
        store.audit(at=1.0, cluster="c", event="e", reason="R", message="m")
    finally:
        store.close()
    assert examine_state(tmp_path / DB_NAME) is None
    assert not list(tmp_path.glob(f"{DB_NAME}.foreign-*"))


def test_a_sqlite_file_with_no_tables_is_empty(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version=1")  # writes the header, creates no table
        db.commit()
    assert examine_state(path) == (
        EMPTY_DATABASE,
        f"the state database {path} holds no healer state",
    )


def test_a_foreign_sqlite_database_is_moved_aside_untouched(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    foreign_sqlite(path)
    before = digest(path)
    with capture_logs() as logs:
        store = Store.open(tmp_path)
    try:
        first = store.first_start
        assert first is not None and first.reason == FOREIGN_DATABASE
        assert "another program (tables: songs)" in first.detail
        assert first.moved_to is not None and first.moved_to.name.startswith(f"{DB_NAME}.foreign-")
        assert str(first.moved_to) in first.message
        assert digest(first.moved_to) == before  # never written to
        # The new database is healer's and empty.
        assert store.nodes() == [] and store.workflows() == []
    finally:
        store.close()
    [line] = [e for e in logs if e["event"] == "state.foreign_moved_aside"]
    assert line["moved_to"] == str(first.moved_to) and line["path"] == str(path)


def test_a_file_that_is_not_sqlite_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    path.write_text("not a database, but somebody's notes\n")
    store = Store.open(tmp_path)
    try:
        first = store.first_start
        assert first is not None and first.reason == FOREIGN_DATABASE
        assert first.detail == f"{path} is not a SQLite database"
        assert first.moved_to is not None
        assert first.moved_to.read_text() == "not a database, but somebody's notes\n"
    finally:
        store.close()


def test_two_foreign_databases_in_the_same_second_both_kept(tmp_path: Path) -> None:
    kept = []
    for text in ("one", "two"):
        (tmp_path / DB_NAME).unlink(missing_ok=True)
        for side in ("-wal", "-shm"):
            (tmp_path / f"{DB_NAME}{side}").unlink(missing_ok=True)
        (tmp_path / DB_NAME).write_text(text)
        store = Store.open(tmp_path)
        assert store.first_start is not None and store.first_start.moved_to is not None
        kept.append(store.first_start.moved_to)
        store.close()
    assert sorted(p.read_text() for p in kept) == ["one", "two"]


def test_healers_own_database_is_kept_as_it_is(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    assert store.first_start is not None  # the very first open
    store.audit(at=1.0, cluster="c", event="node.adopted", reason="Adopted", message="m")
    store.close()
    again = Store.open(tmp_path)
    try:
        assert again.first_start is None
        assert [e.event for e in again.audit_log()] == ["node.adopted"]
    finally:
        again.close()
    assert not list(tmp_path.glob(f"{DB_NAME}.foreign-*"))


def test_an_unreadable_sqlite_file_is_not_guessed_about(tmp_path: Path) -> None:
    """It may be healer's own, damaged: refuse to start rather than lose it or overwrite it."""
    path = tmp_path / DB_NAME
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)
    before = digest(path)
    with pytest.raises(StateError, match="cannot read this SQLite database"):
        Store.open(tmp_path)
    assert digest(path) == before


def test_replacement_requested_at(tmp_path: Path) -> None:
    from healer.model import Role
    from healer.store.sqlite import FAILED, RUNNING, WorkflowRecord

    store = Store.open(tmp_path)

    def wf(i: str, state: str, replacement: dict | None, started: float) -> WorkflowRecord:  # type: ignore[type-arg]
        return WorkflowRecord(
            id=i,
            cluster="c",
            pool="p",
            node="old",
            role=Role.WORKER,
            state=state,
            step="wait_for_join",
            reason="R",
            evidence={},
            replacement_name="new",
            replacement=replacement,
            started_at=started,
            updated_at=started + 1,
        )

    try:
        assert store.replacement_requested_at("c", "new") is None
        store.create_workflow(wf("a", FAILED, None, 10.0))
        assert store.replacement_requested_at("c", "new") is None  # never created
        store.create_workflow(wf("b", RUNNING, None, 20.0))
        assert store.replacement_requested_at("c", "new") == 21.0  # being created now
        store.update_workflow(wf("b", RUNNING, {"id": "m", "requested_at": 25.0}, 20.0))
        assert store.replacement_requested_at("c", "new") == 25.0
        assert store.replacement_requested_at("other", "new") is None
    finally:
        store.close()
