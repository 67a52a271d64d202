"""Blocking alerts (kured-style): alerts that, while firing for a cluster, stop remediation and
reboots there.

Owns the set of blocking alerts currently firing, per cluster. The alert webhook
(:mod:`healer.sources.webhook`) records firing and resolved notifications; the planner reads
:meth:`AlertBlocks.active` into ``ClusterSnapshot.blocking_alerts`` (guard ``BlockedByAlert``)
and the reboot arbiter refuses reboots for the same reason.

A block is keyed by (cluster, alert name, alert fingerprint): the same alert firing for several
label sets blocks until every instance has resolved. A block also lapses ``ttl`` seconds after
the last notification that said it was firing, so one lost "resolved" notification cannot block
a cluster forever; Alertmanager re-sends firing alerts every ``repeat_interval``, which must
therefore be shorter than ``blockTtl`` (docs/webhook.md).

Blocks are kept in a small JSON file in the state directory (written atomically on every change),
so a daemon restart does not forget a firing blocker until Alertmanager happens to repeat it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

log = structlog.get_logger("healer.planner.alert_blocks")

FILE_NAME: Final = "alert-blocks.json"


@dataclass(frozen=True)
class Block:
    cluster: str
    alert: str
    fingerprint: str
    since: float  # when the alert started firing (as the sender says)
    expires_at: float  # last firing notification + ttl


class AlertBlocks:
    """The firing blocking alerts. ``path=None`` keeps them in memory only (tests, tools)."""

    def __init__(self, *, path: Path | None = None) -> None:
        self._path = path
        self._blocks: dict[tuple[str, str, str], Block] = {}
        if path is not None:
            self._blocks = _load(path)

    def fire(
        self, *, cluster: str, alert: str, fingerprint: str, since: float, now: float, ttl: float
    ) -> bool:
        """Record a firing notification; True when the cluster was not blocked by this alert."""
        key = (cluster, alert, fingerprint)
        was = self._names(cluster, now)
        previous = self._blocks.get(key)
        self._blocks[key] = Block(
            cluster=cluster,
            alert=alert,
            fingerprint=fingerprint,
            since=previous.since if previous is not None else since,
            expires_at=now + ttl,
        )
        self._save()
        return alert not in was

    def resolve(self, *, cluster: str, alert: str, fingerprint: str, now: float) -> bool:
        """Record a resolved notification; True when this lifted the last block of that name."""
        if self._blocks.pop((cluster, alert, fingerprint), None) is None:
            return False
        self._save()
        return alert not in self._names(cluster, now)

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

    def _save(self) -> None:
        if self._path is None:
            return
        doc = [
            {
                "cluster": b.cluster,
                "alert": b.alert,
                "fingerprint": b.fingerprint,
                "since": b.since,
                "expires_at": b.expires_at,
            }
            for b in self.blocks()
        ]
        tmp = self._path.with_suffix(".tmp")
        # Write-then-rename: a crash mid-write leaves the previous, complete file.
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self._path)


def _load(path: Path) -> dict[tuple[str, str, str], Block]:
    try:
        raw: Any = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        # Failing open here would silently drop a safety stop; but refusing to start over a
        # damaged cache would be worse. Keep a copy for a human, say so loudly, start empty.
        with contextlib.suppress(OSError):
            os.replace(path, path.with_suffix(".damaged"))
        log.error("alert_blocks.unreadable", path=str(path), error=str(exc))
        return {}
    out: dict[tuple[str, str, str], Block] = {}
    for item in raw if isinstance(raw, list) else []:
        try:
            block = Block(
                cluster=str(item["cluster"]),
                alert=str(item["alert"]),
                fingerprint=str(item["fingerprint"]),
                since=float(item["since"]),
                expires_at=float(item["expires_at"]),
            )
        except (KeyError, TypeError, ValueError):
            log.error("alert_blocks.bad_entry", path=str(path), entry=str(item)[:200])
            continue
        out[(block.cluster, block.alert, block.fingerprint)] = block
    return out
