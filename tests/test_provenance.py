"""Signal provenance: who may set which condition, at the sources and again in apply_event."""

from __future__ import annotations

import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from healer.config import HealerConfig, parse_config
from healer.config.provenance import (
    AGENT_CONDITIONS,
    CONDITION_NOT_OWNED,
    DEFAULT_OWNERSHIP,
    KUBE,
    KUBERNETES_CONDITIONS,
    MQTT,
    WEBHOOK,
    Ownership,
    config_errors,
)
from healer.errors import ConfigError
from healer.health.observe import apply_event
from healer.model import ConditionObs, EventKind, NodeEvent, NodeObservation
from healer.sources.mqtt_payload import Rejection as MqttRejection
from healer.sources.mqtt_payload import parse_message
from healer.sources.webhook_payload import AlertRules, Parsed, parse_alertmanager, parse_generic
from healer.sources.webhook_payload import Rejection as WebhookRejection
from tests.helpers import lab_like_config

T0 = 1_700_000_000.0
CONFIGURED = Ownership.of(mqtt_conditions=["GpuFailed"], webhook_conditions=["NodeDiskFailing"])

# (source, condition, ownership) -> may it set the condition?
OWNERS = [
    # The Kubernetes conditions: only the API, whatever the config says.
    *[(KUBE, c, DEFAULT_OWNERSHIP, True) for c in sorted(KUBERNETES_CONDITIONS)],
    *[(MQTT, c, CONFIGURED, False) for c in sorted(KUBERNETES_CONDITIONS)],
    *[(WEBHOOK, c, CONFIGURED, False) for c in sorted(KUBERNETES_CONDITIONS)],
    # node-problem-detector's and other conditions of status.conditions: the API's too.
    (KUBE, "KernelDeadlock", DEFAULT_OWNERSHIP, True),
    (MQTT, "KernelDeadlock", DEFAULT_OWNERSHIP, False),
    (WEBHOOK, "KernelDeadlock", DEFAULT_OWNERSHIP, False),
    # The agent's built-in conditions: MQTT only.
    *[(MQTT, c, DEFAULT_OWNERSHIP, True) for c in sorted(AGENT_CONDITIONS)],
    *[(KUBE, c, DEFAULT_OWNERSHIP, False) for c in sorted(AGENT_CONDITIONS)],
    *[(WEBHOOK, c, CONFIGURED, False) for c in sorted(AGENT_CONDITIONS)],
    # Named in the configuration.
    (MQTT, "GpuFailed", CONFIGURED, True),
    (MQTT, "GpuFailed", DEFAULT_OWNERSHIP, False),
    (KUBE, "GpuFailed", CONFIGURED, False),
    (WEBHOOK, "NodeDiskFailing", CONFIGURED, True),
    (WEBHOOK, "NodeDiskFailing", DEFAULT_OWNERSHIP, False),
    (MQTT, "NodeDiskFailing", CONFIGURED, False),
    (KUBE, "NodeDiskFailing", CONFIGURED, False),
    # A source healer does not know owns nothing.
    ("test", "Ready", DEFAULT_OWNERSHIP, False),
    ("lab", "HeartbeatMissing", DEFAULT_OWNERSHIP, False),
]


@pytest.mark.parametrize(
    ("source", "condition", "owners", "allowed"),
    OWNERS,
    ids=[f"{s}-{c}-{'named' if o is CONFIGURED else 'default'}" for s, c, o, _ in OWNERS],
)
def test_ownership_table(source: str, condition: str, owners: Ownership, allowed: bool) -> None:
    assert owners.may_set(source, condition) is allowed
    explained = owners.explain(source, condition)
    assert (explained is None) is allowed
    if not allowed:
        assert explained is not None and condition in explained and source in explained


def test_refusal_says_who_owns_it_and_what_to_do() -> None:
    text = CONFIGURED.explain(MQTT, "Ready")
    assert text is not None
    assert "only the Kubernetes API sets it" in text
    assert "GpuFailed" in text and "mqtt.conditions" in text
    text = CONFIGURED.explain(WEBHOOK, "GpuFailed")
    assert text is not None and "only the mqtt source sets it" in text
    assert "webhook.conditions" in text


CONFIG_ERRORS = [
    ([], {}, []),
    (["GpuFailed"], {"disk": "NodeDiskFailing"}, []),
    (["Ready"], {}, ["mqtt.conditions: Ready is a Kubernetes node condition"]),
    (["gpu failed"], {}, ["'gpu failed' is not a CamelCase condition type"]),
    ([], {"KubeNodeNotReady": "Ready"}, ["webhook.conditions['KubeNodeNotReady']: Ready is a K"]),
    ([], {"x": "HeartbeatMissing"}, ["HeartbeatMissing belongs to the node agent (MQTT)"]),
    (["GpuFailed"], {"gpu": "GpuFailed"}, ["GpuFailed is also in mqtt.conditions"]),
    ([], {"x": "lower"}, ["'lower' is not a CamelCase condition type"]),
]


