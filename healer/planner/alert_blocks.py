"""Blocking alerts (kured-style): alerts that, while firing for a cluster, stop remediation and
reboots there.

Owns the set of blocking alerts currently firing, per cluster. The alert webhook
(:mod:`healer.sources.webhook`) only parses notifications into :class:`healer.model.BlockChange`
and passes them on the daemon's event path; :func:`block_handler` applies them here, records a
change of blocking (log line + audit row) and has the planner look at the cluster again. The
planner reads :meth:`AlertBlocks.active` into ``ClusterSnapshot.blocking_alerts`` (guard
``BlockedByAlert``) and the reboot arbiter refuses reboots for the same reason.

A block is keyed by (cluster, alert name, alert fingerprint): the same alert firing for several
label sets blocks until every instance has resolved. A block also lapses ``ttl`` seconds after
the last notification that said it was firing, so one lost "resolved" notification cannot block
a cluster forever; Alertmanager re-sends firing alerts every ``repeat_interval``, which must
therefore be shorter than ``blockTtl`` (docs/webhook.md).

Blocks are rows of the state store (table ``alert_blocks``, written on every change), so a
daemon restart does not forget a firing blocker until Alertmanager happens to repeat it. A change
the store cannot take now (a full disk: :mod:`healer.store.writable`) holds in memory at once and
is written by :meth:`AlertBlocks.save_unsaved` once it can.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from healer.clock import Clock
from healer.errors import StateUnwritable
from healer.model import BlockChange
from healer.store.alert_blocks import Block
from healer.store.sqlite import Store
from healer.telemetry.lazylog import get_logger

log = get_logger("healer.planner.alert_blocks")  # structlog, imported when it first logs


class AlertBlocks:
    """The firing blocking alerts. ``store=None`` keeps them in memory only (tests, tools)."""

    def __init__(self, *, store: Store | None = None) -> None:
        self._store = store
        self._blocks: dict[tuple[str, str, str], Block] = {}
        self._unsaved: set[tuple[str, str, str]] = set()  # changes the store did not take yet
        if store is not None:
            self._blocks = {(b.cluster, b.alert, b.fingerprint): b for b in store.alert_blocks()}

    def fire(
        self, *, cluster: str, alert: str, fingerprint: str, since: float, now: float, ttl: float
    ) -> bool:
        """Record a firing notification; True when the cluster was not blocked by this alert."""
        key = (cluster, alert, fingerprint)
        was = self._names(cluster, now)
        previous = self._blocks.get(key)
        block = Block(
            cluster=cluster,
            alert=alert,
            fingerprint=fingerprint,
            since=previous.since if previous is not None else since,
            expires_at=now + ttl,
        )
        self._blocks[key] = block
        self._save(key)
        return alert not in was

    def resolve(self, *, cluster: str, alert: str, fingerprint: str, now: float) -> bool:
        """Record a resolved notification; True when this lifted the last block of that name."""
        if (cluster, alert, fingerprint) not in self._blocks:
            return False
        del self._blocks[(cluster, alert, fingerprint)]
        self._save((cluster, alert, fingerprint))
        return alert not in self._names(cluster, now)

    def _save(self, key: tuple[str, str, str]) -> None:
        """Write the block of ``key`` (or its removal) to the store; one it cannot take now
        waits for :meth:`save_unsaved`, the block in force meanwhile."""
        if self._store is None:
            return
        try:
            if (block := self._blocks.get(key)) is not None:
                self._store.put_alert_block(block)
            else:
                self._store.delete_alert_block(*key)
        except StateUnwritable:
            self._unsaved.add(key)
        else:
            self._unsaved.discard(key)

    def save_unsaved(self) -> None:
        """Write the changes the store did not take (it takes writes again)."""
        for key in sorted(self._unsaved):
            self._save(key)

    def apply(self, change: BlockChange, *, now: float, ttl: float) -> bool:
        """Apply a firing or resolved notification; True when it started or lifted blocking by
        that alert name in its cluster."""
        if change.firing:
            return self.fire(
                cluster=change.cluster,
                alert=change.alert,
                fingerprint=change.fingerprint,
                since=change.since,
                now=now,
                ttl=ttl,
            )
        return self.resolve(
            cluster=change.cluster, alert=change.alert, fingerprint=change.fingerprint, now=now
        )

    def active(self, cluster: str, now: float) -> tuple[str, ...]:
        """Names of the blocking alerts firing for ``cluster`` at ``now``, sorted."""
        return tuple(sorted(self._names(cluster, now)))

    def blocks(self, cluster: str | None = None) -> list[Block]:
        return sorted(
            (b for b in self._blocks.values() if cluster is None or b.cluster == cluster),
            key=lambda b: (b.cluster, b.alert, b.fingerprint),
        )

    def _names(self, cluster: str, now: float) -> set[str]:
        return {
            b.alert for b in self._blocks.values() if b.cluster == cluster and now < b.expires_at
        }


def block_handler(
    blocks: AlertBlocks,
    *,
    store: Store | None,
    clock: Clock,
    ttl: float,
    consider: Callable[[str], Awaitable[None]],
) -> Callable[[BlockChange], Awaitable[None]]:
    """The planner side of the webhook's block changes: apply each to ``blocks``; when it
    starts or lifts blocking, record it (``alert.blocking`` / ``alert.unblocked``) and
    ``consider`` the cluster again (a lifted block may let a waiting remediation start)."""
    # Here, not at the top: `healer status` reads the blocks without the recorder's metrics.
    from healer.store.recorder import Recorder

    recorder = Recorder(store, clock=clock, log=log)

    async def on_block(change: BlockChange) -> None:
        if not blocks.apply(change, now=clock.now(), ttl=ttl):
            return
        firing = "firing" if change.firing else "resolved"
        recorder.record(
            "alert.blocking" if change.firing else "alert.unblocked",
            cluster=change.cluster,
            reason="BlockedByAlert" if change.firing else "AlertResolved",
            message=f"blocking alert {change.alert} {firing} for cluster {change.cluster}",
            evidence={"alert": change.alert, "fingerprint": change.fingerprint},
            level="warning",
            alert=change.alert,
        )
        await consider(change.cluster)

    return on_block
