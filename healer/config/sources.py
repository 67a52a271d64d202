"""Event sources: the MQTT broker and the alert webhook."""

from __future__ import annotations

from pathlib import Path
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
    ListenAddress,
    SecretRef,
)


class MqttConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: str = Field("healer/v1", alias="topicPrefix")
    client_id: str = Field("healer", alias="clientId")
    protocol: Literal["5", "3.1.1"] = "5"
    username: str | None = None
    password: SecretRef | None = None
    tls_ca: Path | None = Field(None, alias="tlsCa")
    tls_cert: Path | None = Field(None, alias="tlsCert")
    tls_key: Path | None = Field(None, alias="tlsKey")
    session_expiry: Duration = Field(86400.0, alias="sessionExpiry")
    max_payload: int = Field(16384, alias="maxPayload", ge=64)
    shared_group: str | None = Field(
        None,
        alias="sharedGroup",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="subscribe as $share/<group>/... so daemons in the group split the stream "
        "(MQTT 5); see docs/mqtt.md for what that disables",
    )
    heartbeat_interval: Duration = Field(
        30.0, alias="heartbeatInterval", gt=0, description="how often agents send a heartbeat"
    )
    heartbeat_miss_after: int = Field(
        3,
        alias="heartbeatMissAfter",
        ge=1,
        le=1000,
        description="HeartbeatMissing=True after this many intervals without a heartbeat",
    )
    reboot_arbiter: bool = Field(
        True, alias="rebootArbiter", description="answer agents' reboot-request messages"
    )
    conditions: tuple[str, ...] = Field(
        (),
        description="node conditions the agents may report on the health channel besides "
        "their built-in HeartbeatMissing, RebootRequired and UpgradeFailed (never a Kubernetes "
        "condition such as Ready: those come only from the Kubernetes API)",
    )

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) else value

    @model_validator(mode="after")
    def _shared_needs_v5(self) -> MqttConfig:
        if self.shared_group is not None and self.protocol != "5":
            raise ValueError("sharedGroup needs protocol '5' (shared subscriptions are MQTT 5)")
        return self


class WebhookConfig(_Model):
    """The alert webhook (Alertmanager v4 and the generic format); see docs/webhook.md."""

    listen: ListenAddress = Field(
        ("127.0.0.1", 9095),
        description="where the webhook listens: loopback unless you name another address",
    )
    metrics_listen: ListenAddress | None = Field(
        ("127.0.0.1", 9096),
        alias="metricsListen",
        description="/healthz and /metrics on their own listener (never on 'listen'); not "
        "started when the top-level 'metrics' is set (that listener serves them) or when null",
    )
    header_timeout: Duration = Field(
        10.0,
        alias="headerTimeout",
        gt=0,
        le=300,
        description="a connection must send a whole request head within this of connecting "
        "or of its last response, or it is closed (slow senders, idle keep-alive)",
    )
    body_timeout: Duration = Field(
        30.0,
        alias="bodyTimeout",
        gt=0,
        le=600,
        description="the whole body must arrive within this, or 408 and the connection closed",
    )
    max_connections: int = Field(
        1000,
        alias="maxConnections",
        ge=1,
        le=100_000,
        description="open connections at most: at the cap the oldest that has sent no request "
        "makes room, or the new one is closed at once (counted). Lowered at start to leave file "
        "descriptors for the cluster and cloud clients (docs/webhook.md)",
    )
    max_requests_per_connection: int = Field(
        100,
        alias="maxRequestsPerConnection",
        ge=1,
        le=100_000,
        description="a keep-alive connection is closed after this many requests",
    )
    token: SecretRef | None = Field(None, description="bearer token callers must present")
    hmac_secret: SecretRef | None = Field(
        None, alias="hmacSecret", description="key for X-Healer-Signature (HMAC-SHA256)"
    )
    max_skew: Duration = Field(300.0, alias="maxSkew", gt=0)
    allow_unauthenticated: bool = Field(False, alias="allowUnauthenticated")
    tls_cert: Path | None = Field(None, alias="tlsCert")
    tls_key: Path | None = Field(None, alias="tlsKey")
    max_body: int = Field(262144, alias="maxBody", ge=1024, le=64 * 1024 * 1024)
    node_labels: tuple[str, ...] = Field(
        ("node", "kubernetes_node", "instance", "nodename", "hostname"),
        alias="nodeLabels",
        min_length=1,
    )
    cluster_label: str = Field("cluster", alias="clusterLabel")
    conditions: dict[str, str] = Field(
        default_factory=dict,
        description="alertname -> node condition type; the webhook sets only the types named "
        "here (an alert not listed uses its alertname, which must then be one of them)",
    )
    blocking_alerts: tuple[str, ...] = Field((), alias="blockingAlerts")
    block_ttl: Duration = Field(
        21600.0,
        alias="blockTtl",
        gt=0,
        description="a blocking alert not re-sent (or resolved) for this long stops blocking",
    )

    @model_validator(mode="after")
    def _auth_and_tls(self) -> WebhookConfig:
        if self.token is None and self.hmac_secret is None and not self.allow_unauthenticated:
            raise ValueError(
                "the webhook needs 'token' and/or 'hmacSecret' (or allowUnauthenticated: true "
                "on a network you trust)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both 'tlsCert' and 'tlsKey'")
        return self
