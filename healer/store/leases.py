"""The lease table in SQL: each cluster's lease (holder, epoch, expiry), each replica's heartbeat,
and the fence that lets a replica act for a cluster only while the lease's epoch is still its own.

The decisions (what to claim, renew, release) are pure, in :mod:`healer.planner.ownership`; this
module only reads the rows and writes them with a compare-and-set on the epoch, so two replicas
claiming the same lease at once cannot both win. The SQL is the same on both backends (``?``
placeholders; a backend converts them), except ``FOR UPDATE``: on PostgreSQL the fence's check
locks the lease row until the guarded work is done, so a replica taking the lease over waits for
that work to end and can never act beside it (check-and-hold). SQLite has one daemon (the state
directory's lock), which owns every cluster and fences nothing (:class:`OwnEverything`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from healer.errors import HealerError
from healer.store.schema import POSTGRES
from healer.store.sqlite import Connection, Store
from healer.telemetry.lazylog import get_logger

log = get_logger(__name__)  # structlog, imported when it first logs

Dialect = str  # healer.store.schema: SQLITE or POSTGRES

# How long PostgreSQL lets a session sit stopped inside a fenced commit (a SIGSTOP between the
# check and the commit) before it ends the session, freeing the lease row for a takeover.
STALLED_TX_TIMEOUT = "3s"


@dataclass(frozen=True, slots=True)
class Lease:
    """One cluster's lease row. ``holder`` is empty for a lease released by its holder."""

    cluster: str
    holder: str
    epoch: int
    expires_at: float

    def live(self, now: float) -> bool:
        return bool(self.holder) and self.expires_at > now


class Tx(Protocol):
    """One open transaction of the state database."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run ``sql`` (``?`` placeholders); the number of rows it changed."""
        ...

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query (``?`` placeholders); its rows."""
        ...


class LeaseDB(Protocol):
    """What the lease table needs of a backend: transactions and which SQL dialect it speaks."""

    dialect: Dialect

    def transaction(self) -> AbstractContextManager[Tx]:
        """A transaction committed when the block ends, rolled back when it raises."""
        ...


class Fenced(HealerError):
    """This replica no longer holds ``cluster``'s lease at ``epoch``: it must not act for it."""

    def __init__(self, *, cluster: str, holder: str, epoch: int | None, what: str) -> None:
        self.cluster = cluster
        self.holder = holder
        self.epoch = epoch
        self.what = what
        super().__init__(
            f"{holder} no longer owns cluster {cluster} (epoch {epoch}): {what} not done; "
            "another replica holds the lease"
        )


@dataclass(frozen=True, slots=True)
class Token:
    """What the fence checks: ``holder`` still holds ``cluster`` at ``epoch``."""

    cluster: str
    holder: str
    epoch: int


class Fence(Protocol):
    """Whether this daemon owns a cluster, and the guard of a provider call for it."""

    def owns(self, cluster: str) -> bool: ...

    def guard(self, cluster: str, *, what: str) -> AbstractContextManager[None]:
        """Enter only while ``cluster`` is still ours: raises :class:`Fenced` otherwise."""
        ...


class OwnEverything:
    """The fence of one daemon (SQLite, or ``--replicas`` off): every cluster is its own."""

    def owns(self, cluster: str) -> bool:
        return True

    @contextmanager
    def guard(self, cluster: str, *, what: str) -> Iterator[None]:
        yield


