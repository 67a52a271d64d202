"""When a node is unhealthy and how much healer may do about it: health policy, remediation
limits, retries and the circuit breaker.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
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


class ConditionMatch(_Model):
    """A condition type and the status that counts, e.g. ``{type: Ready, status: Unknown}``."""

    type: str
    status: Literal["True", "False", "Unknown"]

    @field_validator("status", mode="before")
    @classmethod
    def _status_text(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return "True" if value else "False"
        return value

    def __str__(self) -> str:
        return f"{self.type}={self.status}"


#: Named second signals for ``corroborate[].require``, so the YAML says what it means.
SIGNALS: dict[str, tuple[str, str]] = {
    "agentHeartbeatMissing": ("HeartbeatMissing", "True"),
}


class Corroboration(_Model):
    """Remediate for ``when`` only if ``require``, an independent signal, agrees.

    While ``when`` is past its timeout but ``require`` is absent the node is PENDING
    (``Uncorroborated``), never UNHEALTHY.
    """

    when: ConditionMatch = Field(
        description="an unhealthyConditions entry (type and status) this rule guards"
    )
    require: ConditionMatch = Field(
        description="the second signal that must agree: a named signal "
        f"({', '.join(sorted(SIGNALS))}) or a condition {{type, status}} owned by another source"
    )
    without_signal: Literal["hold", "act"] = Field(
        "hold",
        alias="withoutSignal",
        description="when the node has never reported the second signal at all (no agent): "
        "'hold' keeps it PENDING, 'act' lets the first signal decide alone",
    )

    @field_validator("require", mode="before")
    @classmethod
    def _named_signal(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in SIGNALS:
                raise ValueError(
                    f"unknown signal {value!r}; use one of {', '.join(sorted(SIGNALS))} "
                    "or a condition {type: ..., status: ...}"
                )
            kind, status = SIGNALS[value]
            return {"type": kind, "status": status}
        return value

    @model_validator(mode="after")
    def _independent(self) -> Corroboration:
        if self.require.type == self.when.type:
            raise ValueError(
                f"require {self.require} is the same condition as when {self.when}; "
                "corroboration needs a second, independent signal"
            )
        return self


class HealthPolicy(_Model):
    """When a node counts as unhealthy. Pools inherit the cluster's policy field by field."""

    unhealthy_conditions: tuple[UnhealthyCondition, ...] | None = Field(
        None, alias="unhealthyConditions"
    )
    node_startup_timeout: Duration | None = Field(None, alias="nodeStartupTimeout")
    reboot_timeout: Duration | None = Field(None, alias="rebootTimeout")
    corroborate: tuple[Corroboration, ...] | None = Field(
        None,
        description="unhealthy conditions that need a second, independent signal before "
        "healer acts (see docs/configuration.md)",
    )

    @field_validator("corroborate")
    @classmethod
    def _one_rule_per_condition(
        cls, value: tuple[Corroboration, ...] | None
    ) -> tuple[Corroboration, ...] | None:
        seen = [str(rule.when) for rule in value or ()]
        dupes = sorted({w for w in seen if seen.count(w) > 1})
        if dupes:
            raise ValueError(f"one corroborate rule per condition; repeated: {', '.join(dupes)}")
        return value


DEFAULT_HEALTH = HealthPolicy(
    unhealthy_conditions=(
        UnhealthyCondition(type="Ready", status="False", timeout=300),
        UnhealthyCondition(type="Ready", status="Unknown", timeout=300),
    ),
    node_startup_timeout=600,
    reboot_timeout=900,
)


class RetryPolicy(_Model):
    attempts: int = Field(5, ge=1, le=100)
    initial_delay: Duration = Field(1.0, alias="initialDelay")
    max_delay: Duration = Field(30.0, alias="maxDelay")


