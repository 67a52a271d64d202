"""Machine hardening and cluster security: SSH, upgrades, the node agent, kubeadm, Pod Security,
RBAC.
"""

from __future__ import annotations

import ipaddress
import shlex
from pathlib import Path
from typing import Literal

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
    SecretRef,
)


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
    private_key_file: Path | None = Field(
        None,
        alias="privateKeyFile",
        description="the private key of a configured publicKey/publicKeyFile, for the key "
        "push to control-plane machines; default: the key healer generated (or ssh-agent)",
    )
    address: Literal["private", "public"] = Field(
        "private",
        description="which address of a machine healer connects to for the key push",
    )
    proxy_jump: str | None = Field(
        None,
        alias="proxyJump",
        pattern=r"^[A-Za-z0-9_.@:\[\]-]+(,[A-Za-z0-9_.@:\[\]-]+)*$",
        description="bastion(s) to reach private machines through, as ssh -J takes them "
        "([user@]host[:port], comma-separated)",
    )
    port: int = Field(22, ge=1, le=65535)

    @field_validator("public_key")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from healer.config.ssh_key import parse_public_key  # cryptography: lazy

        return parse_public_key(value)

    @model_validator(mode="after")
    def _one_key(self) -> SshConfig:
        if self.public_key is not None and self.public_key_file is not None:
            raise ValueError("give at most one of 'publicKey' or 'publicKeyFile'")
        return self


class UpgradesConfig(_Model):
    """Unattended security upgrades on every machine: the Debian-Security origins only."""

    enabled: bool = True
    origins: tuple[str, ...] = Field(
        (
            "origin=Debian,codename=${distro_codename}-security,label=Debian-Security",
            "origin=Debian,codename=${distro_codename},label=Debian-Security",
        ),
        min_length=1,
        description="unattended-upgrades Origins-Pattern entries; default: Debian's security "
        "archive only (the distribution default also takes every point-release update)",
    )
    automatic_reboot: bool | None = Field(
        None,
        alias="automaticReboot",
        description="reboot when an upgrade needs it. Unset: only through the node agent, "
        "when healer's arbiter permits (never on the machine's own); true: also without the "
        "agent, by unattended-upgrades at 02:00, unarbitrated (validate warns); false: never",
    )

    @field_validator("origins")
    @classmethod
    def _origin_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            # Each entry becomes one quoted apt.conf list item.
            if not origin.strip() or any(c in origin for c in '";{}\n\\'):
                raise ValueError(f"{origin!r} is not an Origins-Pattern entry")
        return value

    def reboots_unarbitrated(self, *, agent: bool) -> bool:
        """Whether machines reboot on their own, at unattended-upgrades' time and not when
        healer permits: only on an explicit ``automaticReboot: true`` without the agent."""
        return self.enabled and self.automatic_reboot is True and not agent

    def reboots_through_agent(self, *, agent: bool) -> bool:
        """Whether the node agent asks healer to reboot when an upgrade needs it."""
        return self.enabled and self.automatic_reboot is not False and agent


class AgentConfig(_Model):
    """How the node agent on every machine reaches the MQTT broker, and how it tells that the
    machine needs a reboot (docs/agent.md)."""

    broker_host: str = Field(alias="brokerHost", min_length=1)
    broker_port: int = Field(8883, alias="brokerPort", ge=1, le=65535)
    tls: bool = True
    tls_ca: Path | None = Field(None, alias="tlsCa", description="CA file, installed on machines")
    username: str | None = None
    password: SecretRef | None = None
    topic_prefix: str = Field("healer/v1", alias="topicPrefix")
    heartbeat_interval: Duration = Field(30.0, alias="heartbeatInterval", gt=0)
    reboot_sentinel_file: str | None = Field(
        None,
        alias="rebootSentinelFile",
        pattern=r"^/[^\n\x00]*$",
        description="the file whose existence means 'reboot required' (kured's "
        "--reboot-sentinel); default /var/run/reboot-required",
    )
    reboot_sentinel_command: tuple[str, ...] = Field(
        (),
        alias="rebootSentinelCommand",
        description="instead of the file: a command whose exit status 0 means 'reboot "
        "required' (kured's --reboot-sentinel-command); a list of arguments, or a string split "
        "like a shell would; run without a shell (write sh -c '...' for one)",
    )
    reboot_sentinel_timeout: Duration = Field(
        30.0,
        alias="rebootSentinelTimeout",
        gt=0,
        description="the command is killed after this long, and a reboot taken as not required",
    )

    @field_validator("reboot_sentinel_command", mode="before")
    @classmethod
    def _split_command(cls, value: object) -> object:
        # A string as kured takes its flag: split like a shell would, never run by one.
        return shlex.split(value) if isinstance(value, str) else value

    @field_validator("reboot_sentinel_command")
    @classmethod
    def _one_line_arguments(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Each argument goes into one line of the agent's env file.
        if value and not value[0]:
            raise ValueError("the command's program is empty")
        for argument in value:
            if "\n" in argument or "\x00" in argument:
                raise ValueError(f"{argument!r}: an argument cannot hold a line break or NUL")
        return value


class EncryptionAtRest(_Model):
    provider: Literal["secretbox", "aescbc"] = "secretbox"


class AuditConfig(_Model):
    enabled: bool = False
    policy_file: Path | None = Field(None, alias="policyFile")
    max_age_days: int = Field(30, alias="maxAgeDays", ge=1)
    max_backups: int = Field(10, alias="maxBackups", ge=1)
    max_size_mb: int = Field(100, alias="maxSizeMb", ge=1)


class CniConfig(_Model):
    """The pod network installed by the first control-plane machine: a manifest fetched over
    HTTPS, applied only when its sha256 matches. Default: Calico, version pinned; its IPv4 pool
    is set to ``kubernetes.podSubnet``."""

    install: bool = True
    manifest_url: str = Field(
        "https://raw.githubusercontent.com/projectcalico/calico/v3.32.1/manifests/calico.yaml",
        alias="manifestUrl",
        pattern=r"^https://[^\s'\"$`\\]+$",
    )
    sha256: str = Field(
        "a1df919d9721cf667accdc3e72848911b0cb25cfab7d2478ad0c996302c95744",
        pattern=r"^[0-9a-f]{64}$",
    )


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
    cni: CniConfig = CniConfig()
    key_wait: Duration = Field(
        1800.0,
        alias="keyWait",
        gt=0,
        description="how long a control-plane machine waits for healer to push its keys "
        "before its bootstrap gives up",
    )

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
