"""The lab cloud: a real libcloud ``NodeDriver`` whose machines are rows in one SQLite file.

It lets the daemon, the lab and the tests exercise the same provider code as a real cloud, with
nothing listening anywhere. Build it like any libcloud driver, the key being the database path::

    from providers.registry import libcloud_driver
    driver = libcloud_driver("healer_lab")(key="/var/lib/healer/lab-cloud.sqlite")

or directly as ``LabNodeDriver(key=path)``. Two processes may share the file (the daemon and a test
harness): the database runs in WAL mode with a busy timeout, and every call is one short
transaction on its own connection, so the driver object is also safe to use from several threads.

Destroyed machines stay as ``TERMINATED`` rows, and every create and destroy call is logged, so a
lab run can report afterwards, for instance, how many machines were destroyed twice.

Methods prefixed ``ex_`` are the lab's control panel, not cloud API: they ignore outages, so a
harness can always end one (``ex_set_outage`` fails every call, ``ex_set_create_refusal`` only
creates, ``ex_set_quota`` caps live machines). ``ex_quota_usage`` is the exception: it stands for a
cloud's quota API and fails during an outage like the rest of the API. (``create_node``'s ``ex_subnet_id``/``ex_firewall_ids``/
``ex_public_ip`` are ordinary driver arguments, as on EC2.) Networks, subnets, firewalls and load
balancers live in the same file; :mod:`providers.lab.infra_backend` owns them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from libcloud.common.base import ConnectionKey
from libcloud.common.exceptions import BaseHTTPError
from libcloud.common.types import LibcloudError
from libcloud.compute.base import Node, NodeDriver, NodeImage, NodeLocation, NodeSize
from libcloud.compute.types import NodeState

LAB_DRIVER_NAME = "healer_lab"
DB_FILENAME = "lab-cloud.sqlite"

# (id, name, vcpus, ram MiB, disk GiB). MachineSpec defaults to size "small", image "debian-12".
_SIZES = (
    ("small", "Lab small (2 vCPU, 4 GiB)", 2, 4096, 40),
    ("medium", "Lab medium (4 vCPU, 8 GiB)", 4, 8192, 80),
    ("large", "Lab large (8 vCPU, 16 GiB)", 8, 16384, 160),
)
# Ids differ from names so that resolving "by id or by name" is exercised for real.
_IMAGES = (
    ("lab-img-debian-12", "debian-12"),
    ("lab-img-ubuntu-24.04", "ubuntu-24.04"),
)
_LOCATIONS = (("lab-a", "Lab zone A"), ("lab-b", "Lab zone B"))
_DEFAULT_LOCATION = "lab-a"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    size TEXT NOT NULL,
    image TEXT NOT NULL,
    location TEXT NOT NULL,
    tags TEXT NOT NULL,
    user_data TEXT NOT NULL,
    private_ip TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    destroyed_at REAL,
    reboots INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS nodes_name ON nodes (name);
CREATE TABLE IF NOT EXISTS create_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id TEXT NOT NULL,
    name TEXT NOT NULL,
    tags TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS destroy_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id TEXT NOT NULL,
    name TEXT,
    existed INTEGER NOT NULL,
    repeat INTEGER NOT NULL,
    state_before TEXT,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS infra (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    tags TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    deleted_at REAL
);
CREATE TABLE IF NOT EXISTS node_network (
    node_id TEXT PRIMARY KEY,
    subnet_id TEXT NOT NULL,
    firewall_ids TEXT NOT NULL,
    public_ip TEXT
);
CREATE VIEW IF NOT EXISTS nodes_v AS
    SELECT nodes.*, node_network.subnet_id AS subnet_id,
           node_network.firewall_ids AS firewall_ids, node_network.public_ip AS public_ip
    FROM nodes LEFT JOIN node_network ON node_network.node_id = nodes.id;
"""
# The first host addresses of a lab subnet are reserved, as clouds reserve theirs (the load
# balancer's private address is the first of them).
_RESERVED_HOSTS = 4