Strategy = Literal["replace", "surge"]
STRATEGY_DESCRIPTION = (
    "the order of a replacement. 'replace' (the default): fence the old machine (power it off, "
    "or destroy it), delete its Node, destroy it, then create the replacement; works with any "
    "quota, but the pool is a machine short until the replacement joins. 'surge': create the "
    "replacement first (after a capacity preflight by the provider) and fence and destroy the old "
    "machine only once the replacement is Ready; needs room for one more machine. Surge applies "
    "to worker nodes that are still Ready when the remediation starts; control-plane nodes, "
    "unreachable nodes and providers that cannot preflight use the replace order"
)


class RemediationPolicy(_Model):
    """How much healer may do at once. Pool values override the cluster's."""

    max_unhealthy: ThresholdField | None = Field(None, alias="maxUnhealthy")
    max_in_flight: int | None = Field(None, alias="maxInFlight", ge=1)
    drain_timeout: Duration | None = Field(None, alias="drainTimeout")
    strategy: Strategy | None = Field(None, description="overrides the cluster's strategy")


class ClusterRemediation(_Model):
    max_unhealthy: ThresholdField = Field(Threshold(percent=40), alias="maxUnhealthy")
    max_unhealthy_per_zone: ThresholdField = Field(
        Threshold(percent=50),
        alias="maxUnhealthyPerZone",
        description="the most nodes of one failure domain (label topology.kubernetes.io/zone) "
        "that may be out of service at once before healer refuses to remediate there "
        "(TooManyUnhealthyInZone): a zone outage is refused as a whole. A percentage allows "
        "at least one node",
    )
    max_in_flight: int = Field(1, alias="maxInFlight", ge=1)
    max_per_hour: int = Field(10, alias="maxPerHour", ge=0)
    drain_timeout: Duration = Field(300.0, alias="drainTimeout")
    strategy: Strategy = Field("replace", description=STRATEGY_DESCRIPTION)
    storm_cooldown: Duration | None = Field(
        None,
        alias="stormCooldown",
        description="after too many nodes were unhealthy at once, wait this long once it clears "
        "before remediating there (default: the longest unhealthy-condition timeout)",
    )
    exclude_label: str = Field("healer.io/exclude", alias="excludeLabel")
    retry: RetryPolicy = RetryPolicy()


class BreakerPolicy(_Model):
    """Trips when too much goes wrong in ``window``; stays open until `healer breaker reset`.

    A reset starts a fresh window: only what happens after it counts towards the next trip.
    The bad-upgrade breaker is separate: it trips when ``maxRebootFailures`` nodes failed to come
    back from a planned reboot (verdict ``RebootTimeout``) within ``rebootFailureWindow``, and
    then stops reboot grants and the replacement of reboot failures (other remediations go on).
    """

    max_failures: int = Field(3, alias="maxFailures", ge=1)
    max_new_unhealthy: int = Field(10, alias="maxNewUnhealthy", ge=1)
    window: Duration = 600.0
    max_reboot_failures: int = Field(
        2,
        alias="maxRebootFailures",
        ge=1,
        description="nodes that did not come back from a planned reboot (RebootTimeout) within "
        "rebootFailureWindow before the bad-upgrade breaker trips: reboots are no longer "
        "granted and reboot failures no longer replaced until `healer breaker reset`",
    )
    reboot_failure_window: Duration = Field(
        3600.0,
        alias="rebootFailureWindow",
        description="the window maxRebootFailures is counted in",
    )


class EffectiveHealth(_Model):
    unhealthy_conditions: tuple[UnhealthyCondition, ...]
    node_startup_timeout: float
    reboot_timeout: float
    corroborate: tuple[Corroboration, ...] = ()

    def corroboration_for(self, condition: UnhealthyCondition) -> Corroboration | None:
        """The rule guarding ``condition``, if any."""
        return next(
            (
                r
                for r in self.corroborate
                if (r.when.type, r.when.status) == (condition.type, condition.status)
            ),
            None,
        )


class EffectiveRemediation(_Model):
    max_unhealthy: Threshold
    max_in_flight: int
    drain_timeout: float
    strategy: Strategy = "replace"
