"""The PostgreSQL backend of the state store: one database shared by every replica
(``state: {url: postgresql://...}``, docs/state-backends.md). The only importer of psycopg.

The queries are the store's own (:class:`healer.store.sqlite.Store`); this module supplies the
connection seam: connect, translate the ``?`` placeholders, run a transaction, bring the schema
up (the same migrations as SQLite, healer.store.schema), and read the server's clock.

The connection is synchronous, as SQLite's is, and used from the event loop like it: every
statement is short (a primary-key read or write) and bounded by a statement timeout, so the
loop waits for one round trip to a database on the same LAN, not for a slow query
(docs/state-backends.md, "Why a synchronous driver").
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import structlog
from psycopg import errors as pg_errors
from psycopg import pq

from healer.errors import StateError, StateUnwritable
from healer.store import schema
from healer.store.sqlite import (
    EMPTY_DATABASE,
    SCHEMA_VERSION,
    Connection,
    Cursor,
    FirstStart,
    Store,
)
from healer.store.writable import DISK_FULL, IO_ERROR, READ_ONLY, WriteHealth

log = structlog.get_logger("healer.store")

# Every statement is a short keyed read or write; one that takes longer than this is a database
# in trouble, and the loop must not wait on it.
STATEMENT_TIMEOUT_MS = 5000
CONNECT_TIMEOUT_S = 5
# The advisory lock that serialises schema migration between replicas starting together.
_MIGRATION_LOCK = 0x6865616C  # "heal"
_PLACEHOLDER = re.compile(r"\?")
_IN_TX = (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR)


@functools.lru_cache(maxsize=512)
def _translate(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s`` (the store's SQL has no ``?`` or ``%`` in literals)."""
    return _PLACEHOLDER.sub("%s", sql.replace("%", "%%"))