class _NoNetworkConnection(ConnectionKey):
    """libcloud gives every driver a connection; the lab's never dials anything."""

    def connect(self, *args: Any, **kwargs: Any) -> None:
        return None


class LabNodeDriver(NodeDriver):
    """libcloud driver for the lab cloud. ``key`` is the SQLite path (created if missing)."""

    type = LAB_DRIVER_NAME
    name = "healer lab cloud"
    website = "https://github.com/healer/healer"
    connectionCls = _NoNetworkConnection
    features: dict[str, list[str]] = {"create_node": []}

    def __init__(
        self,
        key: str | os.PathLike[str],
        secret: str | None = None,
        secure: bool = False,
        host: str | None = None,
        port: int | None = None,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        path = Path(key)
        super().__init__(  # type: ignore[no-untyped-call]
            key=str(path), secret=secret, secure=secure, host=host, port=port, **kwargs
        )
        self.path = path
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._init_db()

    # -- storage ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit, so each stays as short as the call.
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn

    def _init_db(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Private whatever the umask: it holds the machines' user data (keys, tokens). SQLite
        # gives its -wal and -shm files the mode of the database.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        with _as_cloud_errors(self.path):
            conn = self._connect()
            try:
                # WAL lets the other process read while one writes; it is a property of the file.
                conn.execute("PRAGMA journal_mode=WAL")
            finally:
                conn.close()
        with self._tx(write=True, api=False) as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    @contextmanager
    def _tx(self, *, write: bool, api: bool) -> Iterator[sqlite3.Connection]:
        """One transaction. ``api`` calls fail during an outage, as a real cloud's would."""
        with _as_cloud_errors(self.path), self._sqlite_tx(write=write, api=api) as conn:
            yield conn

    @contextmanager
    def _sqlite_tx(self, *, write: bool, api: bool) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            # IMMEDIATE takes the write lock up front, so read-then-write can never deadlock
            # against the other process; reads need no lock at all under WAL.
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                if api:
                    self._check_outage(conn)
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()

    def _ensure_available(self) -> None:
        # Calls that touch no row (sizes, images, locations) still fail during an outage.
        with self._tx(write=False, api=True):
            pass

    def _check_outage(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT value FROM settings WHERE key = 'outage_until'").fetchone()
        if row is None or row["value"] is None:
            return
        remaining = float(row["value"]) - self._clock()
        if remaining > 0:
            raise _http_error(
                503, "lab cloud outage", headers={"retry-after": str(math.ceil(remaining))}
            )

    def _setting(self, conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else row["value"]

    def _check_create_allowed(self, conn: sqlite3.Connection) -> None:
        """Creates alone may be refused: a zone out of capacity (503, temporary, as EC2's
        ``InsufficientInstanceCapacity`` behaves) or a full quota (400, as a quota error is)."""
        refused = self._setting(conn, "create_refused_until")
        if refused is not None:
            remaining = float(refused) - self._clock()
            if remaining > 0:
                raise _http_error(
                    503,
                    "lab cloud: InsufficientCapacity: no capacity for new machines",
                    headers={"retry-after": str(math.ceil(remaining))},
                )
        quota, used = self._quota_usage(conn)
        if quota is not None and used >= quota:
            raise _http_error(400, f"lab cloud: QuotaExceeded: {used} of {quota} machines in use")

    def _quota_usage(self, conn: sqlite3.Connection) -> tuple[int | None, int]:
        # Stopped machines count: their disks and addresses are still held, as on most clouds.
        used = conn.execute(
            "SELECT COUNT(*) FROM nodes WHERE state != ?", (NodeState.TERMINATED.value,)
        ).fetchone()[0]
        quota = self._setting(conn, "quota")
        return (None if quota is None else int(quota)), int(used)

    # -- libcloud API ----------------------------------------------------------------------

    def ex_quota_usage(self) -> dict[str, int | None]:
        """The machine quota and its use, as a cloud's quota API answers (EC2's service quotas,
        GCE's region quotas). Cloud API, so it fails during an outage; ``quota`` is ``None``
        when there is no limit."""
        with self._tx(write=False, api=True) as conn:
            quota, used = self._quota_usage(conn)
        return {"quota": quota, "used": used}

    def list_nodes(self, ex_node_ids: list[str] | None = None) -> list[Node]:
        """Every machine ever created, terminated ones included (as EC2 lists them)."""
        with self._tx(write=False, api=True) as conn:
            if ex_node_ids is None:
                rows = conn.execute("SELECT * FROM nodes_v ORDER BY seq").fetchall()
            else:
                marks = ",".join("?" * len(ex_node_ids))
                rows = conn.execute(
                    f"SELECT * FROM nodes_v WHERE id IN ({marks}) ORDER BY seq", list(ex_node_ids)
                ).fetchall()
        return [self._to_node(row) for row in rows]

    def list_sizes(self, location: NodeLocation | None = None) -> list[NodeSize]:
        self._ensure_available()
        return [
            NodeSize(
                id=size_id,
                name=name,
                ram=ram,
                disk=disk,
                bandwidth=None,
                price=0.0,
                driver=self,
                extra={"vcpus": vcpus},
            )
            for size_id, name, vcpus, ram, disk in _SIZES
        ]

    def list_images(self, location: NodeLocation | None = None) -> list[NodeImage]:
        self._ensure_available()
        return [NodeImage(id=i, name=n, driver=self, extra={}) for i, n in _IMAGES]

    def list_locations(self) -> list[NodeLocation]:
        self._ensure_available()
        return [NodeLocation(id=i, name=n, country="lab", driver=self) for i, n in _LOCATIONS]

    def create_node(
        self,
        name: str,
        size: NodeSize,
        image: NodeImage,
        location: NodeLocation | None = None,
        auth: Any = None,
        ex_tags: Mapping[str, str] | None = None,
        ex_userdata: str | None = None,
        ex_subnet_id: str | None = None,
        ex_firewall_ids: list[str] | None = None,
        ex_public_ip: bool = False,
    ) -> Node:
        """Create a running machine. Names need not be unique, as on EC2.

        With ``ex_subnet_id`` the machine gets the next address of that subnet (and a public
        address too with ``ex_public_ip``) and is governed by ``ex_firewall_ids``; without, a
        private address of the lab's flat network.
        """
        # Validated like a cloud would: a 400 the caller cannot fix by retrying.
        if not name:
            raise _http_error(400, "lab cloud: a machine needs a name")
        if size.id not in {s[0] for s in _SIZES}:
            raise _http_error(400, f"lab cloud: unknown size {size.id!r}")
        if image.id not in {i[0] for i in _IMAGES}:
            raise _http_error(400, f"lab cloud: unknown image {image.id!r}")
        location_id = location.id if location is not None else _DEFAULT_LOCATION
        if location_id not in {loc[0] for loc in _LOCATIONS}:
            raise _http_error(400, f"lab cloud: unknown location {location_id!r}")
        tags = {str(k): str(v) for k, v in (ex_tags or {}).items()}
        now = self._clock()
        with self._tx(write=True, api=True) as conn:
            self._check_create_allowed(conn)
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM nodes").fetchone()[0]
            node_id = f"lab-{seq:05d}"
            conn.execute(
                "INSERT INTO nodes (seq, id, name, state, size, image, location, tags, user_data,"
                " private_ip, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    seq,
                    node_id,
                    name,
                    NodeState.RUNNING.value,
                    size.id,
                    image.id,
                    location_id,
                    json.dumps(tags, sort_keys=True),
                    ex_userdata or "",
                    _private_ip(seq),
                    now,
                    now,
                ),
            )
            if ex_subnet_id is not None:
                address = self._place(conn, node_id, ex_subnet_id, ex_firewall_ids or [])
                public = _public_ip(seq) if ex_public_ip else None
                conn.execute("UPDATE nodes SET private_ip = ? WHERE id = ?", (address, node_id))
                conn.execute(
                    "INSERT INTO node_network (node_id, subnet_id, firewall_ids, public_ip)"
                    " VALUES (?,?,?,?)",
                    (node_id, ex_subnet_id, json.dumps(sorted(ex_firewall_ids or [])), public),
                )
            conn.execute(
                "INSERT INTO create_log (node_id, name, tags, at) VALUES (?,?,?,?)",
                (node_id, name, json.dumps(tags, sort_keys=True), now),
            )
            row = conn.execute("SELECT * FROM nodes_v WHERE id = ?", (node_id,)).fetchone()
        return self._to_node(row)

    def _place(
        self, conn: sqlite3.Connection, node_id: str, subnet_id: str, firewall_ids: list[str]
    ) -> str:
        """The machine's address in ``subnet_id``; a 400 when the subnet or a firewall is not
        a live lab resource, or when the subnet is full."""
        subnet = conn.execute(
            "SELECT spec FROM infra WHERE id = ? AND kind = 'subnet' AND deleted_at IS NULL",
            (subnet_id,),
        ).fetchone()
        if subnet is None:
            raise _http_error(400, f"lab cloud: no subnet {subnet_id!r}")
        spec = json.loads(subnet["spec"])
        for fw in firewall_ids:
            found = conn.execute(
                "SELECT spec FROM infra WHERE id = ? AND kind = 'firewall' AND deleted_at IS NULL",
                (fw,),
            ).fetchone()
            if found is None or json.loads(found["spec"])["network_id"] != spec["network_id"]:
                raise _http_error(400, f"lab cloud: no firewall {fw!r} in the subnet's network")
        used = conn.execute(
            "SELECT COUNT(*) FROM node_network WHERE subnet_id = ?", (subnet_id,)
        ).fetchone()[0]
        hosts = ipaddress.ip_network(spec["cidr"]).hosts()
        address = next(itertools.islice(hosts, _RESERVED_HOSTS + used, None), None)
        if address is None:
            raise _http_error(400, f"lab cloud: subnet {subnet_id} ({spec['cidr']}) is full")
        return str(address)

    def api_transaction(
        self, *, write: bool
    ) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One transaction of cloud API (fails during an outage), for :mod:`providers.lab.infra_backend`."""
        return self._tx(write=write, api=True)

    def destroy_node(self, node: Node) -> bool:
        """Terminate ``node``; ``False`` when it was unknown or already terminated.

        Every call is logged, including those that found nothing to destroy.
        """
        now = self._clock()
        node_id = str(node.id)
        with self._tx(write=True, api=True) as conn:
            row = conn.execute("SELECT * FROM nodes WHERE id = ?", (node_id,)).fetchone()
            before = None if row is None else row["state"]
            existed = before is not None and before != NodeState.TERMINATED.value
            seen = conn.execute("SELECT 1 FROM destroy_log WHERE node_id = ?", (node_id,))
            repeat = seen.fetchone() is not None
            conn.execute(
                "INSERT INTO destroy_log (node_id, name, existed, repeat, state_before, at)"
                " VALUES (?,?,?,?,?,?)",
                (node_id, row["name"] if row else node.name, existed, repeat, before, now),
            )
            if existed:
                conn.execute(
                    "UPDATE nodes SET state = ?, destroyed_at = ?, updated_at = ? WHERE id = ?",
                    (NodeState.TERMINATED.value, now, now, node_id),
                )
        return existed

    def reboot_node(self, node: Node) -> bool:
        """Power-cycle ``node`` back to RUNNING (from a crash too); ``False`` if terminated."""
        return self._power(str(node.id), NodeState.RUNNING, reboot=True)

    def start_node(self, node: Node) -> bool:
        return self._power(str(node.id), NodeState.RUNNING, reboot=False)

    def stop_node(self, node: Node) -> bool:
        return self._power(str(node.id), NodeState.STOPPED, reboot=False)

    def _power(self, node_id: str, state: NodeState, *, reboot: bool) -> bool:
        now = self._clock()
        with self._tx(write=True, api=True) as conn:
            cur = conn.execute(
                "UPDATE nodes SET state = ?, updated_at = ?, reboots = reboots + ?"
                " WHERE id = ? AND state != ?",
                (state.value, now, int(reboot), node_id, NodeState.TERMINATED.value),
            )
            return cur.rowcount == 1

    # -- lab control panel (not libcloud API; never subject to an outage) -------------------

    def ex_list_machines(self) -> list[dict[str, Any]]:
        """Every machine row, terminated ones included, as plain dicts (oldest first).

        ``state`` is the libcloud ``NodeState`` value (``"running"``, ``"terminated"``, ...).
        """
        with self._tx(write=False, api=False) as conn:
            rows = conn.execute("SELECT * FROM nodes_v ORDER BY seq").fetchall()
        return [
            {
                "id": r["id"],
                "name": r["name"],
                "state": r["state"],
                "tags": json.loads(r["tags"]),
                "user_data": r["user_data"],
                "private_ip": r["private_ip"],
                "size": r["size"],
                "image": r["image"],
                "location": r["location"],
                "created_at": r["created_at"],
                "updated_at": r["updated_at"],
                "destroyed_at": r["destroyed_at"],
                "reboots": r["reboots"],
                "subnet_id": r["subnet_id"],
                "firewall_ids": json.loads(r["firewall_ids"] or "[]"),
                "public_ip": r["public_ip"],
            }
            for r in rows
        ]

    def ex_get_node(self, node_id: str) -> Node | None:
        with self._tx(write=False, api=False) as conn:
            row = conn.execute("SELECT * FROM nodes_v WHERE id = ?", (node_id,)).fetchone()
        return None if row is None else self._to_node(row)

    def ex_set_state(self, node_id: str, state: NodeState | str) -> None:
        """Force a machine's state: power it off, "crash" it (ERROR), bring it back.

        ``state`` is a ``NodeState`` or its value (``"stopped"``), so the lab's harness can
        drive the cloud without importing libcloud."""
        with self._tx(write=True, api=False) as conn:
            cur = conn.execute(
                "UPDATE nodes SET state = ?, updated_at = ? WHERE id = ?",
                (NodeState(state).value, self._clock(), node_id),
            )
            if cur.rowcount != 1:
                raise KeyError(f"lab cloud {self.path}: no machine with id {node_id!r}")

    def ex_set_tags(self, node_id: str, tags: Mapping[str, str]) -> None:
        """Replace a machine's tags, as an operator editing them by hand would."""
        with self._tx(write=True, api=False) as conn:
            cur = conn.execute(
                "UPDATE nodes SET tags = ?, updated_at = ? WHERE id = ?",
                (json.dumps(dict(tags), sort_keys=True), self._clock(), node_id),
            )
            if cur.rowcount != 1:
                raise KeyError(f"lab cloud {self.path}: no machine with id {node_id!r}")

    def ex_set_outage(self, until_epoch: float | None) -> None:
        """Fail every API call with HTTP 503 until ``until_epoch`` (``None`` ends the outage)."""
        with self._tx(write=True, api=False) as conn:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES ('outage_until', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (None if until_epoch is None else repr(float(until_epoch)),),
            )

    def ex_set_create_refusal(self, until_epoch: float | None) -> None:
        """Refuse ``create_node`` alone (HTTP 503, insufficient capacity) until ``until_epoch``;
        every other call works. ``None`` ends it."""
        self._set_setting(
            "create_refused_until", None if until_epoch is None else float(until_epoch)
        )

    def ex_set_quota(self, machines: int | None) -> None:
        """Limit live (non-terminated) machines to ``machines``; ``None`` lifts the limit."""
        self._set_setting("quota", None if machines is None else int(machines))

    def _set_setting(self, key: str, value: float | int | None) -> None:
        with self._tx(write=True, api=False) as conn:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, None if value is None else repr(value)),
            )

    def ex_outage_until(self) -> float | None:
        with self._tx(write=False, api=False) as conn:
            row = conn.execute("SELECT value FROM settings WHERE key = 'outage_until'").fetchone()
        return None if row is None or row["value"] is None else float(row["value"])

    def ex_destroy_log(self) -> list[dict[str, Any]]:
        """Every ``destroy_node`` call, oldest first.

        ``existed``: a live machine was destroyed; ``repeat``: the id had been destroyed before.
        """
        with self._tx(write=False, api=False) as conn:
            rows = conn.execute("SELECT * FROM destroy_log ORDER BY seq").fetchall()
        return [
            {
                "node_id": r["node_id"],
                "name": r["name"],
                "existed": bool(r["existed"]),
                "repeat": bool(r["repeat"]),
                "state_before": r["state_before"],
                "at": r["at"],
            }
            for r in rows
        ]

    def ex_created_log(self) -> list[dict[str, Any]]:
        """Every successful ``create_node`` call, oldest first."""
        with self._tx(write=False, api=False) as conn:
            rows = conn.execute("SELECT * FROM create_log ORDER BY seq").fetchall()
        return [
            {
                "node_id": r["node_id"],
                "name": r["name"],
                "tags": json.loads(r["tags"]),
                "at": r["at"],
            }
            for r in rows
        ]

    # -- helpers ---------------------------------------------------------------------------

    def _to_node(self, row: sqlite3.Row) -> Node:
        return Node(
            id=row["id"],
            name=row["name"],
            state=NodeState(row["state"]),
            public_ips=[row["public_ip"]] if row["public_ip"] else [],
            private_ips=[row["private_ip"]],
            driver=self,
            created_at=datetime.fromtimestamp(row["created_at"], tz=UTC),
            extra={
                "tags": json.loads(row["tags"]),
                "user_data": row["user_data"],
                "size": row["size"],
                "image": row["image"],
                "location": row["location"],
                "reboots": row["reboots"],
                "updated_at": row["updated_at"],
                "destroyed_at": row["destroyed_at"],
                "subnet_id": row["subnet_id"],
                "firewall_ids": json.loads(row["firewall_ids"] or "[]"),
            },
        )


@contextmanager
def _as_cloud_errors(path: Path) -> Iterator[None]:
    """SQLite's failures as the errors a libcloud driver raises, so the provider needs no
    knowledge of the lab: a busy or locked database (the other process holds the write lock past
    the busy timeout) answers HTTP 503, worth retrying; any other database error is a
    ``LibcloudError``."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise _http_error(503, f"lab cloud database busy (temporary): {exc}") from exc
    except sqlite3.Error as exc:
        raise LibcloudError(f"lab cloud database {path}: {exc}") from exc


def _http_error(code: int, message: str, headers: dict[str, str] | None = None) -> BaseHTTPError:
    # What libcloud's HTTP drivers raise for an error status, so callers see no difference.
    return BaseHTTPError(code, message, headers=headers)  # type: ignore[no-untyped-call]


def _public_ip(seq: int) -> str:
    # 198.18.0.0/15 is reserved for benchmarking: never a real host.
    return f"198.{18 + ((seq >> 16) & 1)}.{(seq >> 8) & 0xFF}.{seq & 0xFF}"


def _private_ip(seq: int) -> str:
    # A label only (nothing listens), unique for the life of the database.
    return f"10.{(seq >> 16) & 0xFF}.{(seq >> 8) & 0xFF}.{seq & 0xFF}"
