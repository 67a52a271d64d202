"""Signal provenance: which source may set which node condition (pure, no I/O).

Every condition has exactly one owner, so a message on one channel cannot speak for another:

=============  ==========================================================================
source         may set
=============  ==========================================================================
``kube``       every condition the Node's ``status.conditions`` holds (``Ready``,
               ``MemoryPressure``, ``DiskPressure``, ``PIDPressure``,
               ``NetworkUnavailable``, node-problem-detector's, ...): anything that is not
               one of the named conditions below
``mqtt``       the node agent's conditions: ``HeartbeatMissing`` (heartbeat absence),
               ``RebootRequired`` (``reboot``/``required`` and its clearing), ``UpgradeFailed``
               (``upgrade``/``failed``), plus the names listed in ``mqtt.conditions``
``webhook``    the condition types named in ``webhook.conditions`` (alertname -> type)
any other      nothing
=============  ==========================================================================

The Kubernetes conditions (:data:`KUBERNETES_CONDITIONS`) and the agent's built-in ones
(:data:`AGENT_CONDITIONS`) can never be given to another source; the configuration refuses it
(:func:`config_errors`). The sources reject a message that tries to set a condition they do
not own (``condition_not_owned``), and :func:`healer.health.observe.apply_event` ignores such
an event again, as a second line of defence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

KUBE: Final = "kube"
MQTT: Final = "mqtt"
WEBHOOK: Final = "webhook"

#: The reason a source gives when a message sets a condition it does not own.
CONDITION_NOT_OWNED: Final = "condition_not_owned"

#: The kubelet's own conditions: only the Kubernetes API may report them, whatever the config.
KUBERNETES_CONDITIONS: Final = frozenset(
    {"Ready", "MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable"}
)
HEARTBEAT_MISSING: Final = "HeartbeatMissing"
REBOOT_REQUIRED: Final = "RebootRequired"
UPGRADE_FAILED: Final = "UpgradeFailed"
#: What the node agent and the heartbeat watcher report over MQTT (docs/mqtt.md).
AGENT_CONDITIONS: Final = frozenset({HEARTBEAT_MISSING, REBOOT_REQUIRED, UPGRADE_FAILED})
#: Names no configuration may hand to another source.
RESERVED: Final = KUBERNETES_CONDITIONS | AGENT_CONDITIONS

_CAMEL: Final = re.compile(r"[A-Z][A-Za-z0-9]{0,62}")


@dataclass(frozen=True)
class Ownership:
    """Who owns which condition. ``mqtt``/``webhook`` are the named conditions of each."""

    mqtt: frozenset[str] = AGENT_CONDITIONS
    webhook: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls, *, mqtt_conditions: Iterable[str] = (), webhook_conditions: Iterable[str] = ()
    ) -> Ownership:
        """The table for a configuration: ``mqtt.conditions`` and the values of
        ``webhook.conditions`` (the configuration has checked they do not overlap)."""
        return cls(
            mqtt=AGENT_CONDITIONS | frozenset(mqtt_conditions),
            webhook=frozenset(webhook_conditions),
        )

    def owner(self, condition: str) -> str:
        """The one source allowed to set ``condition``."""
        if condition in KUBERNETES_CONDITIONS:
            return KUBE
        if condition in self.mqtt:
            return MQTT
        if condition in self.webhook:
            return WEBHOOK
        return KUBE

    def may_set(self, source: str, condition: str) -> bool:
        return self.owner(condition) == source

    def explain(self, source: str, condition: str) -> str | None:
        """None if ``source`` owns ``condition``; else a sentence for the log and the sender."""
        owner = self.owner(condition)
        if owner == source:
            return None
        if condition in KUBERNETES_CONDITIONS:
            whose = "it is a Kubernetes node condition and only the Kubernetes API sets it"
        elif owner == KUBE:
            whose = (
                "it is not one of its named conditions, and an unnamed condition belongs to the "
                "Kubernetes API (the Node's status.conditions)"
            )
        else:
            whose = f"only the {owner} source sets it"
        named = {MQTT: self.mqtt, WEBHOOK: self.webhook}.get(source)
        allowed = f" (it may set: {', '.join(sorted(named))})" if named else ""
        hint = {
            MQTT: "; name your agent's own conditions in mqtt.conditions",
            WEBHOOK: "; map the alert to a condition type of its own in webhook.conditions",
        }.get(source, "")
        return f"{source} may not set {condition}: {whose}{allowed}{hint}"


DEFAULT_OWNERSHIP: Final = Ownership()


def config_errors(
    *, mqtt_conditions: Iterable[str], webhook_conditions: Mapping[str, str]
) -> list[str]:
    """What is wrong with the named conditions of a configuration (empty if nothing)."""
    errors: list[str] = []
    mqtt = list(mqtt_conditions)
    for name in mqtt:
        if _CAMEL.fullmatch(name) is None:
            errors.append(f"mqtt.conditions: {name!r} is not a CamelCase condition type")
        elif name in KUBERNETES_CONDITIONS:
            errors.append(
                f"mqtt.conditions: {name} is a Kubernetes node condition; only the Kubernetes "
                "API may set it"
            )
    for alert, name in webhook_conditions.items():
        where = f"webhook.conditions[{alert!r}]"
        if _CAMEL.fullmatch(name) is None:
            errors.append(f"{where}: {name!r} is not a CamelCase condition type")
        elif name in KUBERNETES_CONDITIONS:
            errors.append(
                f"{where}: {name} is a Kubernetes node condition; only the Kubernetes API may "
                "set it"
            )
        elif name in AGENT_CONDITIONS:
            errors.append(f"{where}: {name} belongs to the node agent (MQTT)")
        elif name in mqtt:
            errors.append(f"{where}: {name} is also in mqtt.conditions; a condition has one owner")
    return errors


class _Match(Protocol):
    @property
    def type(self) -> str: ...

    @property
    def status(self) -> str: ...


class _Rule(Protocol):
    @property
    def when(self) -> _Match: ...

    @property
    def require(self) -> _Match: ...


class _Health(Protocol):
    @property
    def unhealthy_conditions(self) -> Sequence[_Match]: ...

    @property
    def corroborate(self) -> Sequence[_Rule]: ...


def corroboration_errors(health: _Health, owners: Ownership, *, where: str) -> list[str]:
    """What is wrong with the ``corroborate`` rules of one effective health policy: each must
    guard one of its ``unhealthyConditions`` and require a signal from another owner."""
    errors: list[str] = []
    conditions = {(c.type, c.status) for c in health.unhealthy_conditions}
    for n, rule in enumerate(health.corroborate):
        at = f"{where}: health.corroborate[{n}]"
        when = f"{rule.when.type}={rule.when.status}"
        if (rule.when.type, rule.when.status) not in conditions:
            errors.append(
                f"{at}: when {when} is not one of its unhealthyConditions, so it would "
                "guard nothing"
            )
        first, second = owners.owner(rule.when.type), owners.owner(rule.require.type)
        if first == second:
            errors.append(
                f"{at}: {rule.require.type} and {rule.when.type} both come from the {first} "
                "source; corroboration needs a signal from another source (e.g. "
                "agentHeartbeatMissing for a Kubernetes condition)"
            )
    return errors


class _Named(Protocol):
    @property
    def conditions(self) -> Any: ...


class _Config(Protocol):
    @property
    def mqtt(self) -> _Named | None: ...

    @property
    def webhook(self) -> _Named | None: ...


def ownership_of(config: _Config) -> Ownership:
    """The ownership table of a loaded configuration (:class:`healer.config.HealerConfig`)."""
    return Ownership.of(
        mqtt_conditions=config.mqtt.conditions if config.mqtt else (),
        webhook_conditions=config.webhook.conditions.values() if config.webhook else (),
    )
