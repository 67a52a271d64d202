"""Blocking alerts live in the state store: they lapse, survive a restart, and an upgrade from a
healer that kept them in ``alert-blocks.json`` imports that file once and loses no block."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from healer.clock import VirtualClock
from healer.errors import StateError
from healer.model import BlockChange
from healer.planner.alert_blocks import AlertBlocks, block_handler
from healer.store.alert_blocks import LEGACY_FILE, Block
from healer.store.sqlite import DB_NAME, SCHEMA_VERSION, Store


def legacy_entry(**over: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "cluster": "prod",
        "alert": "KubeAPIDown",
        "fingerprint": "f1",
        "since": 5.0,
        "expires_at": 700.0,
    }
    return {**entry, **over}


def test_blocks_lapse_and_survive_a_restart(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    blocks = AlertBlocks(store=store)
    assert blocks.fire(cluster="c", alert="A", fingerprint="1", since=5.0, now=10.0, ttl=100.0)
    assert not blocks.fire(cluster="c", alert="A", fingerprint="2", since=6.0, now=10.0, ttl=100.0)
    assert blocks.active("c", 50.0) == ("A",)
    assert blocks.active("other", 50.0) == ()
    store.close()

    store = Store.open(tmp_path)  # a restart
    again = AlertBlocks(store=store)
    assert again.active("c", 50.0) == ("A",)
    assert again.blocks("c")[0].since == 5.0
    assert not again.resolve(cluster="c", alert="A", fingerprint="1", now=60.0)  # "2" still fires
    assert again.resolve(cluster="c", alert="A", fingerprint="2", now=60.0)
    assert not again.resolve(cluster="c", alert="A", fingerprint="2", now=60.0)  # already gone
    assert AlertBlocks(store=store).active("c", 60.0) == ()
    assert store.alert_blocks() == []
    # Not repeated within the TTL: the block lapses on its own.
    again.fire(cluster="c", alert="B", fingerprint="x", since=0.0, now=200.0, ttl=100.0)
    assert again.active("c", 299.9) == ("B",)
    assert again.active("c", 300.0) == ()
    store.close()


def test_a_repeated_firing_keeps_its_start_and_extends_its_expiry(store: Store) -> None:
    blocks = AlertBlocks(store=store)
    blocks.fire(cluster="c", alert="A", fingerprint="1", since=5.0, now=10.0, ttl=100.0)
    blocks.fire(cluster="c", alert="A", fingerprint="1", since=9.0, now=80.0, ttl=100.0)
    assert store.alert_blocks("c") == [Block("c", "A", "1", since=5.0, expires_at=180.0)]


def test_apply_fires_and_resolves_from_a_block_change() -> None:
    blocks = AlertBlocks()
    firing = BlockChange("c", "A", "1", True, 3.0)
    assert blocks.apply(firing, now=10.0, ttl=60.0)
    assert not blocks.apply(firing, now=20.0, ttl=60.0)
    assert blocks.blocks() == [Block("c", "A", "1", since=3.0, expires_at=80.0)]
    assert blocks.apply(BlockChange("c", "A", "1", False, 3.0), now=30.0, ttl=60.0)
    assert blocks.blocks() == []


async def test_the_handler_records_only_a_change_of_blocking(store: Store) -> None:
    clock = VirtualClock(start=100.0)
    considered: list[str] = []

    async def consider(cluster: str) -> None:
        considered.append(cluster)

    blocks = AlertBlocks(store=store)
    handle = block_handler(blocks, store=store, clock=clock, ttl=600.0, consider=consider)
    with capture_logs() as logs:
        await handle(BlockChange("prod", "KubeAPIDown", "f1", True, 90.0))
        await handle(BlockChange("prod", "KubeAPIDown", "f2", True, 95.0))  # same name: no news
        await handle(BlockChange("prod", "KubeAPIDown", "f1", False, 90.0))  # f2 still fires
        await handle(BlockChange("prod", "KubeAPIDown", "f2", False, 95.0))
    rows = store.audit_log(cluster="prod")
    assert [(r.event, r.reason, r.evidence["fingerprint"]) for r in rows] == [
        ("alert.blocking", "BlockedByAlert", "f1"),
        ("alert.unblocked", "AlertResolved", "f2"),
    ]
    assert rows[0].message == "blocking alert KubeAPIDown firing for cluster prod"
    assert [(e["event"], e["log_level"], e["alert"]) for e in logs] == [
        ("alert.blocking", "warning", "KubeAPIDown"),
        ("alert.unblocked", "warning", "KubeAPIDown"),
    ]
    assert considered == ["prod", "prod"]


# -- the upgrade: alert-blocks.json of an older healer ------------------------------------------


def old_database(state_dir: Path) -> None:
    """A schema-1 database, as healer wrote it before blocks were in the store."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(state_dir / DB_NAME)) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema', '1')")
        db.commit()