class LeaseTable:
    """The rows of ``cluster_lease`` and ``replica_heartbeat``, written with compare-and-set."""

    def __init__(self, db: LeaseDB) -> None:
        self._db = db

    def leases(self) -> list[Lease]:
        with self._db.transaction() as tx:
            rows = tx.fetch("SELECT cluster, holder, epoch, expires_at FROM cluster_lease")
        return [Lease(cluster=r[0], holder=r[1], epoch=int(r[2]), expires_at=r[3]) for r in rows]

    def heartbeats(self) -> dict[str, float]:
        with self._db.transaction() as tx:
            rows = tx.fetch("SELECT replica, expires_at FROM replica_heartbeat")
        return {r[0]: float(r[1]) for r in rows}

    def heartbeat(self, replica: str, *, until: float) -> None:
        with self._db.transaction() as tx:
            tx.execute(
                "INSERT INTO replica_heartbeat (replica, expires_at) VALUES (?, ?)"
                " ON CONFLICT (replica) DO UPDATE SET expires_at = excluded.expires_at",
                (replica, until),
            )

    def claim(
        self, cluster: str, *, holder: str, expected_epoch: int | None, now: float, until: float
    ) -> int | None:
        """Take ``cluster``'s lease if its epoch is still ``expected_epoch`` and it is free (no
        row, released, expired, or ``holder``'s own from a previous run): the new epoch, or None
        when another replica changed the row first."""
        with self._db.transaction() as tx:
            if expected_epoch is None:
                won = tx.execute(
                    "INSERT INTO cluster_lease (cluster, holder, epoch, expires_at)"
                    " VALUES (?, ?, 1, ?) ON CONFLICT (cluster) DO NOTHING",
                    (cluster, holder, until),
                )
                return 1 if won == 1 else None
            won = tx.execute(
                "UPDATE cluster_lease SET holder = ?, epoch = epoch + 1, expires_at = ?"
                " WHERE cluster = ? AND epoch = ?"
                " AND (holder = '' OR holder = ? OR expires_at <= ?)",
                (holder, until, cluster, expected_epoch, holder, now),
            )
            return expected_epoch + 1 if won == 1 else None

    def renew(self, token: Token, *, now: float, until: float) -> bool:
        """Extend a lease still held at its epoch and not yet expired; False: it is lost."""
        with self._db.transaction() as tx:
            return (
                tx.execute(
                    "UPDATE cluster_lease SET expires_at = ?"
                    " WHERE cluster = ? AND holder = ? AND epoch = ? AND expires_at > ?",
                    (until, token.cluster, token.holder, token.epoch, now),
                )
                == 1
            )

    def release(self, token: Token, *, now: float) -> bool:
        """Let go of a lease (the holder emptied, expired now; the epoch stays, so the next
        claim bumps it)."""
        with self._db.transaction() as tx:
            return (
                tx.execute(
                    "UPDATE cluster_lease SET holder = '', expires_at = ?"
                    " WHERE cluster = ? AND holder = ? AND epoch = ?",
                    (now, token.cluster, token.holder, token.epoch),
                )
                == 1
            )

    def current(self, tx: Tx, token: Token, *, now: float) -> float | None:
        """In the caller's transaction ``tx``: when ``token``'s lease expires if it is still
        the current, unexpired lease, else None. On PostgreSQL the row is share-locked until
        ``tx`` ends, so a takeover (an UPDATE) waits for the guarded commit; a session stopped
        in between (SIGSTOP) is ended by the server after :data:`STALLED_TX_TIMEOUT`, which
        frees the row again."""
        lock = ""
        if self._db.dialect == POSTGRES:
            tx.execute(f"SET LOCAL idle_in_transaction_session_timeout = '{STALLED_TX_TIMEOUT}'")
            lock = " FOR SHARE"
        rows = tx.fetch(
            "SELECT expires_at FROM cluster_lease WHERE cluster = ? AND holder = ? AND epoch = ?"
            f" AND expires_at > ?{lock}",
            (token.cluster, token.holder, token.epoch, now),
        )
        return float(rows[0][0]) if rows else None

    def transaction(self) -> AbstractContextManager[Tx]:
        return self._db.transaction()


