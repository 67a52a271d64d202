"""etcd in ``healer status``: members, leader and health per cluster whose ``etcd.mode`` is not
``off``, read now with healer's client certificate (as the daemon's quorum guard reads it)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `healer status` without a configuration file loads no pydantic
    from healer.config import HealerConfig


async def _read(state_dir: Path, config: HealerConfig, cluster: str | None) -> dict[str, Any]:
    from healer.errors import ConfigError
    from healer.planner.etcd_quorum import EtcdView
    from healer.provisioning.etcd_access import etcd_client

    out: dict[str, Any] = {}
    for c in config.clusters:
        if cluster not in (None, c.name) or not c.etcd.enabled:
            continue
        if c.etcd.mode != "direct":
            view = EtcdView(error=f"etcd.mode {c.etcd.mode}: read by the daemon only")
        else:
            try:
                client = etcd_client(state_dir, c)
            except ConfigError as exc:
                out[c.name] = EtcdView(error=str(exc))
                continue
            assert client is not None
            try:
                view = await asyncio.wait_for(client.view(), timeout=3 * c.etcd.timeout)
            except TimeoutError:
                view = EtcdView(error="no answer in time")
            finally:
                await client.close()
        out[c.name] = view
    return out


def etcd_views(state_dir: Path, config: HealerConfig | None, cluster: str | None) -> dict[str, Any]:
    """cluster -> :class:`~healer.planner.etcd_quorum.EtcdView` (``error`` set when unread)."""
    if config is None or not any(c.etcd.enabled for c in config.clusters):
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
