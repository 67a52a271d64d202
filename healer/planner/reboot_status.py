"""The reboots of each cluster as ``healer status`` shows them: grants, reboots in progress and
the nodes that wait, each with every blocker of its last refusal.

Read from the audit log, where the reboot arbiter (:mod:`healer.planner.reboots`) writes every
grant, its steps and its release, and a refusal once per change of its set of blockers
(``evidence.blockers``): so the CLI shows them without asking the daemon, and a stopped daemon's
last state stays readable. A node *waits* when its last reboot event is a refusal newer than
``WAITING_HORIZON`` (an agent that stopped asking for that long no longer needs a reboot, or
asks nobody). A grant is shown until it is released, or, outside a reboot workflow, until it
expires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from healer.store.sqlite import AuditEntry, Store

WAITING_HORIZON: Final = 24 * 3600.0
_GRANT_EVENTS: Final = (
    "reboot.granted",
    "reboot.handed",
    "reboot.started",
    "reboot.booted",
    "reboot.released",
)


@dataclass(frozen=True)
class GrantRow:
    cluster: str
    node: str
    pool: str | None
    state: str  # draining, granted, rebooting, booted
    granted_at: float
    expires_at: float
    started_at: float | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class WaitingRow:
    cluster: str
    node: str
    pool: str | None
    since: float  # when this set of blockers was first given
    reason: str  # the headline
    blockers: tuple[tuple[str, str], ...]  # (reason, message), every active one

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "node": self.node,
            "pool": self.pool,
            "since": self.since,
            "reason": self.reason,
            "blockers": [{"reason": r, "message": m} for r, m in self.blockers],
        }


@dataclass(frozen=True)
class RebootView:
    grants: tuple[GrantRow, ...]
    waiting: tuple[WaitingRow, ...]


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _grant(entry: AuditEntry, now: float) -> GrantRow | None:
    ev = entry.evidence if isinstance(entry.evidence, dict) else {}
    granted_at, expires_at = _num(ev.get("granted_at")), _num(ev.get("expires_at"))
    if granted_at is None or expires_at is None or entry.node is None:
        return None
    in_workflow = bool(ev.get("workflow"))
    if expires_at <= now and not in_workflow:
        return None
    started = _num(ev.get("started_at"))
    if ev.get("handed") is False:
        state = "draining"
    elif _num(ev.get("booted_at")) is not None:
        state = "booted"
    elif started is not None:
        state = "rebooting"
    else:
        state = "granted"
    return GrantRow(entry.cluster, entry.node, entry.pool, state, granted_at, expires_at, started)


def _waiting(entry: AuditEntry) -> WaitingRow | None:
    if entry.node is None:
        return None
    ev = entry.evidence if isinstance(entry.evidence, dict) else {}
    raw = ev.get("blockers")
    blockers = tuple(
        (str(b.get("reason", "")), str(b.get("message", "")))
        for b in (raw if isinstance(raw, list) else [])
        if isinstance(b, dict)
    ) or ((entry.reason, entry.message),)
    return WaitingRow(entry.cluster, entry.node, entry.pool, entry.at, entry.reason, blockers)


def reboot_view(store: Store, *, now: float, cluster: str | None = None) -> RebootView:
    """The grants and the waiting nodes of ``cluster`` (every cluster when None) at ``now``."""
    # Only the reboot events are read (a query per event: the rest of a fleet's day of audit
    # rows is never decoded), then put back in log order.
    entries = [
        entry
        for event in (*_GRANT_EVENTS, "reboot.refused")
        for entry in store.audit_log(cluster=cluster, event=event, since=now - WAITING_HORIZON)
    ]
    entries.sort(key=lambda entry: entry.seq)
    last: dict[tuple[str, str], AuditEntry] = {}
    for entry in entries:
        if entry.node:
            last[(entry.cluster, entry.node)] = entry  # the log is in order: the last wins
    grants: list[GrantRow] = []
    waiting: list[WaitingRow] = []
    for key in sorted(last):
        entry = last[key]
        if entry.event == "reboot.refused":
            if (row := _waiting(entry)) is not None:
                waiting.append(row)
        elif entry.event != "reboot.released" and (grant := _grant(entry, now)) is not None:
            grants.append(grant)
    return RebootView(tuple(grants), tuple(waiting))
