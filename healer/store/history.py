"""A state database's recorded history, read without writing to it: the node events the health
tracker consumed (``node_events``) and the remediations that database's daemon made, for
``healer simulate --history`` (docs/simulate.md)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from healer.errors import StateError
from healer.model import NodeEvent
from healer.store.sqlite import DB_NAME, _read_only


@dataclass(frozen=True)
class RecordedRemediation:
    """A remediation a daemon started, as its database recorded it."""

    at: float
    cluster: str
    node: str
    reason: str
    replacement: str
    state: str  # running | succeeded | failed


@dataclass(frozen=True)
class RecordedHistory:
    path: Path
    events: tuple[NodeEvent, ...]
    remediations: tuple[RecordedRemediation, ...]
    skipped: int  # rows that could not be read back as events (counted, never fatal)


def read_history(path: Path) -> RecordedHistory:
    """The history in the state database at ``path`` (the file, or the state directory that
    holds it). Raises :class:`StateError` naming the file when it is not a healer database or
    recorded no node events."""
    if path.is_dir():
        path = path / DB_NAME
    if not path.is_file():
        raise StateError(f"{path}: no such state database")
    try:
        with _read_only(path) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "workflows" not in tables:
                raise StateError(f"{path} is not a healer state database")
            if "node_events" not in tables:
                raise StateError(
                    f"{path} holds no node events: it was written by a healer that did not record "
                    "them yet; replay a JSONL file (docs/simulate.md) instead"
                )
            rows = db.execute("SELECT event FROM node_events ORDER BY seq").fetchall()
            started = db.execute(
                "SELECT id, cluster, node, reason, replacement_name, state, started_at "
                "FROM workflows ORDER BY started_at, id"
            ).fetchall()
    except sqlite3.Error as exc:
        raise StateError(f"{path}: cannot read the state database: {exc}") from exc
    events: list[NodeEvent] = []
    skipped = 0
    for (text,) in rows:
        try:
            events.append(NodeEvent.from_json(json.loads(text)))
        except (ValueError, TypeError):
            skipped += 1
    if not events:
        raise StateError(f"{path} recorded no node events (a daemon or lab session writes them)")
    remediations = tuple(
        RecordedRemediation(
            at=float(at), cluster=cluster, node=node, reason=reason, replacement=repl, state=state
        )
        for _, cluster, node, reason, repl, state, at in started
    )
    return RecordedHistory(
        path=path, events=tuple(events), remediations=remediations, skipped=skipped
    )