@pytest.mark.parametrize(("mqtt", "webhook", "expected"), CONFIG_ERRORS)
def test_config_errors(mqtt: list[str], webhook: dict[str, str], expected: list[str]) -> None:
    errors = config_errors(mqtt_conditions=mqtt, webhook_conditions=webhook)
    assert len(errors) == len(expected)
    for error, want in zip(errors, expected, strict=True):
        assert want in error


def with_sources(**top: Any) -> HealerConfig:
    cluster = {"name": "lab", "provider": {"plugin": "lab"}, "pools": [{"name": "w", "size": 1}]}
    return parse_config({"clusters": [cluster], **top})


def test_the_config_refuses_a_source_that_would_set_a_kubernetes_condition(tmp_path: Any) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    webhook = {"token": {"file": str(token)}, "conditions": {"KubeNodeNotReady": "Ready"}}
    with pytest.raises(ConfigError, match="Ready is a Kubernetes node condition"):
        with_sources(webhook=webhook)
    with pytest.raises(ConfigError, match=r"mqtt\.conditions: MemoryPressure"):
        with_sources(mqtt={"conditions": ["MemoryPressure"]})
    config = with_sources(mqtt={"conditions": ["GpuFailed"]})
    assert config.mqtt is not None and config.mqtt.conditions == ("GpuFailed",)


# -- MQTT ------------------------------------------------------------------------------------


def mqtt(
    condition: str, status: str = "False", owners: Ownership = DEFAULT_OWNERSHIP
) -> NodeEvent | MqttRejection:
    payload = json.dumps({"v": 1, "condition": condition, "status": status}).encode()
    return parse_message(
        "healer/v1/prod/node-1/health",
        payload,
        prefix="healer/v1",
        now=T0,
        max_payload=16384,
        owners=owners,
    )


MQTT_CASES = [
    ("Ready", "False", DEFAULT_OWNERSHIP, CONDITION_NOT_OWNED),
    ("Ready", "True", DEFAULT_OWNERSHIP, CONDITION_NOT_OWNED),
    ("Ready", "Unknown", CONFIGURED, CONDITION_NOT_OWNED),
    ("MemoryPressure", "True", DEFAULT_OWNERSHIP, CONDITION_NOT_OWNED),
    ("NetworkUnavailable", "True", DEFAULT_OWNERSHIP, CONDITION_NOT_OWNED),
    ("KernelDeadlock", "True", DEFAULT_OWNERSHIP, CONDITION_NOT_OWNED),
    ("NodeDiskFailing", "True", CONFIGURED, CONDITION_NOT_OWNED),  # the webhook's
    ("GpuFailed", "True", DEFAULT_OWNERSHIP, CONDITION_NOT_OWNED),  # not named
    ("GpuFailed", "True", CONFIGURED, None),
    ("RebootRequired", "False", DEFAULT_OWNERSHIP, None),
    ("UpgradeFailed", "False", DEFAULT_OWNERSHIP, None),
    ("HeartbeatMissing", "True", DEFAULT_OWNERSHIP, None),
]


@pytest.mark.parametrize(("condition", "status", "owners", "reason"), MQTT_CASES)
def test_mqtt_health_channel_sets_only_its_own_conditions(
    condition: str, status: str, owners: Ownership, reason: str | None
) -> None:
    result = mqtt(condition, status, owners)
    if reason is None:
        assert isinstance(result, NodeEvent)
        assert (result.condition, result.status, result.source) == (condition, status, "mqtt")
    else:
        assert isinstance(result, MqttRejection)
        assert result.reason == reason
        assert (result.cluster, result.node, result.condition) == ("prod", "node-1", condition)


def test_reboot_required_from_the_reboot_channel_is_still_accepted() -> None:
    payload = json.dumps({"v": 1, "event": "required"}).encode()
    result = parse_message(
        "healer/v1/prod/node-1/reboot", payload, prefix="healer/v1", now=T0, max_payload=16384
    )
    assert isinstance(result, NodeEvent) and result.condition == "RebootRequired"


# -- webhook ---------------------------------------------------------------------------------


