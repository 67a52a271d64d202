"""The two top-level sections: a cluster, and the whole file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    model_validator,
)

from healer.config.etcd import EtcdConfig
from healer.config.health import (
    DEFAULT_HEALTH,
    BreakerPolicy,
    ClusterRemediation,
    EffectiveHealth,
    EffectiveRemediation,
    HealthPolicy,
    RemediationPolicy,
)
from healer.config.ops import (
    MetricsConfig,
    OrphanPolicy,
    RebootPolicy,
    ScheduleConfig,
)
from healer.config.provenance import (
    HEARTBEAT_MISSING,
    Ownership,
    config_errors,
    corroboration_errors,
)
from healer.config.security import (
    AgentConfig,
    KubernetesConfig,
    PodSecurityConfig,
    RbacConfig,
    SshConfig,
    UpgradesConfig,
)
from healer.config.sources import MqttConfig, WebhookConfig
from healer.config.state import StateConfig
from healer.config.topology import (
    LoadBalancerConfig,
    NetworkConfig,
    PoolConfig,
    ProviderConfig,
)
from healer.config.types import (
    Cidr,
)
from healer.config.types import (
    ConfigModel as _Model,
)
from healer.model import Role


class ClusterConfig(_Model):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40)
    kubeconfig: Path | None = None
    context: str | None = None
    provider: ProviderConfig
    health: HealthPolicy = HealthPolicy()
    remediation: ClusterRemediation = ClusterRemediation()
    breaker: BreakerPolicy = BreakerPolicy()
    reboots: RebootPolicy = RebootPolicy()
    ssh: SshConfig = SshConfig()
    upgrades: UpgradesConfig = UpgradesConfig()
    agent: AgentConfig | None = None
    kubernetes: KubernetesConfig | None = None
    pod_security: PodSecurityConfig | None = Field(None, alias="podSecurity")
    rbac: RbacConfig | None = None
    network: NetworkConfig | None = Field(
        None, description="build a private network, firewall and API load balancer"
    )
    admin_cidrs: tuple[Cidr, ...] = Field(
        (), alias="adminCidrs", description="the only sources admitted to SSH (22)"
    )
    load_balancer: LoadBalancerConfig = Field(LoadBalancerConfig(), alias="loadBalancer")
    etcd: EtcdConfig = EtcdConfig()
    paused: bool = False
    pools: tuple[PoolConfig, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _pools(self) -> ClusterConfig:
        names = [p.name for p in self.pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pool names must be unique; repeated: {', '.join(dupes)}")
        cps = [p for p in self.pools if p.role is Role.CONTROL_PLANE]
        if len(cps) > 1:
            raise ValueError("at most one pool may have role 'control-plane'")
        if cps and cps[0].size % 2 == 0:
            raise ValueError(
                f"control-plane pool '{cps[0].name}' has size {cps[0].size}: etcd needs an odd "
                "number of members (1, 3, 5)"
            )
        return self

    def pool(self, name: str | None) -> PoolConfig | None:
        return next((p for p in self.pools if p.name == name), None)

    def control_plane_pool(self) -> PoolConfig | None:
        return next((p for p in self.pools if p.role is Role.CONTROL_PLANE), None)

    def health_for(self, pool: str | None) -> EffectiveHealth:
        p = self.pool(pool)
        layers = [DEFAULT_HEALTH, self.health, p.health if p else HealthPolicy()]
        merged: dict[str, Any] = {}
        for layer in layers:
            for key in (
                "unhealthy_conditions",
                "node_startup_timeout",
                "reboot_timeout",
                "corroborate",
            ):
                value = getattr(layer, key)
                if value is not None:
                    merged[key] = value
        return EffectiveHealth(**merged)

    def storm_cooldown(self) -> float:
        if self.remediation.storm_cooldown is not None:
            return self.remediation.storm_cooldown
        pools: list[str | None] = [None, *(p.name for p in self.pools)]
        return max(
            (c.timeout for name in pools for c in self.health_for(name).unhealthy_conditions),
            default=0.0,
        )

    def remediation_for(self, pool: str | None) -> EffectiveRemediation:
        p = self.pool(pool)
        r = self.remediation
        o = p.remediation if p else RemediationPolicy()
        return EffectiveRemediation(
            max_unhealthy=o.max_unhealthy if o.max_unhealthy is not None else r.max_unhealthy,
            max_in_flight=o.max_in_flight if o.max_in_flight is not None else r.max_in_flight,
            drain_timeout=o.drain_timeout if o.drain_timeout is not None else r.drain_timeout,
            strategy=o.strategy if o.strategy is not None else r.strategy,
        )


class HealerConfig(_Model):
    state_dir: Path | None = Field(None, alias="stateDir")
    dry_run: bool = Field(False, alias="dryRun")
    paused: bool = False
    log_format: Literal["auto", "json", "console"] = Field("auto", alias="logFormat")
    mqtt: MqttConfig | None = None
    webhook: WebhookConfig | None = None
    metrics: MetricsConfig | None = None
    orphans: OrphanPolicy = OrphanPolicy()
    schedule: ScheduleConfig = ScheduleConfig()
    state: StateConfig | None = None  # PostgreSQL state (docs/state-backends.md)
    clusters: tuple[ClusterConfig, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_clusters(self) -> HealerConfig:
        names = [c.name for c in self.clusters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"cluster names must be unique; repeated: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _condition_owners(self) -> HealerConfig:
        # Each condition has one owner (docs/mqtt.md, docs/webhook.md): no config may let MQTT
        # or the webhook speak for the Kubernetes API, or for each other; and a corroborating
        # signal must come from another owner than the signal it corroborates.
        mqtt_conditions = self.mqtt.conditions if self.mqtt else ()
        webhook_conditions = self.webhook.conditions if self.webhook else {}
        errors = config_errors(
            mqtt_conditions=mqtt_conditions, webhook_conditions=webhook_conditions
        )
        owners = Ownership.of(
            mqtt_conditions=mqtt_conditions, webhook_conditions=webhook_conditions.values()
        )
        for i, cluster in enumerate(self.clusters):
            # A pool that inherits the cluster's rules has them checked once, at the cluster
            # (and may well not use the condition an inherited rule guards).
            own = [p for p in cluster.pools if p.health.corroborate is not None]
            for pool in (None, *own):
                name = pool.name if pool else None
                where = f"clusters[{i}]" + (f" pool {name!r}" if name else "")
                errors += corroboration_errors(cluster.health_for(name), owners, where=where)
                heartbeats = self.mqtt is not None and self.mqtt.shared_group is None
                if not heartbeats and any(
                    r.require.type == HEARTBEAT_MISSING
                    for r in cluster.health_for(name).corroborate
                ):
                    errors.append(
                        f"{where}: health.corroborate requires {HEARTBEAT_MISSING}, which needs "
                        "the mqtt source without sharedGroup (the heartbeat watcher)"
                    )
        if errors:
            raise ValueError("; ".join(dict.fromkeys(errors)))
        return self

    def cluster(self, name: str) -> ClusterConfig | None:
        return next((c for c in self.clusters if c.name == name), None)
