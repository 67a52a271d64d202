"""Durable state in one SQLite file: node health records, workflows and their step journal,
the append-only audit log, pauses and the circuit breaker, and the operator requests the CLI
hands to a running daemon.

Nothing a restart needs lives only in memory. The daemon and the CLI (another process) share the
file: WAL mode, a busy timeout, short transactions. The audit table refuses UPDATE and DELETE.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import operator
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

from healer.errors import StateError, StateUnwritable
from healer.model import Health, NodeEvent, NodeObservation, Role, Verdict
from healer.store import schema
from healer.store.alert_blocks import LEGACY_FILE, Block, read_legacy, set_aside
from healer.store.writable import IO_ERROR, PROBE_BYTES, WriteHealth, unwritable
from healer.telemetry.lazylog import get_logger

log = get_logger("healer.store")  # structlog, imported when it first logs

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

# The fields of a node record kept in its JSON text: all but ``last_heartbeat``, which has its
# own column (migration 004) so that a heartbeat writes one REAL and encodes nothing.
_RECORD_FIELDS = tuple(f.name for f in fields(NodeObservation) if f.name != "last_heartbeat")
_record_of = operator.attrgetter(*_RECORD_FIELDS)
_DICT_FIELDS = tuple(_RECORD_FIELDS.index(name) for name in ("conditions", "labels"))


def _record_json(obs: NodeObservation) -> str:
    data = obs.to_json()
    del data["last_heartbeat"]
    return json.dumps(data)


@dataclass(frozen=True)
class _Saved:
    """What the database holds of one node, as this store last wrote or read it: its record's
    fields (values copied, so that no later change to the observation goes unnoticed), the
    verdict columns and the heartbeat column."""

    record: tuple[Any, ...]
    verdict: tuple[str, str, str, float | None]
    heartbeat: float | None


def _saved(obs: NodeObservation, verdict: tuple[str, str, str, float | None]) -> _Saved:
    record = list(_record_of(obs))
    for i in _DICT_FIELDS:
        record[i] = dict(record[i])
    return _Saved(tuple(record), verdict, obs.last_heartbeat)


def _verdict_columns(verdict: Verdict) -> tuple[str, str, str, float | None]:
    return (str(verdict.health), verdict.reason, verdict.message, verdict.next_check_at)


def _owner() -> object:
    """Who writes: the asyncio task, or the thread outside a running loop."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return task if task is not None else threading.get_ident()


@dataclass
class _Batch:
    """The open :meth:`Store.batch`: its owner, whether its transaction is begun (at its first
    write), the error that lost it (rolled back; raised again), the node records it wrote
    (their previous :class:`_Saved`, to forget if it does not commit) and the audit rows it
    wrote (:meth:`Store.audit`'s keyword arguments, to hold if it does not commit)."""

    owner: object
    open: bool = False
    problem: BaseException | None = None
    undo: dict[tuple[str, str], _Saved | None] = field(default_factory=dict)
    audits: list[dict[str, Any]] = field(default_factory=list)


# The columns of an audit row, in the order Store.audit writes them (its keyword arguments too).
_AUDIT_COLUMNS = (
    "at",
    "cluster",
    "node",
    "pool",
    "workflow_id",
    "event",
    "reason",
    "message",
    "evidence",
)
_AUDIT_INSERT = f"INSERT INTO audit ({', '.join(_AUDIT_COLUMNS)}) VALUES (?,?,?,?,?,?,?,?,?)"


