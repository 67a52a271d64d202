"""Typed configuration, loaded from one YAML file and validated up front.

Errors name the file, the field path (``clusters[0].pools[1].remediation.maxUnhealthy``) and what
is wrong. Secrets are given by reference (``{env: NAME}``, ``{file: PATH}`` or, under systemd,
``{credential: NAME}``) and are only read when used; their values never appear in ``repr`` or
logs.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from healer.errors import ConfigError
from healer.model import Role

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``"5m"`` -> 300.0; plain numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s', '5m', '1h'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(
            f"invalid duration {value!r}: use seconds or a string like '30s', '5m', '1h'"
        )
    if seconds < 0 or math.isinf(seconds) or math.isnan(seconds):
        raise ValueError(f"invalid duration {value!r}: must be a finite, non-negative time")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class SecretRef(_Model):
    """A secret given by reference. Exactly one of ``env``, ``file`` or ``credential``.

    ``{credential: NAME}`` reads ``$CREDENTIALS_DIRECTORY/NAME``: the file systemd provides for
    ``LoadCredential=NAME:/path`` (see systemd/healer.service and docs/install.md), readable only
    by the service and never in its environment.
    """

    env: str | None = None
    file: Path | None = None
    credential: str | None = Field(None, pattern=r"^[A-Za-z0-9_.@-]{1,255}$")

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        given = [name for name in ("env", "file", "credential") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "a secret reference needs exactly one of 'env', 'file' or 'credential'"
            )
        return self

    def reveal(self) -> str:
        if self.credential is not None:
            directory = os.environ.get("CREDENTIALS_DIRECTORY")
            if not directory:
                raise ConfigError(
                    f"secret: credential {self.credential}: $CREDENTIALS_DIRECTORY is not set "
                    f"(start healer from its systemd unit with LoadCredential={self.credential}:"
                    "PATH, or use 'file' or 'env' outside systemd)"
                )
            path = Path(directory) / self.credential
            try:
                return path.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"secret: credential {self.credential}: cannot read {path}: {exc.strerror} "
                    f"(is there a LoadCredential={self.credential}:... line in the unit?)"
                ) from exc
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError(f"secret: environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            return self.file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"secret: cannot read {self.file}: {exc.strerror}") from exc

    def __repr__(self) -> str:
        if self.credential is not None:
            return f"SecretRef(credential:{self.credential})"
        where = f"env:{self.env}" if self.env else f"file:{self.file}"
        return f"SecretRef({where})"


class Threshold(_Model):
    """A limit given as a count (``2``) or a percentage of the scope (``"40%"``)."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, value: Any) -> Threshold:
        if isinstance(value, Threshold):
            return value
        if isinstance(value, bool):
            raise ValueError("expected a count like 2 or a percentage like '40%'")
        if isinstance(value, int):
            if value < 0:
                raise ValueError("a count must be >= 0")
            return cls(count=value)
        if isinstance(value, str):
            text = value.strip()
            if text.endswith("%"):
                try:
                    pct = float(text[:-1])
                except ValueError:
                    pass
                else:
                    if 0 <= pct <= 100:
                        return cls(percent=pct)
                raise ValueError(f"invalid percentage {value!r}: use a value from '0%' to '100%'")
            if text.isdigit():
                return cls(count=int(text))
        raise ValueError(f"invalid limit {value!r}: use a count like 2 or a percentage like '40%'")

    def limit_for(self, total: int) -> int:
        """The allowed number for a scope of ``total`` (percentages round down, as Cluster API)."""
        if self.count is not None:
            return self.count
        assert self.percent is not None
        return math.floor(total * self.percent / 100.0 + 1e-9)

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.percent:g}%"


ThresholdField = Annotated[Threshold, BeforeValidator(Threshold.parse)]


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


class MachineSpec(_Model):
    size: str = "small"
    image: str = "debian-12"
    location: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class PoolConfig(_Model):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40)
    role: Role = Role.WORKER
    size: int = Field(ge=0, le=10000)
    machine: MachineSpec = MachineSpec()
    labels: dict[str, str] = Field(default_factory=dict)
    health: HealthPolicy = HealthPolicy()
    remediation: RemediationPolicy = RemediationPolicy()


class ProviderConfig(_Model):
    plugin: str = Field(description="entry-point name in the 'healer.providers' group")
    options: dict[str, Any] = Field(default_factory=dict)
    credentials: dict[str, SecretRef] = Field(default_factory=dict)


