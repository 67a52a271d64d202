"""Typed configuration, loaded from one YAML file and validated up front.

Errors name the file, the field path (``clusters[0].pools[1].remediation.maxUnhealthy``) and what
is wrong. One module per area: ``types`` (durations, limits, secret references), ``health``,
``infra``, ``security``, ``sources``, ``ops``, ``model`` (cluster and file) and ``loader``.
Everything is re-exported here, so ``from healer.config import X`` is the way in.

Loaded lazily (PEP 562): importing :mod:`healer.config` (or a pydantic-free module of it, such as
:mod:`healer.config.summary`, which ``healer status`` reads) builds no pydantic model; the first
use of a name imports the module that defines it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# name -> the module that defines it (imported on first use)
_HOME = {
    "AgentConfig": "healer.config.security",
    "AuditConfig": "healer.config.security",
    "BindingConfig": "healer.config.security",
    "BreakerPolicy": "healer.config.health",
    "Cidr": "healer.config.types",
    "ClusterConfig": "healer.config.model",
    "ClusterRemediation": "healer.config.health",
    "CniConfig": "healer.config.security",
    "ConditionMatch": "healer.config.health",
    "ConfigError": "healer.errors",
    "ConfigModel": "healer.config.types",
    "Corroboration": "healer.config.health",
    "DEFAULT_HEALTH": "healer.config.health",
    "Duration": "healer.config.types",
    "EffectiveHealth": "healer.config.health",
    "EffectiveRemediation": "healer.config.health",
    "EncryptionAtRest": "healer.config.security",
    "EtcdConfig": "healer.config.etcd",
    "HealerConfig": "healer.config.model",
    "HealthCheckConfig": "healer.config.topology",
    "HealthPolicy": "healer.config.health",
    "KubernetesConfig": "healer.config.security",
    "ListenAddress": "healer.config.types",
    "LoadBalancerConfig": "healer.config.topology",
    "MachineSpec": "healer.config.topology",
    "MaintenanceWindow": "healer.config.ops",
    "MetricsConfig": "healer.config.ops",
    "MqttConfig": "healer.config.sources",
    "NetworkConfig": "healer.config.topology",
    "OrphanPolicy": "healer.config.ops",
    "PodSecurityConfig": "healer.config.security",
    "PodSecurityLevels": "healer.config.security",
    "PolicyRuleConfig": "healer.config.security",
    "PoolConfig": "healer.config.topology",
    "PrometheusAlerts": "healer.config.ops",
    "ProviderConfig": "healer.config.topology",
    "PsaLevel": "healer.config.security",
    "RbacConfig": "healer.config.security",
    "RebootConcurrency": "healer.config.ops",
    "RebootNotify": "healer.config.ops",
    "RebootPolicy": "healer.config.ops",
    "RemediationPolicy": "healer.config.health",
    "RetryPolicy": "healer.config.health",
    "RoleConfig": "healer.config.security",
    "RoleRefConfig": "healer.config.security",
    "ScheduleConfig": "healer.config.ops",
    "SecretRef": "healer.config.types",
    "SshConfig": "healer.config.security",
    "SubjectConfig": "healer.config.security",
    "Threshold": "healer.config.types",
    "ThresholdField": "healer.config.types",
    "UnhealthyCondition": "healer.config.health",
    "UpgradesConfig": "healer.config.security",
    "WebhookConfig": "healer.config.sources",
    "format_validation_error": "healer.config.loader",
    "load_config": "healer.config.loader",
    "parse_config": "healer.config.loader",
    "parse_duration": "healer.config.types",
}

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


if not TYPE_CHECKING:  # type checkers see the imports above, and a misspelt name stays an error

    def __getattr__(name: str) -> Any:
        home = _HOME.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        globals()[name] = value  # once: later lookups do not come here
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(_HOME))
