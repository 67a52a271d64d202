"""What every periodic job reads: the current configuration, the state, the clock, the planner
whose stop switches it obeys, and the recorder that writes its audit rows and log lines."""

from __future__ import annotations

from dataclasses import dataclass

from healer.clock import Clock
from healer.config import ClusterConfig, HealerConfig
from healer.model import TAG_CLUSTER, TAG_MANAGED
from healer.planner.planner import Planner
from healer.store.recorder import Recorder
from healer.store.sqlite import Store


@dataclass
class JobContext:
    """Shared by the jobs of one daemon; :meth:`reconfigure` swaps the configuration for all."""

    config: HealerConfig
    store: Store
    clock: Clock
    planner: Planner
    recorder: Recorder
    dry_run: bool = False

    def reconfigure(self, config: HealerConfig) -> None:
        """New intervals and policies; a job already running finishes with the old ones."""
        self.config = config
        self.dry_run = self.dry_run or config.dry_run

    def stop_switch(self, cluster: ClusterConfig) -> str | None:
        """The guards' stop switches that hold for a whole cluster: the first that is on."""
        if (frozen := self.planner.frozen_code(cluster.name)) is not None:
            return frozen  # ApiUnreachable, or StateUnwritable (every cluster)
        snap = self.planner.snapshot(cluster)
        if snap.breaker_open:
            return "BreakerOpen"
        if snap.global_paused or snap.cluster_paused:
            return "Paused"
        if getattr(snap, "blocking_alerts", ()):
            return "BlockedByAlert"
        return None


def owned(cluster: str) -> dict[str, str]:
    """The tags that select healer's machines of ``cluster`` in a provider's listing."""
    return {TAG_MANAGED: "true", TAG_CLUSTER: cluster}