def _cidr(value: Any) -> str:
    """An IPv4 or IPv6 network in CIDR notation, without host bits (``10.0.0.0/16``)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR string like '10.0.0.0/16', got {value!r}")
    try:
        return str(ipaddress.ip_network(value.strip(), strict=True))
    except ValueError as exc:
        raise ValueError(f"invalid CIDR {value!r}: {exc}") from None


Cidr = Annotated[str, BeforeValidator(_cidr)]


class NetworkConfig(_Model):
    """The cluster's private network and its one subnet (provisioning; docs/provisioning.md)."""

    cidr: Cidr
    subnet_cidr: Cidr = Field(alias="subnetCidr")
    location: str | None = Field(
        None,
        description="the subnet's zone (EC2, lab) or region (GCE); default: the control-plane "
        "pool's location",
    )
    public_ips: bool = Field(
        False, alias="publicIps", description="give every machine a public address as well"
    )

    @model_validator(mode="after")
    def _inside(self) -> NetworkConfig:
        net, sub = ipaddress.ip_network(self.cidr), ipaddress.ip_network(self.subnet_cidr)
        if sub.version != net.version or not sub.subnet_of(net):  # type: ignore[arg-type]
            raise ValueError(f"subnetCidr {self.subnet_cidr} is not inside cidr {self.cidr}")
        return self


class HealthCheckConfig(_Model):
    protocol: Literal["tcp", "http", "https"] = "https"
    port: int = Field(6443, ge=1, le=65535)
    path: str = "/readyz"
    interval: Duration = 10.0
    timeout: Duration = 5.0
    healthy_threshold: int = Field(2, alias="healthyThreshold", ge=2, le=10)
    unhealthy_threshold: int = Field(3, alias="unhealthyThreshold", ge=2, le=10)


class LoadBalancerConfig(_Model):
    """The API load balancer in front of the control-plane pool (needs ``network``)."""

    enabled: bool = True
    port: int = Field(6443, ge=1, le=65535)
    internal: bool = Field(False, description="no public address; reachable inside the network")
    api_cidrs: tuple[Cidr, ...] | None = Field(
        None, alias="apiCidrs", description="who may reach the API (default: adminCidrs)"
    )
    health_check: HealthCheckConfig = Field(HealthCheckConfig(), alias="healthCheck")


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


class SshConfig(_Model):
    """The one SSH key authorised on every machine of the cluster. Without ``publicKey`` or
    ``publicKeyFile`` healer generates an ed25519 key pair for the cluster in its state dir."""

    user: str = Field(
        "healer",
        pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
        description="the only login user: sudo without password, no password login",
    )
    public_key: str | None = Field(None, alias="publicKey")
    public_key_file: Path | None = Field(None, alias="publicKeyFile")

    @field_validator("public_key")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from healer.provisioning.sshkeys import parse_public_key  # cryptography: lazy

        return parse_public_key(value)

    @model_validator(mode="after")
    def _one_key(self) -> SshConfig:
        if self.public_key is not None and self.public_key_file is not None:
            raise ValueError("give at most one of 'publicKey' or 'publicKeyFile'")
        return self


class UpgradesConfig(_Model):
    """Unattended security upgrades on every machine (the distribution's security origins)."""

    enabled: bool = True
    automatic_reboot: bool = Field(
        True,
        alias="automaticReboot",
        description="reboot when an upgrade needs it; the node agent asks healer when",
    )


class AgentConfig(_Model):
    """How the node agent on every machine reaches the MQTT broker."""

    broker_host: str = Field(alias="brokerHost", min_length=1)
    broker_port: int = Field(8883, alias="brokerPort", ge=1, le=65535)
    tls: bool = True
    tls_ca: Path | None = Field(None, alias="tlsCa", description="CA file, installed on machines")
    username: str | None = None
    password: SecretRef | None = None
    topic_prefix: str = Field("healer/v1", alias="topicPrefix")
    heartbeat_interval: Duration = Field(30.0, alias="heartbeatInterval", gt=0)


class EncryptionAtRest(_Model):
    provider: Literal["secretbox", "aescbc"] = "secretbox"


class AuditConfig(_Model):
    enabled: bool = False
    policy_file: Path | None = Field(None, alias="policyFile")
    max_age_days: int = Field(30, alias="maxAgeDays", ge=1)
    max_backups: int = Field(10, alias="maxBackups", ge=1)
    max_size_mb: int = Field(100, alias="maxSizeMb", ge=1)


