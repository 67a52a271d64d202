"""What the reboot notification hook (``reboots.notify``) is told, and when: ``started`` when a
node is granted a reboot, ``done`` when its grant is released (after the reboot, or for any other
reason: the message says which), ``refused`` once when a node has been refused a reboot for
``refusedAfter`` without a grant in between.

Owns the choice and the message (``template`` with ``{event}``, ``{cluster}``, ``{node}``,
``{pool}``, ``{reason}``, ``{message}``); the delivery is :class:`healer.telemetry.notify.Notifier`
(background, bounded retry, never blocking a decision). The reboot arbiter calls it.
"""

from __future__ import annotations

from typing import Any, Protocol

from healer.config import HealerConfig, RebootNotify
from healer.model import NodeKey

STARTED = "started"
DONE = "done"
REFUSED = "refused"


class Poster(Protocol):
    def post(
        self, url: str, body: dict[str, Any], *, timeout: float, attempts: int, event: str
    ) -> None: ...


class _Refusal(Protocol):
    @property
    def reason(self) -> str: ...
    @property
    def message(self) -> str: ...


def render(
    cfg: RebootNotify,
    *,
    event: str,
    cluster: str,
    node: str,
    pool: str | None,
    reason: str,
    message: str,
) -> dict[str, Any]:
    """The JSON body POSTed: ``text`` (the template filled in) and the fields themselves."""
    fields = {
        "event": event,
        "cluster": cluster,
        "node": node,
        "pool": pool or "",
        "reason": reason,
        "message": message,
    }
    return {"text": cfg.template.format(**fields), **fields}


class RebootNotices:
    def __init__(self, *, config: HealerConfig, poster: Poster) -> None:
        self._config = config
        self._poster = poster
        self._refused_since: dict[NodeKey, float] = {}
        self._told: set[NodeKey] = set()  # refusals already notified (until a grant)

    def reconfigure(self, config: HealerConfig) -> None:
        self._config = config

    def _cfg(self, cluster: str) -> RebootNotify | None:
        c = self._config.cluster(cluster)
        return c.reboots.notify if c is not None else None

    def _send(self, cfg: RebootNotify, event: str, **fields: Any) -> None:
        body = render(cfg, event=event, **fields)
        self._poster.post(cfg.url, body, timeout=cfg.timeout, attempts=cfg.attempts, event=event)

    def started(self, cluster: str, node: str, pool: str | None, message: str, now: float) -> None:
        key = NodeKey(cluster, node)
        self._refused_since.pop(key, None)
        self._told.discard(key)
        if (cfg := self._cfg(cluster)) is not None:
            self._send(
                cfg,
                STARTED,
                cluster=cluster,
                node=node,
                pool=pool,
                reason="Granted",
                message=message,
            )

    def done(
        self, cluster: str, node: str, pool: str | None, reason: str, message: str, now: float
    ) -> None:
        if (cfg := self._cfg(cluster)) is not None:
            self._send(
                cfg, DONE, cluster=cluster, node=node, pool=pool, reason=reason, message=message
            )

    def refused(
        self, cluster: str, node: str, pool: str | None, decision: _Refusal, now: float
    ) -> None:
        key = NodeKey(cluster, node)
        since = self._refused_since.setdefault(key, now)
        cfg = self._cfg(cluster)
        if cfg is None or key in self._told or now - since < cfg.refused_after:
            return
        self._told.add(key)
        minutes = (now - since) / 60
        self._send(
            cfg,
            REFUSED,
            cluster=cluster,
            node=node,
            pool=pool,
            reason=decision.reason,
            message=f"refused for {minutes:.0f} min: {decision.message}",
        )
