"""Blocking alerts pulled from Prometheus (``reboots.prometheus``), per cluster.

Owns the last answer of each cluster's poll (:mod:`healer.jobs.prometheus` feeds it) and what it
means for reboots now (:meth:`PulledAlerts.view`): the matching alerts of the last good answer,
or why there is none to trust. A Prometheus that cannot be read holds reboots (reason
``PrometheusUnreachable``), kured's choice too: a silent monitoring system is no evidence that
nothing is wrong. One failed poll does not: the last good answer stands for ``stale_after``
(three polls and a timeout) before reboots are held. Kept in memory only: a restarted daemon
holds reboots until its first poll answers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class _Last:
    names: tuple[str, ...]
    good_at: float | None  # when the last good answer came, None before any
    error: str | None  # the failure of the last poll, None if it was good


class PulledAlerts:
    def __init__(self) -> None:
        self._last: dict[str, _Last] = {}

    def answered(self, cluster: str, names: tuple[str, ...], now: float) -> None:
        self._last[cluster] = _Last(names, now, None)

    def failed(self, cluster: str, error: str) -> None:
        last = self._last.get(cluster)
        self._last[cluster] = _Last(
            last.names if last else (), last.good_at if last else None, error
        )

    def view(
        self, cluster: str, now: float, *, stale_after: float
    ) -> tuple[tuple[str, ...], str | None]:
        """(matching alert names, why Prometheus counts as unreachable or None)."""
        last = self._last.get(cluster)
        if last is None or last.good_at is None:
            why = last.error if last is not None and last.error else "not asked yet"
            return (), why
        age = now - last.good_at
        if age > stale_after:
            return last.names, (f"no good answer for {age:.0f}s: {last.error or 'no poll since'}")
        return last.names, None
