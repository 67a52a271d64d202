"""Periodic work and reboots: maintenance windows, reboot policy, metrics, orphans, schedule."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
)

from healer.config.types import (
    ConfigModel as _Model,
)
from healer.config.types import (
    Duration,
    ListenAddress,
)


class MaintenanceWindow(_Model):
    """When agents may reboot: ``days`` (mon..sun) from ``start`` to ``end`` (HH:MM) in
    ``timezone``. An ``end`` at or before ``start`` runs past midnight into the next day."""

    days: tuple[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], ...] = (
        "mon",
        "tue",
        "wed",
        "thu",
        "fri",
        "sat",
        "sun",
    )
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")
    timezone: str = "UTC"

    @field_validator("days", mode="before")
    @classmethod
    def _lower_days(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(v.lower()[:3] if isinstance(v, str) else v for v in value)
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
        return value


class RebootConcurrency(_Model):
    """How many nodes may be out for planned work at once: reboots (granted or under way) and
    repairs (remediations running) counted together (docs/operations.md, planned reboots)."""

    per_pool: int = Field(
        1,
        alias="perPool",
        ge=1,
        le=1000,
        description="reboots and repairs at once in one pool (1: today's one reboot per pool)",
    )
    per_cluster: int | None = Field(
        None,
        alias="perCluster",
        ge=1,
        le=100000,
        description="reboots and repairs at once over the whole cluster; unset: no cluster-wide "
        "count beyond remediation.maxUnhealthy",
    )


class PrometheusAlerts(_Model):
    """Blocking alerts pulled from Prometheus (kured's ``--prometheus-url``): a matching alert
    holds every reboot of the cluster; an unreachable Prometheus holds them too."""

    url: str = Field(
        pattern=r"^https?://[^\s/]+",
        description="the Prometheus base URL; healer asks GET <url>/api/v1/alerts",
    )
    alert_filter_regexp: str = Field(
        ".*",
        alias="alertFilterRegexp",
        description="alerts whose name matches (whole name, Python re) block reboots",
    )
    firing_only: bool = Field(
        False,
        alias="firingOnly",
        description="only firing alerts block; unset, pending ones block too (kured's default)",
    )
    interval: Duration = Field(60.0, ge=5.0, description="how often Prometheus is asked")
    timeout: Duration = Field(10.0, gt=0, le=60.0, description="bound of one request")

    @field_validator("alert_filter_regexp")
    @classmethod
    def _compiles(cls, value: str) -> str:
        import re

        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
        return value

    @property
    def stale_after(self) -> float:
        """A last good answer older than this counts as Prometheus unreachable."""
        return 3 * self.interval + self.timeout


class RebootNotify(_Model):
    """A webhook told about reboots: started, done, and refused for longer than
    ``refusedAfter``. POSTed as JSON ``{"text": <message>}`` with a bounded retry; a failure is
    logged and counted and never holds a decision."""

    url: str = Field(pattern=r"^https?://[^\s/]+", description="where the message is POSTed")
    template: str = Field(
        "healer: {event} {cluster}/{node}: {message}",
        description="the message; fields {event} (started, done, refused), {cluster}, {node}, "
        "{pool}, {reason}, {message}",
    )
    refused_after: Duration = Field(
        3600.0,
        alias="refusedAfter",
        gt=0,
        description="notify once when a node has been refused a reboot this long",
    )
    timeout: Duration = Field(5.0, gt=0, le=60.0, description="bound of one POST")
    attempts: int = Field(3, ge=1, le=10, description="POSTs tried before giving up")

    @field_validator("template")
    @classmethod
    def _fields(cls, value: str) -> str:
        import string

        known = {"event", "cluster", "node", "pool", "reason", "message"}
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as exc:
            raise ValueError(f"invalid template {value!r}: {exc}") from None
        unknown = sorted(names - known)
        if unknown:
            raise ValueError(
                f"unknown template field(s) {', '.join(unknown)}; use {', '.join(sorted(known))}"
            )
        return value


class RebootPolicy(_Model):
    """How healer answers agents that ask to reboot (docs/mqtt.md, reboot arbitration)."""

    windows: tuple[MaintenanceWindow, ...] = Field(
        (), description="when reboots may start; empty: any time"
    )
    permit_ttl: Duration = Field(
        600.0, alias="permitTtl", gt=0, description="a grant not used within this lapses"
    )
    drain_timeout: Duration = Field(
        600.0,
        alias="drainTimeout",
        gt=0,
        description="how long the drain before a reboot may take; after it the node is "
        "uncordoned and the reboot waits (DrainTimeout)",
    )
    drain_retry_after: Duration = Field(
        300.0,
        alias="drainRetryAfter",
        gt=0,
        description="after a drain that did not finish, how long the node's reboot waits",
    )
    concurrency: RebootConcurrency = RebootConcurrency()
    blocking_pod_selectors: tuple[str, ...] = Field(
        (),
        alias="blockingPodSelectors",
        description="label selectors (app=db,tier!=web); a pod on the node matching one blocks "
        "its reboot",
    )
    prometheus: PrometheusAlerts | None = None
    pre_reboot_node_labels: dict[str, str] = Field(
        {},
        alias="preRebootNodeLabels",
        description="labels set on the node when it is cordoned for a reboot",
    )
    post_reboot_node_labels: dict[str, str] = Field(
        {},
        alias="postRebootNodeLabels",
        description="labels set on the node when it is uncordoned after its reboot",
    )
    pre_reboot_node_annotations: dict[str, str] = Field(
        {}, alias="preRebootNodeAnnotations", description="annotations set with the pre labels"
    )
    post_reboot_node_annotations: dict[str, str] = Field(
        {}, alias="postRebootNodeAnnotations", description="annotations set with the post labels"
    )
    notify: RebootNotify | None = None

    @field_validator("blocking_pod_selectors")
    @classmethod
    def _selectors(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from healer.config.selectors import parse_selector

        for text in value:
            parse_selector(text)
        return value

    @field_validator(
        "pre_reboot_node_labels",
        "post_reboot_node_labels",
        "pre_reboot_node_annotations",
        "post_reboot_node_annotations",
    )
    @classmethod
    def _keys(cls, value: dict[str, str]) -> dict[str, str]:
        from healer.config.selectors import check_label_key

        for key in value:
            check_label_key(key)
        return value


# ---- machine hardening and cluster level (healer/provisioning; docs/security.md)


class MetricsConfig(_Model):
    """The daemon's own Prometheus listener (/metrics and /healthz); see docs/operations.md."""

    listen: ListenAddress = ("127.0.0.1", 9310)


class OrphanPolicy(_Model):
    """Machines tagged as healer's for a cluster that healer has no record of (orphan sweep)."""

    destroy: bool = Field(
        False, description="destroy an orphan once it has been reported for 'grace'"
    )
    grace: Duration = Field(1800.0, description="time from the first report to a destroy")


class ScheduleConfig(_Model):
    """Intervals of the periodic jobs (healer.jobs.scheduler). ``0`` turns a job off."""

    resync: Duration = Field(300.0, description="compare pools, machines and nodes per cluster")
    drift_repair: Duration = Field(
        300.0, alias="driftRepair", description="give a pool below its size a machine"
    )
    orphan_sweep: Duration = Field(600.0, alias="orphanSweep")
    maintenance: Duration = Field(60.0, description="re-evaluate the maintenance windows")
    stale_workflows: Duration = Field(300.0, alias="staleWorkflows")
    policy_reconcile: Duration = Field(
        300.0,
        alias="policyReconcile",
        description="put back drift in Pod Security labels and RBAC (clusters that configure them)",
    )
    stale_after: Duration = Field(
        7200.0,
        alias="staleAfter",
        ge=600.0,
        description="a running remediation with no progress for this long is failed",
    )
