"""Typed configuration, loaded from one YAML file and validated up front.

Errors name the file, the field path (``clusters[0].pools[1].remediation.maxUnhealthy``) and what
is wrong. One module per area: ``types`` (durations, limits, secret references), ``health``,
``infra``, ``security``, ``sources``, ``ops``, ``model`` (cluster and file) and ``loader``.
Everything is re-exported here, so ``from healer.config import X`` is the way in.
"""

from healer.config.etcd import EtcdConfig
from healer.config.health import (
    DEFAULT_HEALTH,
    BreakerPolicy,
    ClusterRemediation,
    ConditionMatch,
    Corroboration,
    EffectiveHealth,
    EffectiveRemediation,
    HealthPolicy,
    RemediationPolicy,
    RetryPolicy,
    UnhealthyCondition,
)
from healer.config.loader import (
    format_validation_error,
    load_config,
    parse_config,
)
from healer.config.model import (
    ClusterConfig,
    HealerConfig,
)
from healer.config.ops import (
    MaintenanceWindow,
    MetricsConfig,
    OrphanPolicy,
    PrometheusAlerts,
    RebootConcurrency,
    RebootNotify,
    RebootPolicy,
    ScheduleConfig,
)
from healer.config.security import (
    AgentConfig,
    AuditConfig,
    BindingConfig,
    CniConfig,
    EncryptionAtRest,
    KubernetesConfig,
    PodSecurityConfig,
    PodSecurityLevels,
    PolicyRuleConfig,
    PsaLevel,
    RbacConfig,
    RoleConfig,
    RoleRefConfig,
    SshConfig,
    SubjectConfig,
    UpgradesConfig,
)
from healer.config.sources import (
    MqttConfig,
    WebhookConfig,
)
from healer.config.topology import (
    HealthCheckConfig,
    LoadBalancerConfig,
    MachineSpec,
    NetworkConfig,
    PoolConfig,
    ProviderConfig,
)
from healer.config.types import (
    Cidr,
    ConfigModel,
    Duration,
    ListenAddress,
    SecretRef,
    Threshold,
    ThresholdField,
    parse_duration,
)
from healer.errors import ConfigError

__all__ = [
    "DEFAULT_HEALTH",
    "AgentConfig",
    "AuditConfig",
    "BindingConfig",
    "BreakerPolicy",
    "Cidr",
    "ClusterConfig",
    "ClusterRemediation",
    "CniConfig",
    "ConditionMatch",
    "ConfigError",
    "ConfigModel",
    "Corroboration",
    "Duration",
    "EffectiveHealth",
    "EffectiveRemediation",
    "EncryptionAtRest",
    "EtcdConfig",
    "HealerConfig",
    "HealthCheckConfig",
    "HealthPolicy",
    "KubernetesConfig",
    "ListenAddress",
    "LoadBalancerConfig",
    "MachineSpec",
    "MaintenanceWindow",
    "MetricsConfig",
    "MqttConfig",
    "NetworkConfig",
    "OrphanPolicy",
    "PodSecurityConfig",
    "PodSecurityLevels",
    "PolicyRuleConfig",
    "PoolConfig",
    "PrometheusAlerts",
    "ProviderConfig",
    "PsaLevel",
    "RbacConfig",
    "RebootConcurrency",
    "RebootNotify",
    "RebootPolicy",
    "RemediationPolicy",
    "RetryPolicy",
    "RoleConfig",
    "RoleRefConfig",
    "ScheduleConfig",
    "SecretRef",
    "SshConfig",
    "SubjectConfig",
    "Threshold",
    "ThresholdField",
    "UnhealthyCondition",
    "UpgradesConfig",
    "WebhookConfig",
    "format_validation_error",
    "load_config",
    "parse_config",
    "parse_duration",
]
