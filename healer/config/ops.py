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


class RebootPolicy(_Model):
    """How healer answers agents that ask to reboot (docs/mqtt.md, reboot arbitration)."""

    windows: tuple[MaintenanceWindow, ...] = Field(
        (), description="when reboots may start; empty: any time"
    )
    permit_ttl: Duration = Field(
        600.0, alias="permitTtl", gt=0, description="a grant not used within this lapses"
    )


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
