"""Durable state in one SQLite file: node health records, workflows and their step journal,
the append-only audit log, pauses and the circuit breaker, and the operator requests the CLI
hands to a running daemon.

Nothing a restart needs lives only in memory. The daemon and the CLI (another process) share the
file: WAL mode, a busy timeout, short transactions. The audit table refuses UPDATE and DELETE.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import structlog

from healer.errors import StateError, StateUnwritable
from healer.model import Health, NodeEvent, NodeObservation, Role, Verdict
from healer.store import schema
from healer.store.alert_blocks import LEGACY_FILE, Block, read_legacy, set_aside
from healer.store.writable import PROBE_BYTES, WriteHealth, unwritable

log = structlog.get_logger("healer.store")

DB_NAME = "healer.sqlite"
# The newest migration in healer/store/migrations (healer.store.schema): a database of an older
# schema is brought up on open and its version raised; one of a newer schema is refused (an
# older healer would ignore its state).
SCHEMA_VERSION = schema.version()

# The tables and triggers, for SQLite, from the one schema source of both backends.
_SCHEMA = schema.script(schema.SQLITE)

# The node events the health tracker consumed (what changed a node's observation, and the list
# markers), kept so that `healer simulate --history` can replay them; the oldest rows go past
# this many.
NODE_EVENTS_KEPT = 200_000

RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
# Journal detail key: true on a workflow's "failed" line when it left its pool a machine short
# (the old machine fenced, no replacement created). Such a failure holds back nothing that
# restores the pool (healer.workflow.order).
POOL_SHORT = "pool_short"

# The two circuit breakers of a cluster (see healer.planner.planner): the remediation breaker
# stops every remediation; the bad-upgrade breaker stops reboot grants and the replacement of
# nodes that did not come back from a planned reboot.
BREAKER_REMEDIATION = "remediation"
BREAKER_BAD_UPGRADE = "bad-upgrade"
BREAKER_KINDS = (BREAKER_REMEDIATION, BREAKER_BAD_UPGRADE)
_BREAKER_TABLES = {BREAKER_REMEDIATION: "breaker", BREAKER_BAD_UPGRADE: "bad_upgrade_breaker"}


@dataclass(frozen=True)
class WorkflowRecord:
    id: str
    cluster: str
    pool: str | None
    node: str
    role: Role
    state: str  # running | succeeded | failed
    step: str  # the next step to run (or the last one, once finished)
    reason: str  # why the node is being replaced (the verdict's reason)
    evidence: dict[str, Any]
    replacement_name: str
    started_at: float
    updated_at: float
    machine: dict[str, Any] | None = None  # the old machine as first found: id, name, tags
    replacement: dict[str, Any] | None = None  # the new machine once created
    forced: bool = False
    finished_at: float | None = None
    error: str | None = None

    def with_(self, **changes: Any) -> WorkflowRecord:
        return replace(self, **changes)


REQUEST_PENDING = "pending"  # written by the CLI, not yet taken by the daemon
REQUEST_TAKEN = "taken"  # the daemon is acting on it
REQUEST_ANSWERED = "answered"  # the answer is in ``answer``
REQUEST_CANCELLED = "cancelled"  # the CLI stopped waiting before the daemon took it
REQUEST_EXPIRED = "expired"  # too old when the daemon saw it; not acted on


@dataclass(frozen=True)
class RequestRow:
    """An operator request (``healer remediate``) passed from the CLI to the running daemon."""

    id: str
    at: float
    kind: str
    cluster: str
    node: str | None
    args: dict[str, Any]
    state: str
    answer: dict[str, Any] | None = None
    answered_at: float | None = None


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: float
    cluster: str
    node: str | None
    pool: str | None
    workflow_id: str | None
    event: str
    reason: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeRow:
    observation: NodeObservation
    health: Health
    reason: str
    message: str
    next_check_at: float | None
    updated_at: float


def pause_scope(cluster: str | None = None, pool: str | None = None) -> str:
    if pool is not None:
        if cluster is None:
            raise ValueError("a pool pause needs its cluster")
        return f"pool:{cluster}/{pool}"
    return f"cluster:{cluster}" if cluster is not None else "*"


# -- first start: no state, an empty file, or somebody else's database -------------------------

SQLITE_HEADER = b"SQLite format 3\x00"
_SIDE_FILES = ("-wal", "-shm", "-journal")
# Stable reasons (CamelCase) of a first start, as logged (``state.first_start``) and audited.
NO_DATABASE = "NoDatabase"
EMPTY_DATABASE = "EmptyDatabase"
FOREIGN_DATABASE = "ForeignDatabase"


def _our_tables() -> frozenset[str]:
    return frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", _SCHEMA))


@dataclass(frozen=True)
class FirstStart:
    """Why the state database held no healer state when the store was opened."""

    reason: str  # NO_DATABASE | EMPTY_DATABASE | FOREIGN_DATABASE
    detail: str  # what was found, naming the file
    moved_to: Path | None = None  # where a foreign database was put aside

    @property
    def message(self) -> str:
        moved = f"; it was moved aside to {self.moved_to}" if self.moved_to else ""
        return (
            f"first start: {self.detail}{moved}. healer starts with no state: every node it "
            "finds is adopted (judged by its conditions, never by its age) and nothing is decided "
            "for a cluster before its node list has been read whole"
        )


# Databases this process has open (resolved path -> open Stores), so none is probed again.
_OPEN_IN_PROCESS: collections.Counter[Path] = collections.Counter()


def _read_only(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """A connection that cannot write to ``path``, closed at the end of its ``with``."""
    return contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True))


def examine_state(path: Path) -> tuple[str, str] | None:
    """(reason, detail) when ``path`` holds no healer state, None when it is healer's database.

    Never writes: a foreign database is opened read-only. A SQLite file that cannot be read is
    not guessed about (it may be healer's, damaged): that raises :class:`StateError`, naming
    the file and what to do.
    """
    try:
        if not path.exists():
            return NO_DATABASE, f"there is no state database at {path}"
        wal = path.with_name(path.name + "-wal")
        size = path.stat().st_size
        if size == 0 and not (wal.exists() and wal.stat().st_size > 0):
            return EMPTY_DATABASE, f"the state database {path} is empty (0 bytes)"
        if size > 0:
            with path.open("rb") as f:
                if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                    return FOREIGN_DATABASE, f"{path} is not a SQLite database"
        with _read_only(path) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            schema = (
                db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if "meta" in tables
                else None
            )
    except (sqlite3.Error, OSError) as exc:
        raise unusable_state(path, exc) from exc
    if schema is not None:
        return None
    others = sorted(t for t in tables - _our_tables() if not t.startswith("sqlite_"))
    if others:
        return FOREIGN_DATABASE, (
            f"{path} is the SQLite database of another program (tables: {', '.join(others)})"
        )
    return EMPTY_DATABASE, f"the state database {path} holds no healer state"


# What to do about a state database healer cannot use at start, by SQLite's primary result code.
# A restart does not fix any of these: the daemon exits 2 (healer.cli.main), which its unit
# does not restart (RestartPreventExitStatus=2).
_DAMAGED = (
    "it may be healer's own, damaged (healer does not guess whether it holds its state). Keep "
    'it for a look and restore the backup (docs/operations.md, "Upgrades"), or move it aside '
    "with its -wal and -shm files (`mv {path} {path}.damaged`; the same for {path}-wal and "
    "{path}-shm) to start afresh: healer then starts with no state and adopts every node it "
    'finds (docs/operations.md, "First start and adoption")'
)
_NO_ACCESS = (
    "the daemon's user must own {dir} and the files in it (under systemd: `chown -R healer: "
    "{dir}`) and be able to read and write them"
)
_START_ADVICE = {
    sqlite3.SQLITE_CORRUPT: _DAMAGED,
    sqlite3.SQLITE_NOTADB: _DAMAGED,
    sqlite3.SQLITE_FULL: "the disk is full: free space on the filesystem of {dir}",
    sqlite3.SQLITE_READONLY: _NO_ACCESS + ", on a filesystem mounted read-write",
    sqlite3.SQLITE_CANTOPEN: _NO_ACCESS,
    sqlite3.SQLITE_PERM: _NO_ACCESS,
    sqlite3.SQLITE_AUTH: _NO_ACCESS,
    sqlite3.SQLITE_IOERR: "the disk answered an I/O error: check the disk under {dir} (dmesg, "
    "smartctl); if the file is damaged, restore the backup",
    sqlite3.SQLITE_BUSY: "another process holds a lock on it (`fuser {path}` names it): stop "
    "it, or wait for it to finish",
}


def unusable_state(path: Path, exc: BaseException) -> StateError:
    """The :class:`StateError` for a state database that cannot be used at start: one paragraph
    naming the file, what went wrong and what to do."""
    if isinstance(exc, StateUnwritable) and exc.__cause__ is not None:
        exc = exc.__cause__  # the SQLite error under it: at start nothing retries it
    if isinstance(exc, OSError):
        what, advice = exc.strerror or str(exc), _NO_ACCESS
    else:
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else sqlite3.SQLITE_CORRUPT
        what, advice = str(exc), _START_ADVICE.get(primary, _DAMAGED)
    head = "cannot read this SQLite database" if advice is _DAMAGED else "cannot use it"
    return StateError(
        f"{path}: {head} ({what}); {advice.format(path=path, dir=path.parent)}. healer did not "
        "start"
    )


def check_state(state_dir: Path) -> None:
    """Refuse a damaged state database before the daemon works with it (``PRAGMA
    quick_check``: every page of every table and index, not the cross-checks of a full
    integrity check), rather than fail on a damaged page in the middle of a remediation.
    Read-only, like :func:`examine_state`; a first start has nothing to check."""
    path = state_dir / DB_NAME
    if path.resolve() in _OPEN_IN_PROCESS or examine_state(path) is not None:
        return
    try:
        with _read_only(path) as db:
            problems = [str(r[0]) for r in db.execute("PRAGMA quick_check(3)")]
    except sqlite3.Error as exc:
        raise unusable_state(path, exc) from exc
    if problems != ["ok"]:
        raise unusable_state(path, sqlite3.DatabaseError("; ".join(problems)))


def move_aside(path: Path, *, at: float | None = None) -> Path:
    """Rename ``path`` (and its WAL side files) to ``<name>.foreign-<UTC time>``; the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at))
    target = path.with_name(f"{path.name}.foreign-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.foreign-{stamp}-{n}")
    path.rename(target)
    for suffix in _SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    return target