def test_an_upgrade_imports_the_json_file_once_and_renames_it(tmp_path: Path) -> None:
    old_database(tmp_path)
    legacy = tmp_path / LEGACY_FILE
    legacy.write_text(
        json.dumps([legacy_entry(), legacy_entry(cluster="dev", alert="Old", expires_at=60.0)])
    )
    with capture_logs() as logs:
        store = Store.open(tmp_path)
    try:
        assert store.first_start is None  # healer's own database, upgraded in place
        assert store.alert_blocks() == [
            Block("dev", "Old", "f1", since=5.0, expires_at=60.0),
            Block("prod", "KubeAPIDown", "f1", since=5.0, expires_at=700.0),
        ]
        assert AlertBlocks(store=store).active("prod", 100.0) == ("KubeAPIDown",)
        assert store.get_meta("schema") == SCHEMA_VERSION
    finally:
        store.close()
    assert not legacy.exists()
    assert json.loads((tmp_path / (LEGACY_FILE + ".imported")).read_text())[0]["alert"] == (
        "KubeAPIDown"
    )
    [imported] = [e for e in logs if e["event"] == "alert_blocks.imported"]
    assert imported["blocks"] == 2
    assert [e["was"] for e in logs if e["event"] == "state.schema_upgraded"] == [1]

    # Opened again: nothing to import, nothing lost, nothing doubled.
    with capture_logs() as logs:
        store = Store.open(tmp_path)
    try:
        assert len(store.alert_blocks()) == 2
    finally:
        store.close()
    assert [e for e in logs if e["event"].startswith(("alert_blocks.", "state.schema"))] == []


def test_a_file_left_by_a_crash_after_the_import_changes_nothing(store: Store) -> None:
    """Rows committed, then a crash before the rename: the next open imports it again; a block
    the daemon changed meanwhile keeps its newer row."""
    state_dir = store.path.parent
    store.put_alert_block(Block("prod", "KubeAPIDown", "f1", since=5.0, expires_at=900.0))
    (state_dir / LEGACY_FILE).write_text(json.dumps([legacy_entry()]))
    again = Store.open(state_dir)
    try:
        assert again.alert_blocks() == [
            Block("prod", "KubeAPIDown", "f1", since=5.0, expires_at=900.0)
        ]
    finally:
        again.close()
    assert not (state_dir / LEGACY_FILE).exists()


def test_a_damaged_json_file_is_kept_aside_and_said(tmp_path: Path) -> None:
    (tmp_path / LEGACY_FILE).write_text("{broken")
    with capture_logs() as logs:
        store = Store.open(tmp_path)
    try:
        assert store.alert_blocks() == []
    finally:
        store.close()
    assert (tmp_path / "alert-blocks.damaged").read_text() == "{broken"
    assert not (tmp_path / LEGACY_FILE).exists()
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["alert_blocks.unreadable"]


def test_a_malformed_entry_is_left_out_and_the_others_kept(tmp_path: Path) -> None:
    (tmp_path / LEGACY_FILE).write_text(
        json.dumps([legacy_entry(since="soon"), legacy_entry(fingerprint="f2"), {"alert": "X"}])
    )
    with capture_logs() as logs:
        store = Store.open(tmp_path)
    try:
        assert [b.fingerprint for b in store.alert_blocks()] == ["f2"]
    finally:
        store.close()
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "alert_blocks.bad_entry",
        "alert_blocks.bad_entry",
    ]


def test_a_database_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Store.open(tmp_path).close()
    with contextlib.closing(sqlite3.connect(tmp_path / DB_NAME)) as db:
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION + 1),))
        db.commit()
    with pytest.raises(StateError, match="newer than this healer understands"):
        Store.open(tmp_path)