class KubernetesConfig(_Model):
    """How healer bootstraps Kubernetes on its machines with kubeadm."""

    version: str = Field("v1.31.4", pattern=r"^v?\d+\.\d+\.\d+$")
    control_plane_endpoint: str | None = Field(
        None,
        alias="controlPlaneEndpoint",
        description="host[:port] of the API; default: the load balancer healer created",
    )
    extra_sans: tuple[str, ...] = Field((), alias="extraSans")
    pod_subnet: str = Field("10.244.0.0/16", alias="podSubnet")
    service_subnet: str = Field("10.96.0.0/12", alias="serviceSubnet")
    dns_domain: str = Field("cluster.local", alias="dnsDomain")
    install_packages: bool = Field(True, alias="installPackages")
    encryption: EncryptionAtRest = EncryptionAtRest()
    audit: AuditConfig = AuditConfig()
    bootstrap_token: SecretRef | None = Field(None, alias="bootstrapToken")
    bootstrap_token_ttl: Duration = Field(86400.0, alias="bootstrapTokenTtl", gt=0)

    @field_validator("version")
    @classmethod
    def _v_prefix(cls, value: str) -> str:
        return value if value.startswith("v") else f"v{value}"

    @field_validator("pod_subnet", "service_subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_network(value, strict=True))
        except ValueError as exc:
            raise ValueError(f"invalid subnet {value!r}: {exc}") from None


PsaLevel = Literal["privileged", "baseline", "restricted"]


class PodSecurityLevels(_Model):
    """Pod Security Admission levels for a namespace; an unset mode is not labelled."""

    enforce: PsaLevel | None = None
    audit: PsaLevel | None = None
    warn: PsaLevel | None = None
    version: str | None = Field(None, pattern=r"^(latest|v1\.\d+)$")


class PodSecurityConfig(_Model):
    default: PodSecurityLevels = PodSecurityLevels()
    namespaces: dict[str, PodSecurityLevels] = Field(default_factory=dict)
    exempt_namespaces: tuple[str, ...] = Field(("kube-system",), alias="exemptNamespaces")

    @model_validator(mode="after")
    def _no_overlap(self) -> PodSecurityConfig:
        both = sorted(set(self.namespaces) & set(self.exempt_namespaces))
        if both:
            raise ValueError(f"namespaces both configured and exempt: {', '.join(both)}")
        return self


_RBAC_NAME = r"^[a-zA-Z0-9][-a-zA-Z0-9_.:]*$"
_NAMESPACE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class PolicyRuleConfig(_Model):
    api_groups: tuple[str, ...] = Field((), alias="apiGroups")
    resources: tuple[str, ...] = ()
    verbs: tuple[str, ...] = Field(min_length=1)
    resource_names: tuple[str, ...] = Field((), alias="resourceNames")
    non_resource_urls: tuple[str, ...] = Field((), alias="nonResourceURLs")


class RoleConfig(_Model):
    name: str = Field(pattern=_RBAC_NAME, max_length=253)
    namespace: str | None = Field(None, pattern=_NAMESPACE)
    rules: tuple[PolicyRuleConfig, ...] = ()


class RoleRefConfig(_Model):
    kind: Literal["Role", "ClusterRole"]
    name: str = Field(pattern=_RBAC_NAME)


class SubjectConfig(_Model):
    kind: Literal["User", "Group", "ServiceAccount"]
    name: str = Field(min_length=1)
    namespace: str | None = Field(None, pattern=_NAMESPACE)

    @model_validator(mode="after")
    def _sa_namespace(self) -> SubjectConfig:
        if self.kind == "ServiceAccount" and self.namespace is None:
            raise ValueError(f"ServiceAccount subject {self.name!r} needs a namespace")
        return self


class BindingConfig(_Model):
    """A RoleBinding when ``namespace`` is set, else a ClusterRoleBinding."""

    name: str = Field(pattern=_RBAC_NAME, max_length=253)
    namespace: str | None = Field(None, pattern=_NAMESPACE)
    role_ref: RoleRefConfig = Field(alias="roleRef")
    subjects: tuple[SubjectConfig, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _ref(self) -> BindingConfig:
        if self.namespace is None and self.role_ref.kind == "Role":
            raise ValueError(
                f"binding {self.name!r} has no namespace (a ClusterRoleBinding) and so can only "
                "reference a ClusterRole"
            )
        return self


class RbacConfig(_Model):
    roles: tuple[RoleConfig, ...] = ()
    cluster_roles: tuple[RoleConfig, ...] = Field((), alias="clusterRoles")
    bindings: tuple[BindingConfig, ...] = ()

    @model_validator(mode="after")
    def _shape(self) -> RbacConfig:
        for role in self.roles:
            if role.namespace is None:
                raise ValueError(f"role {role.name!r} needs a namespace (or is it a clusterRole?)")
        for role in self.cluster_roles:
            if role.namespace is not None:
                raise ValueError(f"clusterRole {role.name!r} cannot have a namespace")
        seen: set[tuple[str, str | None, str]] = set()
        groups = (("Role", self.roles), ("ClusterRole", self.cluster_roles))
        for kind, items in (*groups, ("Binding", self.bindings)):
            for item in items:
                key = (kind, item.namespace, item.name)
                if key in seen:
                    where = f" in namespace {item.namespace}" if item.namespace else ""
                    raise ValueError(f"{kind} {item.name!r}{where} is defined twice")
                seen.add(key)
        return self


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

    def health_for(self, pool: str | None) -> EffectiveHealth:
        p = self.pool(pool)
        layers = [DEFAULT_HEALTH, self.health, p.health if p else HealthPolicy()]
        merged: dict[str, Any] = {}
        for layer in layers:
            for key in ("unhealthy_conditions", "node_startup_timeout", "reboot_timeout"):
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
        )


class EffectiveHealth(_Model):
    unhealthy_conditions: tuple[UnhealthyCondition, ...]
    node_startup_timeout: float
    reboot_timeout: float


class EffectiveRemediation(_Model):
    max_unhealthy: Threshold
    max_in_flight: int
    drain_timeout: float


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

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) else value

    @model_validator(mode="after")
    def _shared_needs_v5(self) -> MqttConfig:
        if self.shared_group is not None and self.protocol != "5":
            raise ValueError("sharedGroup needs protocol '5' (shared subscriptions are MQTT 5)")
        return self