class Cursor(Protocol):
    """What a statement returns on either backend: rows readable by index and by column name."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """The seam between the store's queries and a backend: ``?`` placeholders on both."""

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor: ...


# Called inside the transaction of every workflow step commit, with the workflow's cluster;
# raising aborts the commit (the fence of healer run --replicas: docs/state-backends.md).
FenceCheck = Callable[[Connection, str], None]


class Store:
    """The state store: the storage interface of healer, and its SQLite backend.

    Every query is written once, in SQL both backends take (``?`` placeholders, ``INSERT ... ON
    CONFLICT``, ``RETURNING``), against :class:`Connection`. A backend provides the connection
    seam: opening, :meth:`_tx`, the schema, :meth:`db_now` and :meth:`close`. This class is the
    SQLite one; :class:`healer.store.postgres.PostgresStore` is the PostgreSQL one
    (docs/state-backends.md).
    """

    # Set by :meth:`open` when the state directory held no healer state (the daemon says so).
    first_start: FirstStart | None = None
    dialect = schema.SQLITE
    _db: Connection
    _fence: FenceCheck | None = None

    def __init__(self, path: Path) -> None:
        self.path = path
        # Whether writes work (a full disk, a read-only database): healer.store.writable.
        self.writes = WriteHealth()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Created 0600 whatever the umask; SQLite gives its -wal and -shm files that mode.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            self._sqlite = self._db = sqlite3.connect(path, timeout=10.0, isolation_level=None)
            try:
                self._upgrade(path)
            except BaseException:
                self._sqlite.close()
                raise
        except (sqlite3.Error, OSError, StateUnwritable) as exc:
            raise unusable_state(path, exc) from exc
        self._resolved = path.resolve()
        _OPEN_IN_PROCESS[self._resolved] += 1

    def _upgrade(self, path: Path) -> None:
        """Bring the schema up to this healer's (or refuse a newer one), import legacy files."""
        self._sqlite.row_factory = sqlite3.Row
        self._refuse_newer_schema(path)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives any process crash; a power cut may lose the last commits, which
        # the idempotent workflow steps and a re-list of the API make good again.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._sqlite.executescript(_SCHEMA)
        found = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if found is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(found["value"]) < SCHEMA_VERSION:
            self._db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
            log.info("state.schema_upgraded", path=str(path), was=int(found["value"]))
        self._import_legacy_blocks(path.parent / LEGACY_FILE)

    def _refuse_newer_schema(self, path: Path) -> None:
        """A database of a newer healer is refused before anything is written to it: an older
        healer would ignore (and so lose) what it does not know."""
        has_meta = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        found = (
            self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if has_meta
            else None
        )
        if found is not None and int(found["value"]) > SCHEMA_VERSION:
            raise StateError(
                f"{path}: state schema {found['value']} is newer than this healer understands "
                f"({SCHEMA_VERSION}); upgrade healer (or restore the backup taken before the "
                'upgrade: docs/operations.md, "Upgrades"). healer did not start'
            )

    def _import_legacy_blocks(self, legacy: Path) -> None:
        """Import the ``alert-blocks.json`` an older healer kept beside the database, once.

        The rows are committed before the file is renamed; a crash in between imports the same
        rows again on the next open, which changes nothing (a row already here is kept).
        """
        blocks = read_legacy(legacy)
        if blocks is None:
            return
        with self._tx():
            self._sqlite.executemany(
                "INSERT OR IGNORE INTO alert_blocks VALUES (?,?,?,?,?)",
                [(b.cluster, b.alert, b.fingerprint, b.since, b.expires_at) for b in blocks],
            )
        moved = set_aside(legacy) if legacy.exists() else None
        log.info(
            "alert_blocks.imported",
            path=str(legacy),
            blocks=len(blocks),
            moved_to=str(moved) if moved else None,
        )

    @classmethod
    def has_state(cls, state_dir: Path) -> bool:
        """Whether ``state_dir`` has a state database to open (commands that only read it)."""
        return (state_dir / DB_NAME).exists()

    @classmethod
    def open(cls, state_dir: Path) -> Store:
        """The store of ``state_dir``. No database, an empty one or a foreign one is a first
        start (``first_start`` says which); a foreign one is moved aside, never written to."""
        path = state_dir / DB_NAME
        # Already open in this process: it is healer's database. Probing it again would be
        # harmful, not just useless: closing any other descriptor of the file drops this
        # process's POSIX locks on it, and another process closing its connection would then
        # delete the WAL the open connections still write to.
        found = None if path.resolve() in _OPEN_IN_PROCESS else examine_state(path)
        moved: Path | None = None
        if found is not None and found[0] == FOREIGN_DATABASE:
            moved = move_aside(path)
            log.warning(
                "state.foreign_moved_aside", path=str(path), moved_to=str(moved), detail=found[1]
            )
        store = cls(path)
        if found is not None:
            store.first_start = FirstStart(reason=found[0], detail=found[1], moved_to=moved)
        return store

    def close(self) -> None:
        self._sqlite.close()
        _OPEN_IN_PROCESS[self._resolved] -= 1
        if not _OPEN_IN_PROCESS[self._resolved]:
            del _OPEN_IN_PROCESS[self._resolved]

    def db_now(self) -> float:
        """The database's wall time in seconds: one clock for every process sharing it. A
        SQLite database has one host, so that is this host's clock."""
        return time.time()

    def set_fence(self, check: FenceCheck | None) -> None:
        """Run ``check(db, cluster)`` inside every workflow step commit (None: no check)."""
        self._fence = check

    def transaction(self) -> contextlib.AbstractContextManager[Connection]:
        """One write transaction (``with store.transaction() as db``), whole or not at all."""
        return self._tx()

    @contextmanager
    def _step_tx(self, cluster: str) -> Iterator[Connection]:
        """The transaction of a workflow step commit: fenced when a fence is set."""
        with self._tx() as db:
            if self._fence is not None:
                self._fence(db, cluster)
            yield db

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """One write transaction, whole or not at all. A full disk, a read-only database or an
        I/O error raises :class:`~healer.errors.StateUnwritable` (and opens an episode of
        :attr:`writes`); any other error goes up as it is."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back (SQLITE_FULL, SQLITE_IOERR): a ROLLBACK
                # then fails and must not hide the error that matters.
                if self._sqlite.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            problem = unwritable(exc, self.path)
            if problem is None:
                raise
            self.writes.failed(problem)
            raise problem from exc

    def probe_write(self) -> None:
        """Write a scratch row of ``PROBE_BYTES`` and remove it: raises ``StateUnwritable`` while
        the database cannot take that much (healer.store.writable.keep_trying)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta VALUES ('write_probe', ?)"
                " ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                (os.urandom(PROBE_BYTES // 2).hex(),),
            )
        with self._tx() as db:
            db.execute("DELETE FROM meta WHERE key='write_probe'")

    # -- nodes ------------------------------------------------------------------------------
    def save_node(self, obs: NodeObservation, verdict: Verdict, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO nodes VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (cluster, node) DO UPDATE"
                " SET record=excluded.record, health=excluded.health, reason=excluded.reason,"
                " message=excluded.message, next_check_at=excluded.next_check_at,"
                " updated_at=excluded.updated_at",
                (
                    obs.cluster,
                    obs.node,
                    json.dumps(obs.to_json()),
                    str(verdict.health),
                    verdict.reason,
                    verdict.message,
                    verdict.next_check_at,
                    now,
                ),
            )

    def forget_node(self, cluster: str, node: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM nodes WHERE cluster=? AND node=?", (cluster, node))

    def nodes(self, cluster: str | None = None) -> list[NodeRow]:
        sql = "SELECT * FROM nodes" + (" WHERE cluster=?" if cluster else "") + " ORDER BY 1, 2"
        rows = self._db.execute(sql, (cluster,) if cluster else ()).fetchall()
        return [
            NodeRow(
                observation=NodeObservation.from_json(json.loads(r["record"])),
                health=Health(r["health"]),
                reason=r["reason"],
                message=r["message"],
                next_check_at=r["next_check_at"],
                updated_at=r["updated_at"],
            )
            for r in rows
        ]

    def record_event(self, event: NodeEvent) -> None:
        """Keep ``event`` for replay (``healer simulate --history``); trims the oldest rows
        past :data:`NODE_EVENTS_KEPT` now and then."""
        with self._tx() as db:
            seq = db.execute(
                "INSERT INTO node_events (at, event) VALUES (?, ?) RETURNING seq",
                (event.at, json.dumps(event.to_json(), default=str)),
            ).fetchone()[0]
            if seq is not None and seq % 1000 == 0:
                db.execute("DELETE FROM node_events WHERE seq <= ?", (seq - NODE_EVENTS_KEPT,))

    # -- workflows --------------------------------------------------------------------------
    def create_workflow(self, wf: WorkflowRecord) -> None:
        with self._step_tx(wf.cluster) as db:
            db.execute(
                "INSERT INTO workflows (id, cluster, pool, node, role, state, step, reason, evidence,"
                " machine, replacement_name, replacement, forced, started_at, updated_at,"
                " finished_at, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                _wf_row(wf),
            )
            db.execute(
                "INSERT INTO workflow_steps (workflow_id, step, status, at, detail)"
                " VALUES (?,?,?,?,?)",
                (wf.id, "created", "done", wf.started_at, json.dumps({"reason": wf.reason})),
            )

    def update_workflow(
        self, wf: WorkflowRecord, *, journal: tuple[str, str, dict[str, Any]] | None = None
    ) -> None:
        """Save the workflow and, in the same transaction, append a journal line (step, status, detail)."""
        with self._step_tx(wf.cluster) as db:
            db.execute(
                "UPDATE workflows SET state=?, step=?, machine=?, replacement=?, updated_at=?,"
                " finished_at=?, error=? WHERE id=?",
                (
                    wf.state,
                    wf.step,
                    json.dumps(wf.machine) if wf.machine is not None else None,
                    json.dumps(wf.replacement) if wf.replacement is not None else None,
                    wf.updated_at,
                    wf.finished_at,
                    wf.error,
                    wf.id,
                ),
            )
            if journal is not None:
                step, status, detail = journal
                db.execute(
                    "INSERT INTO workflow_steps (workflow_id, step, status, at, detail)"
                    " VALUES (?,?,?,?,?)",
                    (wf.id, step, status, wf.updated_at, json.dumps(detail, default=str)),
                )

    def journal(
        self, wf_id: str, step: str, status: str, at: float, detail: dict[str, Any]
    ) -> None:
        with self._tx() as db:
            if self._fence is not None:
                row = db.execute("SELECT cluster FROM workflows WHERE id=?", (wf_id,)).fetchone()
                if row is not None:
                    self._fence(db, row["cluster"])
            db.execute(
                "INSERT INTO workflow_steps (workflow_id, step, status, at, detail) VALUES (?,?,?,?,?)",
                (wf_id, step, status, at, json.dumps(detail, default=str)),
            )

    def workflow(self, wf_id: str) -> WorkflowRecord | None:
        row = self._db.execute("SELECT * FROM workflows WHERE id=?", (wf_id,)).fetchone()
        return _wf_from_row(row) if row else None

    def workflows(
        self,
        *,
        cluster: str | None = None,
        state: str | None = None,
        node: str | None = None,
        since: float | None = None,
    ) -> list[WorkflowRecord]:
        where: list[str] = []
        args: list[Any] = []
        for col, val in (("cluster", cluster), ("state", state), ("node", node)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        if since is not None:
            where.append("started_at>=?")
            args.append(since)
        sql = "SELECT * FROM workflows" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._db.execute(sql + " ORDER BY started_at, id", args).fetchall()
        return [_wf_from_row(r) for r in rows]

    def left_pool_short(self, wf_id: str) -> bool:
        """True when the workflow's "failed" journal line says it left its pool a machine short."""
        row = self._db.execute(
            "SELECT detail FROM workflow_steps WHERE workflow_id=? AND status='failed'"
            " ORDER BY seq DESC LIMIT 1",
            (wf_id,),
        ).fetchone()
        return bool(row and json.loads(row["detail"]).get(POOL_SHORT))

    def failed_since(self, cluster: str, since: float) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM workflows WHERE cluster=? AND state=? AND finished_at>=?",
            (cluster, FAILED, since),
        ).fetchone()
        return int(row[0])

    def replacement_requested_at(self, cluster: str, node: str) -> float | None:
        """When healer requested the machine of ``node`` as a replacement (the newest workflow
        naming it so), or None when healer did not create it. A workflow still creating the
        machine counts from its last step."""
        row = self._db.execute(
            "SELECT state, replacement, updated_at FROM workflows"
            " WHERE cluster=? AND replacement_name=? ORDER BY started_at DESC LIMIT 1",
            (cluster, node),
        ).fetchone()
        if row is None:
            return None
        if row["replacement"]:
            requested = json.loads(row["replacement"]).get("requested_at")
            if requested is not None:
                return float(requested)
        return float(row["updated_at"]) if row["state"] == RUNNING else None

    def steps(self, wf_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT step, status, at, detail FROM workflow_steps WHERE workflow_id=? ORDER BY seq",
            (wf_id,),
        ).fetchall()
        return [
            {
                "step": r["step"],
                "status": r["status"],
                "at": r["at"],
                "detail": json.loads(r["detail"]),
            }
            for r in rows
        ]

    # -- audit ------------------------------------------------------------------------------
    def audit(
        self,
        *,
        at: float,
        cluster: str,
        event: str,
        reason: str,
        message: str,
        node: str | None = None,
        pool: str | None = None,
        workflow_id: str | None = None,
        evidence: dict[str, Any] | Sequence[Any] | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO audit (at, cluster, node, pool, workflow_id, event, reason, message,"
                " evidence) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    at,
                    cluster,
                    node,
                    pool,
                    workflow_id,
                    event,
                    reason,
                    message,
                    json.dumps(evidence if evidence is not None else {}, default=str),
                ),
            )

    def audit_log(
        self,
        *,
        cluster: str | None = None,
        node: str | None = None,
        event: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        where: list[str] = []
        args: list[Any] = []
        for col, val in (("cluster", cluster), ("node", node), ("event", event)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        if since is not None:
            where.append("at>=?")
            args.append(since)
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY seq DESC LIMIT {int(limit)}) AS recent"
        sql += " ORDER BY seq"
        return [
            AuditEntry(
                seq=r["seq"],
                at=r["at"],
                cluster=r["cluster"],
                node=r["node"],
                pool=r["pool"],
                workflow_id=r["workflow_id"],
                event=r["event"],
                reason=r["reason"],
                message=r["message"],
                evidence=json.loads(r["evidence"]),
            )
            for r in self._db.execute(sql, args).fetchall()
        ]

    def count_audit(
        self, *, cluster: str, event: str, since: float, reason: str | None = None
    ) -> int:
        sql = "SELECT count(*) FROM audit WHERE cluster=? AND event=? AND at>=?"
        args: list[Any] = [cluster, event, since]
        if reason is not None:
            sql += " AND reason=?"
            args.append(reason)
        row = self._db.execute(sql, args).fetchone()
        return int(row[0])

    # -- pauses and breaker -----------------------------------------------------------------
    def set_paused(self, scope: str, paused: bool, *, at: float, note: str = "") -> bool:
        """Returns True when this changed anything."""
        with self._tx() as db:
            if paused:
                cur = db.execute(
                    "INSERT INTO pauses VALUES (?,?,?) ON CONFLICT DO NOTHING", (scope, at, note)
                )
            else:
                cur = db.execute("DELETE FROM pauses WHERE scope=?", (scope,))
            return cur.rowcount > 0

    def pauses(self) -> dict[str, tuple[float, str]]:
        return {
            r["scope"]: (r["at"], r["note"])
            for r in self._db.execute("SELECT * FROM pauses ORDER BY scope").fetchall()
        }

    def open_breaker(
        self, cluster: str, reason: str, at: float, *, kind: str = BREAKER_REMEDIATION
    ) -> bool:
        table = _BREAKER_TABLES[kind]
        with self._tx() as db:
            cur = db.execute(
                f"INSERT INTO {table} VALUES (?,?,?) ON CONFLICT DO NOTHING", (cluster, reason, at)
            )
            return cur.rowcount > 0

    def reset_breaker(
        self,
        cluster: str | None = None,
        *,
        at: float | None = None,
        kind: str = BREAKER_REMEDIATION,
    ) -> list[str]:
        """Close the ``kind`` breaker of ``cluster`` (of every cluster when None); returns the
        clusters whose breaker was open. With ``at``, the reset time is recorded in the same
        transaction: the next trip counts only what happened after it (a fresh window)."""
        table = _BREAKER_TABLES[kind]
        with self._tx() as db:
            if cluster is None:
                names = [r[0] for r in db.execute(f"SELECT cluster FROM {table}").fetchall()]
                db.execute(f"DELETE FROM {table}")
            else:
                names = [
                    r[0]
                    for r in db.execute(
                        f"SELECT cluster FROM {table} WHERE cluster=?", (cluster,)
                    ).fetchall()
                ]
                db.execute(f"DELETE FROM {table} WHERE cluster=?", (cluster,))
            if at is not None:
                for name in names:
                    db.execute(
                        "INSERT INTO breaker_resets VALUES (?,?,?) ON CONFLICT (cluster, kind)"
                        " DO UPDATE SET reset_at=excluded.reset_at",
                        (name, kind, at),
                    )
            return names

    def breakers(self, *, kind: str = BREAKER_REMEDIATION) -> dict[str, tuple[str, float]]:
        return {
            r["cluster"]: (r["reason"], r["opened_at"])
            for r in self._db.execute(f"SELECT * FROM {_BREAKER_TABLES[kind]}").fetchall()
        }

    def breaker_reset_at(self, cluster: str, *, kind: str = BREAKER_REMEDIATION) -> float | None:
        """When an operator last reset the ``kind`` breaker of ``cluster`` (None: never)."""
        row = self._db.execute(
            "SELECT reset_at FROM breaker_resets WHERE cluster=? AND kind=?", (cluster, kind)
        ).fetchone()
        return float(row[0]) if row is not None else None

    # -- blocking alerts (the set is the planner's: healer.planner.alert_blocks) -----------
    def put_alert_block(self, block: Block) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO alert_blocks VALUES (?,?,?,?,?)"
                " ON CONFLICT (cluster, alert, fingerprint)"
                " DO UPDATE SET since=excluded.since, expires_at=excluded.expires_at",
                (block.cluster, block.alert, block.fingerprint, block.since, block.expires_at),
            )

    def delete_alert_block(self, cluster: str, alert: str, fingerprint: str) -> bool:
        """Returns True when there was such a block."""
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM alert_blocks WHERE cluster=? AND alert=? AND fingerprint=?",
                (cluster, alert, fingerprint),
            )
            return cur.rowcount > 0

    def alert_blocks(self, cluster: str | None = None) -> list[Block]:
        # The columns in the order of Block's fields.
        sql = "SELECT cluster, alert, fingerprint, since, expires_at FROM alert_blocks"
        if cluster is not None:
            sql += " WHERE cluster=?"
        sql += " ORDER BY cluster, alert, fingerprint"
        rows = self._db.execute(sql, (cluster,) if cluster is not None else ()).fetchall()
        return [Block(*r) for r in rows]

    # -- the webhook's replay cache (healer.sources.webhook): signatures seen, by wall time ---
    def remember_signature(self, signature: str, *, now: float, expires_at: float) -> bool:
        """Record a signed request's signature until ``expires_at`` (wall seconds). False when
        it is already there and not yet expired (a replay); expired rows are pruned here."""
        with self._tx() as db:
            db.execute("DELETE FROM webhook_replays WHERE expires_at <= ?", (now,))
            cur = db.execute(
                "INSERT INTO webhook_replays VALUES (?,?) ON CONFLICT DO NOTHING",
                (signature, expires_at),
            )
            return cur.rowcount > 0

    def signatures(self, now: float) -> dict[str, float]:
        """The signatures not yet expired at ``now``, with their expiry."""
        rows = self._db.execute(
            "SELECT signature, expires_at FROM webhook_replays WHERE expires_at > ?", (now,)
        ).fetchall()
        return {r["signature"]: float(r["expires_at"]) for r in rows}

    # -- meta: small facts the daemon publishes for the CLI (e.g. its status line) ---------
    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta VALUES (?,?) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                (key, json.dumps(value)),
            )

    def get_meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row["value"]) if row is not None else None

    # -- operator requests: the CLI asks, the running daemon answers (healer.jobs.manual) -------
    def add_request(
        self,
        *,
        request_id: str,
        kind: str,
        cluster: str,
        node: str | None,
        args: dict[str, Any],
        at: float,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO requests (id, at, kind, cluster, node, args, state)"
                " VALUES (?,?,?,?,?,?,?)",
                (request_id, at, kind, cluster, node, json.dumps(args), REQUEST_PENDING),
            )

    def pending_requests(self) -> list[RequestRow]:
        rows = self._db.execute(
            "SELECT * FROM requests WHERE state=? ORDER BY at, id", (REQUEST_PENDING,)
        ).fetchall()
        return [_request_from_row(r) for r in rows]

    def request(self, request_id: str) -> RequestRow | None:
        row = self._db.execute("SELECT * FROM requests WHERE id=?", (request_id,)).fetchone()
        return _request_from_row(row) if row is not None else None

    def move_request(
        self,
        request_id: str,
        *,
        to: str,
        at: float,
        answer: dict[str, Any] | None = None,
        only_from: str | None = None,
    ) -> bool:
        """Set a request's state (and answer); with ``only_from``, only if it is in that state.

        The compare-and-set is what keeps the CLI (cancelling on timeout) and the daemon
        (claiming) from both acting on one request. Returns True when the row changed.
        """
        sql = "UPDATE requests SET state=?, answer=?, answered_at=? WHERE id=?"
        params: list[Any] = [to, json.dumps(answer) if answer is not None else None, at, request_id]
        if only_from is not None:
            sql += " AND state=?"
            params.append(only_from)
        with self._tx() as db:
            return db.execute(sql, params).rowcount > 0