def test_webhook_generic_sets_only_its_named_conditions() -> None:
    def post(condition: str, names: tuple[str, ...]) -> Parsed | WebhookRejection:
        body = json.dumps(
            {"cluster": "prod", "node": "node-1", "condition": condition, "status": "True"}
        ).encode()
        return parse_generic(
            body, known_clusters={"prod"}, now=T0, max_body=65536, conditions=names
        )

    refused = post("Ready", ("NodeDiskFailing",))
    assert isinstance(refused, WebhookRejection)
    assert refused.reason == CONDITION_NOT_OWNED and refused.status == 403
    assert "Kubernetes" in refused.message
    unnamed = post("NodeDiskFailing", ())
    assert isinstance(unnamed, WebhookRejection) and unnamed.reason == CONDITION_NOT_OWNED
    accepted = post("NodeDiskFailing", ("NodeDiskFailing",))
    assert isinstance(accepted, Parsed) and accepted.events[0].condition == "NodeDiskFailing"


def test_webhook_alerts_mapped_to_a_kubernetes_condition_are_rejected_one_by_one() -> None:
    def alert(name: str) -> dict[str, Any]:
        return {
            "status": "firing",
            "labels": {"alertname": name, "node": "node-1"},
            "startsAt": "2023-11-14T22:10:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": name.lower(),
        }

    body = json.dumps(
        {"version": "4", "alerts": [alert("Ready"), alert("disk"), alert("Unmapped")]}
    ).encode()
    rules = AlertRules(conditions={"disk": "NodeDiskFailing"})
    result = parse_alertmanager(
        body, path_cluster="prod", rules=rules, known_clusters={"prod"}, now=T0, max_body=65536
    )
    assert isinstance(result, Parsed)
    assert [e.condition for e in result.events] == ["NodeDiskFailing"]
    assert [(i, r.reason) for i, r in result.rejections] == [
        (0, CONDITION_NOT_OWNED),
        (2, CONDITION_NOT_OWNED),
    ]
    assert result.rejections[0][1].condition == "Ready"


# -- apply_event: the second line of defence ---------------------------------------------------


def fold(obs: NodeObservation | None, event: NodeEvent) -> NodeObservation:
    return apply_event(obs, event, exclude_label="healer.io/exclude", pool_roles={})


def condition(source: str, name: str, status: str, at: float) -> NodeEvent:
    return NodeEvent("lab", "w-1", EventKind.CONDITION, at, source, condition=name, status=status)


def test_apply_event_ignores_a_condition_its_source_does_not_own() -> None:
    obs = fold(None, NodeEvent("lab", "w-1", EventKind.NODE_ADDED, T0, "kube", labels={}))
    obs = fold(obs, condition("kube", "Ready", "True", T0))
    assert obs.conditions["Ready"] == ConditionObs("True", T0, "kube")
    forged = fold(obs, condition("mqtt", "Ready", "False", T0 + 1))
    assert forged == obs  # not even in the evidence
    forged = fold(obs, condition("webhook", "Ready", "False", T0 + 1))
    assert forged == obs
    agent = fold(obs, condition("mqtt", "HeartbeatMissing", "True", T0 + 2))
    assert agent.conditions["HeartbeatMissing"] == ConditionObs("True", T0 + 2, "mqtt")
    assert fold(agent, condition("kube", "HeartbeatMissing", "False", T0 + 3)) == agent


def test_condition_source_survives_json() -> None:
    obs = fold(None, NodeEvent("lab", "w-1", EventKind.NODE_ADDED, T0, "kube", labels={}))
    obs = fold(obs, condition("kube", "Ready", "Unknown", T0))
    back = NodeObservation.from_json(json.loads(json.dumps(obs.to_json())))
    assert back.conditions["Ready"].source == "kube"
    older = obs.to_json()
    del older["conditions"]["Ready"]["source"]  # a record from before provenance
    assert NodeObservation.from_json(older).conditions["Ready"] == ConditionObs("Unknown", T0)


async def test_tracker_logs_a_condition_whose_source_does_not_own_it(tmp_path: Any) -> None:
    from healer.clock import VirtualClock
    from healer.health.tracker import HealthTracker
    from healer.store.sqlite import Store

    clock = VirtualClock()
    store = Store.open(tmp_path / "state")
    tracker = HealthTracker(config=lab_like_config(), store=store, clock=clock)
    await tracker.handle(
        NodeEvent("lab", "w-1", EventKind.NODE_ADDED, clock.now(), "kube", labels={})
    )
    with capture_logs() as logs:
        await tracker.handle(condition("mqtt", "Ready", "False", clock.now()))
    refused = [e for e in logs if e["event"] == "health.condition_not_owned"]
    assert refused == [
        {
            "event": "health.condition_not_owned",
            "log_level": "warning",
            "cluster": "lab",
            "node": "w-1",
            "condition": "Ready",
            "status": "False",
            "source": "mqtt",
            "owner": "kube",
        }
    ]
    obs = tracker.observation(NodeEvent("lab", "w-1", EventKind.HEARTBEAT, 0, "x").key)
    assert obs is not None and "Ready" not in obs.conditions
    store.close()