class Row(tuple[Any, ...]):
    """A result row readable by index and by column name, as ``sqlite3.Row`` is."""

    _index: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: psycopg.Cursor[Any]) -> Any:
    index = {col.name: i for i, col in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> Row:
        row = Row(values)
        row._index = index
        return row

    return make


def redacted(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class _PgConnection:
    """:class:`~healer.store.sqlite.Connection` over one psycopg connection (autocommit: a
    read is its own statement; writes run in :meth:`PostgresStore._tx`). A connection found
    closed (the server restarted, the network dropped it) is opened again at the next use."""

    def __init__(
        self,
        url: str,
        password: str | None,
        unreachable: Callable[[psycopg.Error], StateUnwritable | None],
    ) -> None:
        self._url = url
        self._password = password
        self._conn: psycopg.Connection[Any] | None = None
        # What a failed read outside a transaction raises (a transaction's own handler maps
        # its errors): the store's StateUnwritable, so a read of a database that went away
        # freezes decisions like a failed write instead of crashing the caller.
        self._unreachable = unreachable
        self.in_transaction = False

    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            kwargs: dict[str, Any] = {
                "autocommit": True,
                "connect_timeout": CONNECT_TIMEOUT_S,
                "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                "application_name": "healer",
            }
            if self._password is not None:
                kwargs["password"] = self._password
            self._conn = psycopg.connect(self._url, row_factory=_row_factory, **kwargs)
        return self._conn

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        try:
            return self.connection().execute(_translate(sql), parameters or None)
        except psycopg.Error as exc:
            problem = None if self.in_transaction else self._unreachable(exc)
            if problem is None:
                raise
            raise problem from exc

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.connection().cursor() as cur:
            cur.executemany(_translate(sql), rows)

    def in_open_transaction(self) -> bool:
        """Whether the connection is inside a transaction that can still commit (not broken,
        not reopened since, no failed statement in it)."""
        conn = self._conn
        return (
            conn is not None
            and not conn.closed
            and conn.info.transaction_status == pq.TransactionStatus.INTRANS
        )

    def rollback(self) -> None:
        conn = self._conn
        if conn is not None and not conn.closed and conn.info.transaction_status in _IN_TX:
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def discard_if_broken(self) -> None:
        """Close a connection the server or the network broke: the next use opens a new one."""
        if self._conn is not None and self._conn.broken:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()


# What a failed write means, by SQLSTATE class (healer.store.writable): the daemon freezes its
# decisions and retries, as for a full disk.
_UNWRITABLE: tuple[tuple[type[Exception], str], ...] = (
    (pg_errors.DiskFull, DISK_FULL),
    (pg_errors.ReadOnlySqlTransaction, READ_ONLY),
    (psycopg.OperationalError, IO_ERROR),  # the server is unreachable, restarting, too slow
)


class PostgresStore(Store):
    """The state store in a PostgreSQL database (see the module docstring)."""

    dialect = schema.POSTGRES

    def __init__(self, url: str, *, password: str | None = None, state_dir: Path) -> None:
        self.url = url
        # Where the CLI and the messages look for the state directory (timeline, lock): the
        # database itself is named by :attr:`url`.
        self.path = state_dir / "healer.postgresql"
        self.writes = WriteHealth()
        self._saved_nodes = {}
        self._pg = _PgConnection(url, password, self._unwritable)
        self._db: Connection = self._pg
        try:
            self._upgrade_schema()
        except psycopg.Error as exc:
            self._pg.close()
            raise StateError(
                f"state database {redacted(url)}: cannot use it ({exc}); check state.url, the "
                "password and that the server is up and takes connections from this host. "
                "healer did not start"
            ) from exc

    @classmethod
    def connect(cls, url: str, *, password: str | None, state_dir: Path) -> PostgresStore:
        return cls(url, password=password, state_dir=state_dir)

    def _upgrade_schema(self) -> None:
        """Bring the schema up (or refuse a newer one), under an advisory lock so replicas that
        start together migrate one after the other."""
        conn = self._pg.connection()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            has_meta = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
            found = (
                conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if has_meta is not None and has_meta[0]
                else None
            )
            if found is not None and int(found["value"]) > SCHEMA_VERSION:
                raise StateError(
                    f"{redacted(self.url)}: state schema {found['value']} is newer than this "
                    f"healer understands ({SCHEMA_VERSION}); upgrade healer. healer did not start"
                )
            conn.execute(schema.script(schema.POSTGRES))
            conn.execute(
                "INSERT INTO meta VALUES ('schema', %s) ON CONFLICT (key) DO UPDATE"
                " SET value=excluded.value",
                (str(SCHEMA_VERSION),),
            )
        if found is None:
            self.first_start = FirstStart(
                reason=EMPTY_DATABASE,
                detail=f"the PostgreSQL database {redacted(self.url)} holds no healer state",
            )
        elif int(found["value"]) < SCHEMA_VERSION:
            log.info("state.schema_upgraded", url=redacted(self.url), was=int(found["value"]))

    def close(self) -> None:
        self._pg.close()

    def db_now(self) -> float:
        row = self._db.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        return float(row[0])

    # The PostgreSQL side of the transaction seam (Store._tx, Store.batch). A database that
    # cannot be reached, is read-only (a standby) or full raises StateUnwritable (and opens an
    # episode of :attr:`writes`); any other error goes up as it is.
    _driver_error = psycopg.Error

    def _problem(self, exc: Exception) -> StateUnwritable | None:
        assert isinstance(exc, psycopg.Error)
        return self._unwritable(exc)

    @contextmanager
    def _own_tx(self) -> Iterator[Connection]:
        with self._mapped():
            conn = self._pg.connection()
            with conn.transaction(), self._statements():
                yield self._db

    @contextmanager
    def _statements(self) -> Iterator[None]:
        """Statements whose errors the transaction's handler maps (not the reading path)."""
        self._pg.in_transaction = True
        try:
            yield
        finally:
            self._pg.in_transaction = False

    def _begin(self) -> None:
        with self._mapped():
            self._pg.connection().execute("BEGIN")

    def _commit(self) -> None:
        with self._mapped():
            if not self._pg.in_open_transaction():
                # COMMIT on a connection opened again (or a failed transaction) would say
                # nothing and keep nothing.
                self._pg.rollback()
                raise psycopg.OperationalError("the transaction of a batch of writes was lost")
            try:
                self._pg.connection().execute("COMMIT")
            except BaseException:
                self._pg.rollback()
                raise

    def _rollback(self) -> None:
        self._pg.rollback()

    def _tx_usable(self) -> bool:
        return self._pg.in_open_transaction()

    @contextmanager
    def _nested(self, savepoint: bool) -> Iterator[Connection]:
        with self._mapped():
            conn = self._pg.connection()
            if not savepoint:
                with self._statements():
                    yield self._db
                return
            with conn.transaction(), self._statements():  # a savepoint inside the batch's
                yield self._db

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._pg.executemany(sql, rows)

    def _lost(self) -> StateUnwritable:
        problem = self._unwritable(
            psycopg.OperationalError("the transaction of a batch of writes was lost")
        )
        assert problem is not None
        return problem

    def _unwritable(self, exc: psycopg.Error) -> StateUnwritable | None:
        """The :class:`StateUnwritable` a failed statement means (an episode of :attr:`writes`
        opened), or None for any other error (a constraint, a bug: those go up as they are)."""
        kind = next((k for cls, k in _UNWRITABLE if isinstance(exc, cls)), None)
        if kind is None:
            return None
        where = redacted(self.url)
        problem = self._episode(f"cannot use the state database {where}: {exc}", kind, where)
        self._pg.discard_if_broken()
        return problem