def _again(problem: BaseException) -> Exception:
    """A fresh exception saying ``problem`` again (a lost batch, to each later write and its
    end)."""
    if isinstance(problem, StateUnwritable):
        return StateUnwritable(str(problem), kind=problem.kind, path=problem.path)
    return StateError(f"a batch of state writes was rolled back after an error: {problem!r}")


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
    _batch: _Batch | None = None  # the open batch() (None: each write is its own transaction)

    def __init__(self, path: Path) -> None:
        self.path = path
        # Whether writes work (a full disk, a read-only database): healer.store.writable.
        self.writes = WriteHealth()
        # What the database holds of each node this store wrote or read (save_node skips a
        # record that did not change, and writes only the columns that did).
        self._saved_nodes: dict[tuple[str, str], _Saved] = {}
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
        for migration in schema.migrations():
            self._sqlite.executescript(schema.for_dialect(migration.sql, schema.SQLITE))
            for table, column, decl in schema.added_columns(migration.sql):
                # SQLite has no ADD COLUMN IF NOT EXISTS (healer.store.schema).
                info = self._db.execute(f"PRAGMA table_info({table})").fetchall()
                have = {r["name"] for r in info}
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
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

    # -- transactions and batches ----------------------------------------------------------
    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every write made inside the block (node records, audit rows, events, workflow rows...)
        goes into ONE transaction, committed when the block ends: a drained batch of events
        costs one commit, not one per write. Whole or not at all: a crash before the end
        leaves the state of the last commit.

        - A ``batch()`` inside a batch is a no-op: the outer one commits.
        - Each write inside keeps its own whole-or-nothing: a write that fails is undone alone
          (a savepoint) and the batch goes on. A write the database did not take
          (:class:`~healer.errors.StateUnwritable`: a full disk, an I/O error, a broken
          connection), or a failure that lost the transaction itself (any failed statement
          of a write without a savepoint on PostgreSQL), rolls the batch back whole: that
          write, every later write of the batch and the end of the block raise it again
          (:class:`~healer.errors.StateError` for what is not StateUnwritable), so the caller
          knows nothing of the batch was kept.
        - An exception that leaves the block rolls the batch back.
        - The audit rows of a batch lost to a database that takes no writes are not lost with
          it: in a process that retries (:attr:`WriteHealth.retrying`, the daemon) they are
          held, in order, and written when it takes writes again, as a row whose own write
          failed (:mod:`healer.store.writable`). A commit whose outcome is unknown (the
          connection dropped during COMMIT) holds them too: a row twice rather than none.
        - The transaction begins at the first write. A write of another asyncio task (the
          owner awaited inside the block) does not join it: the batch so far is committed,
          that write runs in its own transaction, and the batch goes on in a new one.
        """
        if self._batch is not None:
            yield
            return
        batch = self._batch = _Batch(_owner())
        try:
            yield
        except BaseException as exc:
            self._batch = None
            if batch.open:
                self._rollback()
                self._unsave(batch, exc)
            raise
        self._batch = None
        if batch.problem is not None:
            raise _again(batch.problem)
        if batch.open:
            self._commit_batch(batch)

    def _commit_batch(self, batch: _Batch) -> None:
        batch.open = False
        try:
            self._commit()
        except BaseException as exc:
            self._unsave(batch, exc)  # whether it was kept is not known: written again
            raise
        batch.undo.clear()
        batch.audits.clear()

    def _unsave(self, batch: _Batch, problem: BaseException | None) -> None:
        """Forget what ``batch`` wrote (not kept, or not known to be): its node records are
        written whole next time; its audit rows, lost to a database that takes no writes
        (``problem``), are held for when it does (see :meth:`batch`)."""
        for key in batch.undo:
            self._saved_nodes.pop(key, None)
        batch.undo.clear()
        rows, batch.audits = batch.audits, []
        if isinstance(problem, StateUnwritable) and self.writes.retrying:
            for row in rows:
                self.writes.hold(row)

    def _tx(self, *, savepoint: bool = True) -> contextlib.AbstractContextManager[Connection]:
        """One write transaction, whole or not at all; inside a :meth:`batch` of this task, a
        part of the batch's (under a savepoint: ``savepoint=False`` for a block whose failure
        midway leaves nothing wrong). A full disk, a read-only database or an I/O error raises
        :class:`~healer.errors.StateUnwritable` (and opens an episode of :attr:`writes`); any
        other error goes up as it is."""
        batch = self._batch
        if batch is None:
            return self._own_tx()
        if batch.owner == _owner():
            return self._in_batch(batch, savepoint=savepoint)
        if batch.open:
            self._split(batch)
        return self._own_tx()

    @contextmanager
    def _in_batch(self, batch: _Batch, *, savepoint: bool) -> Iterator[Connection]:
        if batch.problem is not None:
            raise _again(batch.problem)
        if batch.open and not self._tx_usable():
            self._abandon(batch, self._lost())
            raise _again(batch.problem)  # type: ignore[arg-type]
        try:
            if not batch.open:
                self._begin()
                batch.open = True
            with self._nested(savepoint) as db:
                yield db
        except BaseException as exc:
            # A write the database did not take loses the whole batch (simple to recover from:
            # nothing of it was kept), as does any failure that lost the transaction.
            if batch.open and (isinstance(exc, StateUnwritable) or not self._tx_usable()):
                self._abandon(batch, exc)
            raise

    def _abandon(self, batch: _Batch, problem: BaseException) -> None:
        """The batch's transaction is lost: roll back what is left of it."""
        self._rollback()
        batch.open = False
        batch.problem = problem
        self._unsave(batch, problem)

    def _split(self, batch: _Batch) -> None:
        """Commit the batch so far, for a write of another task (see :meth:`batch`)."""
        try:
            self._commit_batch(batch)
        except Exception as exc:  # the batch's owner gets it, not this writer
            batch.problem = exc

    def _joined(self) -> _Batch | None:
        """The batch the last write of this task went into (None: it committed on its own)."""
        batch = self._batch
        if batch is not None and batch.open and batch.owner == _owner():
            return batch
        return None

    def _lost(self) -> StateUnwritable:
        return self._episode(
            f"the transaction of a batch of writes to {self.path} was lost", IO_ERROR, self.path
        )

    def _episode(self, what: str, kind: str, where: object) -> StateUnwritable:
        """The :class:`StateUnwritable` of a write the database did not take, an episode of
        :attr:`writes` opened (or kept open) by it."""
        problem = StateUnwritable(
            f"{what} ({kind}); healer decides nothing until it can write again, and retries by "
            "itself",
            kind=kind,
            path=str(where),
        )
        self.writes.failed(problem)
        return problem

    @contextmanager
    def _mapped(self) -> Iterator[None]:
        """A write the database did not take (a full disk, a read-only database, an I/O error,
        an unreachable server) as :class:`StateUnwritable`; any other error as it is."""
        try:
            yield
        except self._driver_error as exc:
            problem = self._problem(exc)
            if problem is None:
                raise
            raise problem from exc

    # The SQLite side of the seam: a PostgreSQL store overrides these.
    _driver_error: type[Exception] = sqlite3.Error

    def _problem(self, exc: Exception) -> StateUnwritable | None:
        """The :class:`StateUnwritable` ``exc`` means (an episode opened), or None."""
        assert isinstance(exc, sqlite3.Error)
        problem = unwritable(exc, self.path)
        if problem is not None:
            self.writes.failed(problem)
        return problem

    @contextmanager
    def _own_tx(self) -> Iterator[Connection]:
        with self._mapped():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _begin(self) -> None:
        with self._mapped():
            self._db.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        with self._mapped():
            try:
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        # SQLite may already have rolled back (SQLITE_FULL, SQLITE_IOERR): a ROLLBACK then
        # fails and must not hide the error that matters.
        if self._sqlite.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _tx_usable(self) -> bool:
        return self._sqlite.in_transaction

    @contextmanager
    def _nested(self, savepoint: bool) -> Iterator[Connection]:
        """A write inside the open batch transaction."""
        with self._mapped():
            if not savepoint:
                yield self._db
                return
            self._db.execute("SAVEPOINT healer_write")
            try:
                yield self._db
            except BaseException:
                if self._sqlite.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK TO healer_write")
                        self._db.execute("RELEASE healer_write")
                raise
            self._db.execute("RELEASE healer_write")

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._sqlite.executemany(sql, rows)

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
        """Write the node's record and verdict; only what changed since this store last wrote
        (or read) it: nothing when nothing did, the verdict columns when only the verdict did,
        the heartbeat column when only ``last_heartbeat`` did (``updated_at`` is when the
        record or the verdict last changed). The record's JSON is encoded only when it
        changed."""
        key = (obs.cluster, obs.node)
        # Forgotten until written: a write that fails leaves it unknown (written whole next).
        before = self._saved_nodes.pop(key, None)
        columns = _verdict_columns(verdict)
        if before is not None and before.record == _record_of(obs):
            sets: list[str] = []
            args: list[Any] = []
            if before.verdict != columns:
                sets.append("health=?, reason=?, message=?, next_check_at=?, updated_at=?")
                args += [*columns, now]
            if before.heartbeat != obs.last_heartbeat:
                sets.append("last_heartbeat=?")
                args.append(obs.last_heartbeat)
            if not sets:
                self._saved_nodes[key] = before
                return
            with self._tx(savepoint=False) as db:
                found = db.execute(
                    f"UPDATE nodes SET {', '.join(sets)} WHERE cluster=? AND node=?",
                    (*args, *key),
                ).rowcount
            if found:
                self._remember(key, _Saved(before.record, columns, obs.last_heartbeat), before)
                return
            # Removed behind this store's back (a CLI command): written whole below.
        saved = _saved(obs, columns)
        with self._tx(savepoint=False) as db:
            db.execute(
                "INSERT INTO nodes (cluster, node, record, health, reason, message,"
                " next_check_at, updated_at, last_heartbeat) VALUES (?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (cluster, node) DO UPDATE SET record=excluded.record,"
                " health=excluded.health, reason=excluded.reason, message=excluded.message,"
                " next_check_at=excluded.next_check_at, updated_at=excluded.updated_at,"
                " last_heartbeat=excluded.last_heartbeat",
                (*key, _record_json(obs), *columns, now, obs.last_heartbeat),
            )
        self._remember(key, saved, before)

    def save_heartbeats(self, items: Iterable[tuple[str, str, float]]) -> None:
        """Write the ``last_heartbeat`` of nodes whose only change is a newer heartbeat:
        (cluster, node, last_heartbeat) each, one column each, in one transaction (or in the
        open batch). A node with no row is skipped."""
        rows: list[tuple[float, str, str]] = []
        befores: list[_Saved | None] = []
        for cluster, node, at in items:
            before = self._saved_nodes.get((cluster, node))
            if before is None or before.heartbeat != at:
                rows.append((at, cluster, node))
                befores.append(self._saved_nodes.pop((cluster, node), None))
        if not rows:
            return
        with self._tx(savepoint=False):
            self._executemany("UPDATE nodes SET last_heartbeat=? WHERE cluster=? AND node=?", rows)
        for (at, cluster, node), before in zip(rows, befores, strict=True):
            if before is not None:
                self._remember((cluster, node), replace(before, heartbeat=at), before)

    def _remember(self, key: tuple[str, str], saved: _Saved | None, before: _Saved | None) -> None:
        """``saved`` is now what the database holds of ``key`` (None: no row), once the batch
        the write went into commits."""
        batch = self._joined()
        if batch is not None:
            batch.undo.setdefault(key, before)
        if saved is None:
            self._saved_nodes.pop(key, None)
        else:
            self._saved_nodes[key] = saved

    def forget_node(self, cluster: str, node: str) -> None:
        with self._tx(savepoint=False) as db:
            db.execute("DELETE FROM nodes WHERE cluster=? AND node=?", (cluster, node))
        key = (cluster, node)
        self._remember(key, None, self._saved_nodes.get(key))

    def nodes(self, cluster: str | None = None) -> list[NodeRow]:
        """The node records (of ``cluster``, or all), in (cluster, node) order. A record an
        older healer wrote keeps ``last_heartbeat`` in its JSON (its column is NULL)."""
        sql = (
            "SELECT cluster, node, record, health, reason, message, next_check_at, updated_at,"
            " last_heartbeat FROM nodes"
            + (" WHERE cluster=?" if cluster else "")
            + " ORDER BY 1, 2"
        )
        out: list[NodeRow] = []
        for r in self._db.execute(sql, (cluster,) if cluster else ()).fetchall():
            data = json.loads(r["record"])
            if r["last_heartbeat"] is not None:
                data["last_heartbeat"] = r["last_heartbeat"]
            obs = NodeObservation.from_json(data)
            row = NodeRow(
                observation=obs,
                health=Health(r["health"]),
                reason=r["reason"],
                message=r["message"],
                next_check_at=r["next_check_at"],
                updated_at=r["updated_at"],
            )
            if self._batch is None and (
                r["last_heartbeat"] is not None or data.get("last_heartbeat") is None
            ):
                # What the row holds, column by column, committed (a legacy record's heartbeat
                # is in its JSON: the record is written whole, heartbeat column and all, at its
                # next save).
                columns = (r["health"], r["reason"], r["message"], r["next_check_at"])
                self._saved_nodes[(obs.cluster, obs.node)] = _saved(obs, columns)
            out.append(row)
        return out

    def record_event(self, event: NodeEvent) -> None:
        """Keep ``event`` for replay (``healer simulate --history``); trims the oldest rows
        past :data:`NODE_EVENTS_KEPT` now and then."""
        with self._tx(savepoint=False) as db:
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
        """Append a row to the audit log (inside a :meth:`batch`: held if the batch is lost
        to a database that takes no writes, see there)."""
        row = (at, cluster, node, pool, workflow_id, event, reason, message, evidence)
        with self._tx(savepoint=False) as db:  # one INSERT
            db.execute(
                _AUDIT_INSERT,
                (*row[:-1], json.dumps(evidence if evidence is not None else {}, default=str)),
            )
        batch = self._joined()
        if batch is not None:
            batch.audits.append(dict(zip(_AUDIT_COLUMNS, row, strict=True)))

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
        with self._tx(savepoint=False) as db:
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
