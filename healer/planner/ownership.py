"""Which clusters this replica owns: pure decisions over the lease table.

Several daemons (``healer run --replicas``, docs/state-backends.md) share one state database.
Each cluster has one lease row (holder, epoch, expiry); the holder renews it, and only the holder
of the current, unexpired epoch may commit a workflow step or call a destructive provider method
for that cluster (the fence: :mod:`healer.store.leases`). Each replica also keeps a heartbeat row;
the live replicas (unexpired heartbeats) share the clusters fairly: a replica holds at most
``ceil(clusters / live replicas)``, claims free or expired leases up to that share (a takeover
bumps the epoch, which fences the former holder) and lets go of what it holds beyond it, so a
replica that joins gets work and one that dies has its clusters taken over once its leases
expire.

Everything here takes ``now`` (seconds on the database's wall clock, the same for every
replica) and returns what to do; :mod:`healer.jobs.ownership` does it, with a compare-and-set on
the epoch so two replicas claiming one lease at once cannot both win.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from healer.store.leases import Lease


@dataclass(frozen=True, slots=True)
class Claim:
    """Take ``cluster`` with a compare-and-set on ``expected_epoch`` (None: no row yet); the
    lease becomes ``expected_epoch + 1`` (1 for a new row)."""

    cluster: str
    expected_epoch: int | None
    # The former holder whose lease expired (for the log line), "" for a free lease.
    taken_from: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """What one round of the ownership job does."""

    share: int  # the most clusters this replica should hold
    renew: tuple[Lease, ...]  # held, unexpired, within the share: extend
    release: tuple[Lease, ...]  # held beyond the share: let go (holder emptied, epoch kept)
    claim: tuple[Claim, ...]  # free or expired leases to take, up to the share
    lost: tuple[str, ...]  # clusters this replica believed it held and no longer does


def live_replicas(heartbeats: Mapping[str, float], *, me: str, now: float) -> frozenset[str]:
    """Replicas whose heartbeat row has not expired (``replica -> expires_at``), and ``me``."""
    return frozenset({r for r, until in heartbeats.items() if until > now} | {me})


def fair_share(clusters: int, replicas: int) -> int:
    """The most clusters one of ``replicas`` live replicas holds: ``ceil(clusters/replicas)``."""
    return math.ceil(clusters / max(replicas, 1))


def preference(cluster: str, replica: str) -> str:
    """Rendezvous order: replicas prefer different clusters, so claims rarely collide, and a
    cluster tends to go back to the same replica."""
    return hashlib.sha256(f"{cluster}\0{replica}".encode()).hexdigest()


def decide(
    *,
    clusters: Iterable[str],
    leases: Iterable[Lease],
    heartbeats: Mapping[str, float],
    me: str,
    held: Mapping[str, int],
    now: float,
) -> Decision:
    """One round for replica ``me``.

    ``clusters`` are the configured clusters; ``leases`` the rows read from the table;
    ``heartbeats`` each replica's heartbeat expiry; ``held`` the clusters this replica believes
    it owns with the epoch it won them at (what the fence checks).
    """
    names = sorted(set(clusters))
    by_cluster = {lease.cluster: lease for lease in leases if lease.cluster in names}
    share = fair_share(len(names), len(live_replicas(heartbeats, me=me, now=now)))

    # Still ours: our name on the row, the epoch we won, not expired. Anything else we
    # believed we held is lost (taken over, or expired while we were paused).
    ours = [
        lease
        for c in names
        if (lease := by_cluster.get(c)) is not None
        and lease.holder == me
        and lease.epoch == held.get(c)
        and lease.live(now)
    ]
    ours.sort(key=lambda lease: preference(lease.cluster, me))
    kept, release = ours[:share], ours[share:]
    kept_names = {lease.cluster for lease in kept}
    lost = tuple(sorted(set(held) - kept_names - {lease.cluster for lease in release}))

    free: list[Claim] = []
    for c in names:
        lease = by_cluster.get(c)
        if lease is None:
            free.append(Claim(cluster=c, expected_epoch=None))
        elif not lease.live(now) or (lease.holder == me and c not in held):
            # Expired (a dead or paused holder, ourselves included), or ours from a previous
            # run of this replica: taken with a new epoch, which fences whoever held it.
            free.append(Claim(cluster=c, expected_epoch=lease.epoch, taken_from=lease.holder))
    free.sort(key=lambda claim: preference(claim.cluster, me))
    room = max(share - len(kept), 0)
    return Decision(
        share=share,
        renew=tuple(kept),
        release=tuple(release),
        claim=tuple(free[:room]),
        lost=lost,
    )


def owners(leases: Iterable[Lease], *, now: float) -> dict[str, str | None]:
    """Each cluster's owner for ``healer status``: the holder of a live lease, else None."""
    return {lease.cluster: lease.holder if lease.live(now) else None for lease in leases}
