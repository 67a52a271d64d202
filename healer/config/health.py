"""When a node is unhealthy and how much healer may do about it: health policy, remediation
limits, retries and the circuit breaker.
"""

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
    Threshold,
    ThresholdField,
)


class UnhealthyCondition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    timeout: Duration

    @field_validator("status", mode="before")
    @classmethod
    def _status_text(cls, value: Any) -> Any:
        # YAML turns an unquoted False/True into a bool; accept it as the Kubernetes string.
        if isinstance(value, bool):
            return "True" if value else "False"
        return value


class HealthPolicy(_Model):
    """When a node counts as unhealthy. Pools inherit the cluster's policy field by field."""

    unhealthy_conditions: tuple[UnhealthyCondition, ...] | None = Field(
        None, alias="unhealthyConditions"
    )
    node_startup_timeout: Duration | None = Field(None, alias="nodeStartupTimeout")
    reboot_timeout: Duration | None = Field(None, alias="rebootTimeout")


DEFAULT_HEALTH = HealthPolicy(
    unhealthyConditions=(
        UnhealthyCondition(type="Ready", status="False", timeout=300),
        UnhealthyCondition(type="Ready", status="Unknown", timeout=300),
    ),
    nodeStartupTimeout=600,
    rebootTimeout=900,
)


class RetryPolicy(_Model):
    attempts: int = Field(5, ge=1, le=100)
    initial_delay: Duration = Field(1.0, alias="initialDelay")
    max_delay: Duration = Field(30.0, alias="maxDelay")


class RemediationPolicy(_Model):
    """How much healer may do at once. Pool values override the cluster's."""

    max_unhealthy: ThresholdField | None = Field(None, alias="maxUnhealthy")
    max_in_flight: int | None = Field(None, alias="maxInFlight", ge=1)
    drain_timeout: Duration | None = Field(None, alias="drainTimeout")


class ClusterRemediation(_Model):
    max_unhealthy: ThresholdField = Field(Threshold(percent=40), alias="maxUnhealthy")
    max_in_flight: int = Field(1, alias="maxInFlight", ge=1)
    max_per_hour: int = Field(10, alias="maxPerHour", ge=0)
    drain_timeout: Duration = Field(300.0, alias="drainTimeout")
    storm_cooldown: Duration | None = Field(
        None,
        alias="stormCooldown",
        description="after too many nodes were unhealthy at once, wait this long once it clears "
        "before remediating there (default: the longest unhealthy-condition timeout)",
    )
    exclude_label: str = Field("healer.io/exclude", alias="excludeLabel")
    retry: RetryPolicy = RetryPolicy()


class BreakerPolicy(_Model):
    """Trips when too much goes wrong in ``window``; stays open until `healer breaker reset`."""

    max_failures: int = Field(3, alias="maxFailures", ge=1)
    max_new_unhealthy: int = Field(10, alias="maxNewUnhealthy", ge=1)
    window: Duration = 600.0


class EffectiveHealth(_Model):
    unhealthy_conditions: tuple[UnhealthyCondition, ...]
    node_startup_timeout: float
    reboot_timeout: float


class EffectiveRemediation(_Model):
    max_unhealthy: Threshold
    max_in_flight: int
    drain_timeout: float
