"""The ownership job of ``healer run --replicas``: each round this replica beats its heartbeat,
reads the lease table, decides (:func:`healer.planner.ownership.decide`, pure) and carries the
decision out with compare-and-set writes (:class:`healer.store.leases.LeaseTable`).

A cluster lost (taken over, expired while this process was stopped, released beyond the fair
share) stops being worked here first: its workflows are cancelled without a write and the planner
leaves it alone. A cluster won has its running workflows resumed from their journal (the
crash-resume path) and is considered by the planner. Runs on the daemon's scheduler every third
of the lease time, on the injected clock; the lease expiry is judged on the database's clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import structlog

from healer.errors import StateUnwritable
from healer.planner.ownership import decide
from healer.store.leases import LeaseFence, LeaseTable, Token, say_fenced

log = structlog.get_logger(__name__)

ClusterHook = Callable[[str], Awaitable[None]]


class Ownership:
    """Rounds of lease keeping for replica ``fence.me`` over the clusters ``clusters()``."""

    def __init__(
        self,
        *,
        table: LeaseTable,
        fence: LeaseFence,
        clusters: Callable[[], Iterable[str]],
        lease_seconds: float,
        now: Callable[[], float],
        on_lost: ClusterHook,
        on_gained: ClusterHook,
    ) -> None:
        self._table = table
        self.fence = fence
        self._clusters = clusters
        self.lease_seconds = lease_seconds
        self._now = now  # the database's wall clock
        self._on_lost = on_lost
        self._on_gained = on_gained

    @property
    def me(self) -> str:
        return self.fence.me

    async def run_once(self) -> None:
        """One round. A database that takes no writes ends the round: the leases then run out
        and the fence refuses every act until a later round wins them again."""
        try:
            await self._round()
        except StateUnwritable as exc:
            log.warning("ownership.round_failed", replica=self.me, error=str(exc))

    async def _round(self) -> None:
        now = self._now()
        until = now + self.lease_seconds
        self._table.heartbeat(self.me, until=until)
        decision = decide(
            clusters=self._clusters(),
            leases=self._table.leases(),
            heartbeats=self._table.heartbeats(),
            me=self.me,
            held=self.fence.held,
            now=now,
        )
        for cluster in decision.lost:
            await self._lose(cluster, why="LeaseLost")
        for lease in decision.release:
            token = Token(cluster=lease.cluster, holder=self.me, epoch=lease.epoch)
            await self._lose(lease.cluster, why="FairShare")
            self._table.release(token, now=self._now())
        for lease in decision.renew:
            token = Token(cluster=lease.cluster, holder=self.me, epoch=lease.epoch)
            if not self._table.renew(token, now=self._now(), until=until):
                await self._lose(lease.cluster, why="LeaseLost")
        for claim in decision.claim:
            epoch = self._table.claim(
                claim.cluster,
                holder=self.me,
                expected_epoch=claim.expected_epoch,
                now=self._now(),
                until=until,
            )
            if epoch is None:
                continue  # another replica was quicker: fine, it owns it now
            self.fence.held[claim.cluster] = epoch
            log.info(
                "ownership.acquired",
                cluster=claim.cluster,
                replica=self.me,
                epoch=epoch,
                taken_from=claim.taken_from or None,
                share=decision.share,
            )
            await self._on_gained(claim.cluster)

    async def _lose(self, cluster: str, *, why: str) -> None:
        epoch = self.fence.held.pop(cluster, None)
        if why == "LeaseLost":
            say_fenced(
                cluster=cluster,
                replica=self.me,
                epoch=epoch,
                refused="all work (LeaseLost)",
                message=f"{self.me} lost cluster {cluster} (epoch {epoch}) to another replica "
                "or to its expiry: its workflows stop here, and this replica commits no step "
                "and makes no provider call for it",
            )
        else:
            log.info(
                "ownership.released", cluster=cluster, replica=self.me, epoch=epoch, reason=why
            )
        await self._on_lost(cluster)

    async def release_all(self) -> None:
        """On a clean stop: hand every lease back at once, so the other replicas need not wait
        for them to expire."""
        for cluster, epoch in sorted(self.fence.held.items()):
            try:
                self._table.release(
                    Token(cluster=cluster, holder=self.me, epoch=epoch), now=self._now()
                )
            except StateUnwritable:
                return
            log.info("ownership.released", cluster=cluster, replica=self.me, reason="Stopping")
        self.fence.held.clear()
