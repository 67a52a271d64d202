"""The Prometheus HTTP API, read for blocking alerts (``reboots.prometheus``; kured's
``--prometheus-url``): ``GET <url>/api/v1/alerts``, one bounded request, typed failures.

Owns the request and the mapping of the answer to :class:`Alert` records, and the pure choice of
the alerts that block (:func:`blocking`). Polling, and what an unreachable Prometheus means for
reboots, live in :mod:`healer.jobs.prometheus` and :mod:`healer.planner.pulled_alerts`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import aiohttp

# The outcomes a poll is counted by (healer_reboot_prometheus_polls); ``ok`` is the good one.
OK: Final = "ok"
UNREACHABLE: Final = "unreachable"
TIMEOUT: Final = "timeout"
HTTP_ERROR: Final = "http_error"
BAD_RESPONSE: Final = "bad_response"
MAX_BODY: Final = 8 * 1024 * 1024  # a Prometheus with this many alerts is itself a problem


class PrometheusError(Exception):
    """A poll that brought no usable answer; ``outcome`` is one of the constants above."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True)
class Alert:
    name: str
    state: str  # "firing" or "pending"
    labels: tuple[tuple[str, str], ...]


def alerts_url(base: str) -> str:
    return base.rstrip("/") + "/api/v1/alerts"


async def fetch_alerts(base: str, *, timeout: float) -> tuple[Alert, ...]:
    """The alerts Prometheus at ``base`` holds now; :class:`PrometheusError` on any failure."""
    url = alerts_url(base)
    bound = aiohttp.ClientTimeout(total=timeout)
    try:
        async with (
            aiohttp.ClientSession(timeout=bound) as session,
            session.get(url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status != 200:
                raise PrometheusError(HTTP_ERROR, f"GET {url}: HTTP {response.status}")
            body = await response.content.read(MAX_BODY + 1)
    except TimeoutError:
        raise PrometheusError(TIMEOUT, f"GET {url}: no answer within {timeout:g}s") from None
    except aiohttp.ClientError as exc:
        raise PrometheusError(UNREACHABLE, f"GET {url}: {exc or type(exc).__name__}") from None
    except asyncio.CancelledError:
        raise
    if len(body) > MAX_BODY:
        raise PrometheusError(BAD_RESPONSE, f"GET {url}: answer larger than {MAX_BODY} bytes")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise PrometheusError(BAD_RESPONSE, f"GET {url}: not JSON ({exc})") from None
    return parse_alerts(payload, url)


def parse_alerts(payload: object, url: str = "/api/v1/alerts") -> tuple[Alert, ...]:
    """The alerts of an ``/api/v1/alerts`` answer (``{"status": "success", "data": {"alerts":
    [{"labels": {"alertname": ...}, "state": ...}]}}``)."""

    def bad(why: str) -> PrometheusError:
        return PrometheusError(BAD_RESPONSE, f"GET {url}: {why}")

    if not isinstance(payload, dict):
        raise bad("the answer is not a JSON object")
    if payload.get("status") != "success":
        raise bad(f"status {payload.get('status')!r}: {payload.get('error', 'no error given')}")
    data = payload.get("data")
    raw = data.get("alerts") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        raise bad("no data.alerts list")
    alerts: list[Alert] = []
    for item in raw:
        labels = item.get("labels") if isinstance(item, dict) else None
        if not isinstance(labels, dict) or not isinstance(labels.get("alertname"), str):
            raise bad("an alert without labels.alertname")
        state = item.get("state")
        alerts.append(
            Alert(
                name=labels["alertname"],
                state=state if isinstance(state, str) else "",
                labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
            )
        )
    return tuple(alerts)


def blocking(alerts: Iterable[Alert], regexp: str, *, firing_only: bool) -> tuple[str, ...]:
    """The names of the alerts that block reboots: the name matches ``regexp`` in whole, and the
    alert is firing (or pending, unless ``firing_only``). Sorted, each name once."""
    pattern = re.compile(regexp)
    states = ("firing",) if firing_only else ("firing", "pending")
    return tuple(
        sorted({a.name for a in alerts if a.state in states and pattern.fullmatch(a.name)})
    )