class LeaseFence:
    """The fence of a replica: the clusters it holds and at which epoch (kept up to date by the
    ownership job, :mod:`healer.jobs.ownership`), checked against the table before each act.

    A step commit is checked inside its own transaction (:meth:`check`, the store's fence
    hook). A provider call cannot be part of a transaction: :meth:`guard` checks the lease and
    lets the call start only while, by this process's own monotonic clock, at least ``margin``
    seconds of the lease are left. A process stopped (SIGSTOP) or cut off after the check finds
    on waking that its time ran out and refuses, and another replica takes the lease over only
    after it expired, so the two never act together (a call still running ``margin`` seconds
    after it started is the one overlap this allows).
    """

    def __init__(
        self,
        table: LeaseTable,
        *,
        me: str,
        now: Callable[[], float],
        timeline: Callable[[], float],
        margin: float,
    ) -> None:
        self._table = table
        self.me = me
        self._now = now  # the database's wall clock, for the expiry in the rows
        self._timeline = timeline  # this process's monotonic clock, for the call budget
        self._margin = margin
        self.held: dict[str, int] = {}  # cluster -> the epoch this replica won it at

    def owns(self, cluster: str) -> bool:
        return cluster in self.held

    def check(self, tx: Tx, cluster: str, *, what: str) -> float:
        """Inside ``tx``: raise :class:`Fenced` unless ``cluster``'s lease is still ours; the
        lease's expiry (database wall clock) when it is."""
        epoch = self.held.get(cluster)
        expires = (
            None
            if epoch is None
            else self._table.current(
                tx, Token(cluster=cluster, holder=self.me, epoch=epoch), now=self._now()
            )
        )
        if expires is None:
            raise self._fenced(cluster, epoch, what)
        return expires

    def store_check(self, db: Connection, cluster: str) -> None:
        """The store's fence hook (:meth:`healer.store.sqlite.Store.set_fence`): every step
        commit of ``cluster`` checks, in its own transaction, that the lease is still ours."""
        self.check(CursorTx(db), cluster, what="step commit")

    @contextmanager
    def guard(self, cluster: str, *, what: str) -> Iterator[None]:
        started = self._timeline()
        with self._table.transaction() as tx:
            left = self.check(tx, cluster, what=what) - self._now()
        if self._timeline() - started > left - self._margin:
            raise self._fenced(cluster, self.held.get(cluster), what)
        yield

    def _fenced(self, cluster: str, epoch: int | None, what: str) -> Fenced:
        exc = Fenced(cluster=cluster, holder=self.me, epoch=epoch, what=what)
        say_fenced(cluster=cluster, replica=self.me, epoch=epoch, refused=what, message=str(exc))
        return exc


def say_fenced(
    *, cluster: str, replica: str, epoch: int | None, refused: str, message: str
) -> None:
    """The one log line of a replica that may no longer act for ``cluster``: a refused act,
    or the ownership job finding the lease lost (whichever notices first)."""
    log.warning(
        "ownership.fenced",
        cluster=cluster,
        replica=replica,
        epoch=epoch,
        refused=refused,
        message=message,
    )


def owners_report(store: Store, clusters: Iterable[str]) -> list[dict[str, Any]] | None:
    """Each cluster's owner for ``healer status``: the holder of its live lease (None: no
    owner now, e.g. between a replica's death and the takeover), its epoch and the seconds
    left; None on SQLite, where the one daemon owns every cluster."""
    if store.dialect != POSTGRES:
        return None
    now = store.db_now()
    leases = {lease.cluster: lease for lease in LeaseTable(StoreLeaseDB(store)).leases()}
    rows: list[dict[str, Any]] = []
    for name in sorted(set(clusters) | set(leases)):
        lease = leases.get(name)
        rows.append(
            {
                "cluster": name,
                "owner": lease.holder if lease is not None and lease.live(now) else None,
                "epoch": lease.epoch if lease is not None else None,
                "expires_in": round(lease.expires_at - now, 1) if lease is not None else None,
            }
        )
    return rows


class StoreLeaseDB:
    """The lease table in the state store's own database (either backend)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.dialect: Dialect = store.dialect

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._store.transaction() as db:
            yield CursorTx(db)


class CursorTx:
    """A :class:`Tx` over the store's connection seam (:class:`healer.store.sqlite.Connection`)."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._db.execute(sql, tuple(params)).rowcount

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._db.execute(sql, tuple(params)).fetchall()]
