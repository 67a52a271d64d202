"""How long the cluster's node lifecycle controller waits before a silent node turns
``Ready=Unknown``: the lab's scenarios time their expectations by it.

On the lab's own API server it is the lab's timing (:class:`~healer.lab.harness.LabTimings`).
Against a real API server (``healer lab --kubeconfig``) it is, in this order: what the operator
gave (``--node-grace`` / ``--node-monitor-period``), the flags of the cluster's
kube-controller-manager static pod (kubeadm: ``kube-system``, ``component=kube-controller-manager``),
or kube-controller-manager's defaults (50 s grace, 5 s period, v1.32).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import structlog

from healer.errors import HealerError
from healer.kube.client import KubeClient

log = structlog.get_logger("healer.lab")

CONTROLLER_MANAGER_SELECTOR = "component=kube-controller-manager"
DEFAULT_GRACE = 50.0  # kube-controller-manager --node-monitor-grace-period (since v1.29)
DEFAULT_PERIOD = 5.0  # --node-monitor-period
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


@dataclass(frozen=True)
class NodeMonitor:
    grace: float  # seconds from the last lease renewal to Ready=Unknown
    period: float  # how often the controller looks
    source: str  # where these came from, for the report
    # How late after ``grace`` the transition may come: one period on the lab's API server
    # (it compares the lease's renewTime itself), two on a real one (it first has to notice
    # the renewal on a pass, then see the grace pass on a later one).
    late_by: float = 0.0


def parse_go_duration(text: str) -> float:
    """``"40s"``, ``"1m30s"``, ``"500ms"`` -> seconds (ValueError otherwise)."""
    text = text.strip()
    if text in ("0", ""):
        return 0.0
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Go duration: {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def from_command(argv: list[str]) -> NodeMonitor | None:
    """The node-monitor settings of a kube-controller-manager command line (None if it is not
    one). Flags not given keep their defaults."""
    if not any("kube-controller-manager" in a for a in argv[:1]):
        return None
    flags = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    grace = parse_go_duration(flags.get("node-monitor-grace-period", f"{DEFAULT_GRACE:g}s"))
    period = parse_go_duration(flags.get("node-monitor-period", f"{DEFAULT_PERIOD:g}s"))
    return NodeMonitor(grace, period, "kube-controller-manager flags", late_by=2 * period)


def given(grace: float | None, period: float | None) -> NodeMonitor | None:
    """What the operator said (``--node-grace`` / ``--node-monitor-period``), if anything."""
    if grace is None and period is None:
        return None
    p = DEFAULT_PERIOD if period is None else period
    return NodeMonitor(DEFAULT_GRACE if grace is None else grace, p, "command line", late_by=2 * p)


async def discover(kube: KubeClient, operator: NodeMonitor | None) -> NodeMonitor:
    """The real cluster's node monitor: the operator's word, else the controller-manager's
    flags, else the defaults. Logged as ``lab.node_monitor``."""
    found = operator
    if found is None:
        try:
            commands = await kube.container_commands("kube-system", CONTROLLER_MANAGER_SELECTOR)
        except HealerError as exc:  # no right to list kube-system: say so, use the defaults
            log.warning("lab.node_monitor_unreadable", error=str(exc))
            commands = []
        for argv in commands:
            try:
                found = from_command(argv)
            except ValueError as exc:
                log.warning("lab.node_monitor_unreadable", error=str(exc))
            if found is not None:
                break
    if found is None:
        found = NodeMonitor(
            DEFAULT_GRACE,
            DEFAULT_PERIOD,
            "kube-controller-manager defaults (pass --node-grace if the cluster differs)",
            late_by=2 * DEFAULT_PERIOD,
        )
    log.info("lab.node_monitor", grace=found.grace, period=found.period, source=found.source)
    return found
