"""etcd in ``healer status``: members, leader and health per cluster whose ``etcd.mode`` is not
``off``, read now with healer's client certificate (as the daemon's quorum guard reads it)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `healer status` loads pydantic only for a cluster whose etcd it reads
    from healer.config.summary import ConfigSummary


# Clusters whose etcd is read at once: a fleet's status waits for the slowest, not for the sum.
CONCURRENT_READS = 16


async def _read(state_dir: Path, config: ConfigSummary, cluster: str | None) -> dict[str, Any]:
    from healer.planner.etcd_quorum import EtcdView

    gate = asyncio.Semaphore(CONCURRENT_READS)

    async def view_of(name: str, mode: str) -> EtcdView:
        if mode != "direct":
            return EtcdView(error=f"etcd.mode {mode}: read by the daemon only")
        # etcd.mode direct: the summary is of a configuration loaded in full
        assert config.full is not None
        c = config.full.cluster(name)
        assert c is not None
        from healer.errors import ConfigError
        from healer.provisioning.etcd_access import etcd_client

        try:
            client = etcd_client(state_dir, c)
        except ConfigError as exc:
            return EtcdView(error=str(exc))
        assert client is not None
        async with gate:
            try:
                async with asyncio.timeout(3 * c.etcd.timeout):  # not wait_for: gh-86296
                    return await client.view()
            except TimeoutError:
                return EtcdView(error="no answer in time")
            finally:
                await client.close()

    chosen = [c for c in config.clusters if cluster in (None, c.name) and c.etcd_mode != "off"]
    views = await asyncio.gather(*(view_of(c.name, c.etcd_mode) for c in chosen))
    return {c.name: view for c, view in zip(chosen, views, strict=True)}


def etcd_views(
    state_dir: Path, config: ConfigSummary | None, cluster: str | None
) -> dict[str, Any]:
    """cluster -> :class:`~healer.planner.etcd_quorum.EtcdView` (``error`` set when unread)."""
    if config is None or all(c.etcd_mode == "off" for c in config.clusters):
        return {}
    return asyncio.run(_read(state_dir, config, cluster))


def etcd_lines(views: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for cluster, view in sorted(views.items()):
        lines.append(f"etcd {cluster}: {view.describe()}")
        if view.members:
            lines.append(f"  {'MEMBER':<32} {'ID':<17} {'HEALTH':<9} CLIENT URL")
        for m in view.members:
            health = "healthy" if m.healthy else ("unstarted" if not m.started else "UNHEALTHY")
            leader = " (leader)" if m.id == view.leader else ""
            url = m.client_urls[0] if m.client_urls else "-"
            lines.append(f"  {m.name or '-':<32} {m.id:<17x} {health:<9} {url}{leader}")
    return lines