def _parse_listen(value: Any) -> Any:
    """``"0.0.0.0:9095"`` or ``"[::1]:9095"`` -> ``("0.0.0.0", 9095)``."""
    if not isinstance(value, str):
        return value
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"invalid listen address {value!r}: use 'HOST:PORT', e.g. '0.0.0.0:9095'")
    return (host.removeprefix("[").removesuffix("]"), int(port))


ListenAddress = Annotated[tuple[str, int], BeforeValidator(_parse_listen)]


class WebhookConfig(_Model):
    """The alert webhook (Alertmanager v4 and the generic format); see docs/webhook.md."""

    listen: ListenAddress = ("0.0.0.0", 9095)
    metrics_listen: ListenAddress | None = Field(
        None,
        alias="metricsListen",
        description="serve /healthz and /metrics here instead of on the webhook listener",
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
        default_factory=dict, description="alertname -> node condition type (default: alertname)"
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
    """Intervals of the periodic jobs (healer.scheduler). ``0`` turns a job off."""

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
    clusters: tuple[ClusterConfig, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_clusters(self) -> HealerConfig:
        names = [c.name for c in self.clusters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"cluster names must be unique; repeated: {', '.join(dupes)}")
        return self

    def cluster(self, name: str) -> ClusterConfig | None:
        return next((c for c in self.clusters if c.name == name), None)


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith(("function-", "constrained-")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def format_validation_error(source: str, exc: ValidationError) -> str:
    errors = exc.errors()
    # A failing item also makes pydantic report its container as too short; that is noise.
    failing = [tuple(e["loc"]) for e in errors if e["type"] != "too_short"]
    errors = [
        e
        for e in errors
        if e["type"] != "too_short"
        or not any(loc[: len(e["loc"])] == tuple(e["loc"]) for loc in failing)
    ]
    lines = [f"{source}: invalid configuration ({len(errors)} problem(s))"]
    for err in errors:
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {_field_path(tuple(err['loc']))}: {msg}")
    return "\n".join(lines)


def parse_config(
    data: Any, *, source: str = "<config>", base_dir: Path | None = None
) -> HealerConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a 'clusters' list")
    try:
        cfg = HealerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None
    if base_dir is not None:
        cfg = _resolve_paths(cfg, base_dir)
    return cfg


def _resolve_paths(cfg: HealerConfig, base: Path) -> HealerConfig:
    """Relative paths in the file are relative to the file, not to the working directory."""

    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p)

    clusters = tuple(
        _resolve_provisioning_paths(c.model_copy(update={"kubeconfig": fix(c.kubeconfig)}), fix)
        for c in cfg.clusters
    )
    return cfg.model_copy(update={"clusters": clusters, "state_dir": fix(cfg.state_dir)})


def _resolve_provisioning_paths(
    c: ClusterConfig, fix: Callable[[Path | None], Path | None]
) -> ClusterConfig:
    update: dict[str, Any] = {}
    if c.ssh.public_key_file is not None:
        update["ssh"] = c.ssh.model_copy(update={"public_key_file": fix(c.ssh.public_key_file)})
    if c.agent is not None and c.agent.tls_ca is not None:
        update["agent"] = c.agent.model_copy(update={"tls_ca": fix(c.agent.tls_ca)})
    if c.kubernetes is not None and c.kubernetes.audit.policy_file is not None:
        audit = c.kubernetes.audit.model_copy(
            update={"policy_file": fix(c.kubernetes.audit.policy_file)}
        )
        update["kubernetes"] = c.kubernetes.model_copy(update={"audit": audit})
    return c.model_copy(update=update) if update else c


def load_config(path: str | Path) -> HealerConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_config(data, source=str(path), base_dir=path.parent.resolve())