def _request_from_row(r: Any) -> RequestRow:
    return RequestRow(
        id=r["id"],
        at=r["at"],
        kind=r["kind"],
        cluster=r["cluster"],
        node=r["node"],
        args=json.loads(r["args"]),
        state=r["state"],
        answer=json.loads(r["answer"]) if r["answer"] else None,
        answered_at=r["answered_at"],
    )


def _wf_row(wf: WorkflowRecord) -> tuple[Any, ...]:
    return (
        wf.id,
        wf.cluster,
        wf.pool,
        wf.node,
        str(wf.role),
        wf.state,
        wf.step,
        wf.reason,
        json.dumps(wf.evidence, default=str),
        json.dumps(wf.machine) if wf.machine is not None else None,
        wf.replacement_name,
        json.dumps(wf.replacement) if wf.replacement is not None else None,
        int(wf.forced),
        wf.started_at,
        wf.updated_at,
        wf.finished_at,
        wf.error,
    )


def _wf_from_row(r: Any) -> WorkflowRecord:
    return WorkflowRecord(
        id=r["id"],
        cluster=r["cluster"],
        pool=r["pool"],
        node=r["node"],
        role=Role(r["role"]),
        state=r["state"],
        step=r["step"],
        reason=r["reason"],
        evidence=json.loads(r["evidence"]),
        machine=json.loads(r["machine"]) if r["machine"] else None,
        replacement_name=r["replacement_name"],
        replacement=json.loads(r["replacement"]) if r["replacement"] else None,
        forced=bool(r["forced"]),
        started_at=r["started_at"],
        updated_at=r["updated_at"],
        finished_at=r["finished_at"],
        error=r["error"],
    )
