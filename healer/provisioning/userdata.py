"""cloud-init user data for a machine: one builder for first boot and for replacements.

Every machine of a cluster, the first ones and every replacement, gets its user data from
:class:`UserDataBuilder`, so a replacement is hardened exactly like the machine it replaces:

* identity: hostname = machine name = Kubernetes node name, ``/etc/healer/node.env``;
* SSH: one login user (``ssh.user``, sudo, password locked) whose only authorised key is the
  cluster's key (:mod:`healer.provisioning.sshkeys`); keys from the cloud's metadata are not
  imported; sshd hardened by the drop-in ``/etc/ssh/sshd_config.d/10-healer.conf`` (public key
  only, no passwords, no keyboard-interactive, no root login);
* unattended security upgrades (the Debian-Security origins only, ``upgrades.origins``), with
  reboots when an upgrade needs one timed by healer through the node agent (the agent asks, healer's arbiter permits one reboot per pool at a time, only
  while the pool is whole, within the disruption budget and inside maintenance windows). Without
  the agent a machine never reboots on its own (``Automatic-Reboot "false"``: the update waits in
  /var/run/reboot-required) unless ``upgrades.automaticReboot: true`` says so explicitly; then
  unattended-upgrades reboots it at 02:00, unarbitrated, and ``healer validate`` warns;
* the node agent and its systemd units, read from the package at render time, with their
  configuration (``/etc/healer/agent.env``: broker, TLS CA, credentials in a root-only file the
  environment refers to);
* kubeadm init or join (:mod:`healer.provisioning.kubeadm`) when the cluster has a
  ``kubernetes`` section.

No key material is in the user data: a control-plane machine's CA keys, service-account key and
encryption key are pushed over SSH (:mod:`healer.provisioning.keydelivery`) and its bootstrap
script waits for them. The bootstrap token and, with the node agent, the broker password are in
the rendered text because the machine needs them at first boot, in files only root can read;
they are never logged. Keep the user data away from logs.
"""

from __future__ import annotations

import base64
import gzip
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import structlog
import yaml

from healer.agent import bundle
from healer.config import ClusterConfig, PoolConfig, UpgradesConfig
from healer.errors import ConfigError
from healer.model import LABEL_CLUSTER, LABEL_POOL, LABEL_ZONE
from healer.provisioning.keystore import ClusterState
from healer.provisioning.kubeadm.documents import audit_policy
from healer.provisioning.kubeadm.endpoint import parse_endpoint
from healer.provisioning.kubeadm.machine import KubeadmBuilder
from healer.provisioning.kubeadm.tokens import check_bootstrap_token
from healer.provisioning.machinefiles import MachineFile
from healer.provisioning.sshkeys import ensure_ssh_key
from healer.share import shared

log = structlog.get_logger("healer.provisioning")

SSHD_DROPIN = "/etc/ssh/sshd_config.d/10-healer.conf"
AGENT_ENV = "/etc/healer/agent.env"
AGENT_CA = "/etc/healer/agent-ca.pem"
AGENT_PASSWORD = "/etc/healer/credentials/mqtt-password"
AGENT_SCRIPT_DEFAULT = "/usr/local/lib/healer/healer_agent.py"
# EC2 refuses user data over 16 KiB (GCE, Azure and OpenStack take 64 KiB or more). With the node
# agent it is larger than that; gzipped (cloud-init unpacks gzip by itself) it fits.
USER_DATA_LIMIT = 16384

_AGENT_PACKAGE = Path(__file__).resolve().parents[1] / "agent"
_AGENT_UNITS = shared("systemd")  # package data: in the wheel too (healer/share)
_UNIT_SUFFIXES = (".service", ".timer", ".path", ".socket")


def sshd_dropin(user: str) -> str:
    """The sshd drop-in. sshd keeps the first value it reads for a keyword and Debian's
    sshd_config includes ``sshd_config.d/*.conf`` at the top, so ``10-`` wins over both the
    main file and cloud-init's own ``50-cloud-init.conf``."""
    return (
        "# Written by healer: public-key authentication only, one login user.\n"
        "PubkeyAuthentication yes\n"
        "AuthenticationMethods publickey\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitEmptyPasswords no\n"
        "PermitRootLogin no\n"
        f"AllowUsers {user}\n"
        "MaxAuthTries 3\n"
        "LoginGraceTime 30\n"
        "X11Forwarding no\n"
    )


APT_PERIODIC = 'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n'


def unattended_upgrades_conf(
    *,
    automatic_reboot: bool | None,
    agent_reboots: bool,
    origins: tuple[str, ...] = UpgradesConfig().origins,
) -> str:
    """healer's settings on top of the distribution's ``50unattended-upgrades``. Debian's default
    origins include ``label=Debian`` (every point-release update, not only security fixes); apt
    lists add up across files, so healer clears the list (``#clear``) and names only ``origins``
    (``upgrades.origins``; default: the Debian-Security archive). When the node agent is there it
    does the reboot, at the time healer permits; unattended-upgrades only leaves
    /var/run/reboot-required behind. Without the agent, unattended-upgrades reboots the machine
    itself only on an explicit ``automatic_reboot=True`` (``upgrades.automaticReboot: true``);
    unset means "only when arbitrated", and without the agent nothing arbitrates."""
    own_reboot = automatic_reboot is True and not agent_reboots
    lines = [
        "// Written by healer.",
        "// Security updates only: the distribution's list (which includes label=Debian) goes.",
        "#clear Unattended-Upgrade::Origins-Pattern;",
        "#clear Unattended-Upgrade::Allowed-Origins;",
        "Unattended-Upgrade::Origins-Pattern {",
        *(f'  "{origin}";' for origin in origins),
        "};",
        f'Unattended-Upgrade::Automatic-Reboot "{"true" if own_reboot else "false"}";',
    ]
    if own_reboot:
        lines += [
            'Unattended-Upgrade::Automatic-Reboot-WithUsers "true";',
            'Unattended-Upgrade::Automatic-Reboot-Time "02:00";',
        ]
    elif automatic_reboot is not False and agent_reboots:
        lines.append(
            "// Reboots: the healer node agent reboots when /var/run/reboot-required appears "
            "and healer permits it."
        )
    elif automatic_reboot is None:
        lines.append(
            "// Reboots: never on the machine's own; no healer node agent arbitrates them. An "
            "update that needs one waits in /var/run/reboot-required."
        )
    lines += [
        'Unattended-Upgrade::Remove-Unused-Kernel-Packages "true";',
        'Unattended-Upgrade::Remove-Unused-Dependencies "true";',
        "// Kubernetes packages are upgraded deliberately, never unattended.",
        'Unattended-Upgrade::Package-Blacklist { "kubelet"; "kubeadm"; "kubectl"; };',
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class AgentFiles:
    """The node agent as shipped in this package: its program (one file, the agent's modules
    flattened into one script, :mod:`healer.agent.bundle`), its systemd units and its drop-ins
    for other units (``apt-daily-upgrade.service.d/healer-agent.conf``: upgrade results)."""

    script: bytes
    script_path: str  # where the units expect it on the machine
    units: dict[str, bytes]  # path under /etc/systemd/system -> content

    @classmethod
    def discover(
        cls, package: Path = _AGENT_PACKAGE, units_dir: Path = _AGENT_UNITS
    ) -> AgentFiles | None:
        """Read the agent from the package (``package``: its directory, with the entry point
        ``healer_agent.py``), or None when this install does not ship it."""
        if not (package / "healer_agent.py").is_file() or not units_dir.is_dir():
            return None
        units = {
            p.name: p.read_bytes()
            for p in sorted(units_dir.iterdir())
            if p.name.startswith("healer-agent") and p.suffix in _UNIT_SUFFIXES
        }
        if not units:
            return None
        for dropin in sorted(units_dir.glob("*.d/healer-agent*.conf")):
            units[f"{dropin.parent.name}/{dropin.name}"] = dropin.read_bytes()
        return cls(bundle.build(package), _script_path(units), units)

    @property
    def enable(self) -> list[str]:
        """Units to enable: the services and timers (a timer's service is started by it)."""
        timers = {n.removesuffix(".timer") for n in self.units if n.endswith(".timer")}
        return [
            n
            for n in self.units
            if "/" not in n  # drop-ins take effect with daemon-reload
            and (
                n.endswith((".timer", ".path", ".socket"))
                or (n.endswith(".service") and n.removesuffix(".service") not in timers)
            )
        ]


@cache
def _installed_agent() -> AgentFiles | None:
    """The agent this install ships, read once a process: building its bundle parses every
    module of the agent package, and a builder is made per machine (:func:`render_user_data`)."""
    return AgentFiles.discover()


def _script_path(units: dict[str, bytes]) -> str:
    """Where the units run the agent from: the ExecStart argument that names it."""
    for content in units.values():
        for line in content.decode(errors="replace").splitlines():
            if not line.strip().startswith("ExecStart"):
                continue
            for token in line.split("=", 1)[1].split():
                token = token.lstrip("-@:+!")
                if token.startswith("/") and ("healer_agent" in token or "healer-agent" in token):
                    return token
    return AGENT_SCRIPT_DEFAULT


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so the user data stays readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and not re.search(r"[ \t]\n|[\x00-\x08\x0b-\x1f]", value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


class UserDataBuilder:
    """Renders any machine's user data; an instance is the ``user_data`` callable the workflow
    runner and pool provisioning take: ``builder(cluster, pool_name, machine_name)``.

    ``state_dir`` holds the per-cluster SSH key, CAs and kubeadm secrets; without it only what
    needs no state is rendered (a configured public key works, a generated one does not, and a
    cluster with a ``kubernetes`` section is refused)."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        agent: AgentFiles | None = None,
        discover_agent: bool = True,
    ) -> None:
        self._state_dir = state_dir
        self._agent = agent if agent is not None or not discover_agent else _installed_agent()

    def __call__(self, cluster: ClusterConfig, pool: str, name: str) -> str:
        return self.render(cluster, pool, name)

    def render(self, cluster: ClusterConfig, pool_name: str, name: str) -> str:
        pool = cluster.pool(pool_name)
        if pool is None:
            raise ConfigError(f"cluster {cluster.name}: no pool named {pool_name!r}")
        state = ClusterState(self._state_dir, cluster.name) if self._state_dir else None
        labels = f"{LABEL_CLUSTER}={cluster.name},{LABEL_POOL}={pool.name}"
        zone = pool.zone_for(name)
        if zone:
            labels += f",{LABEL_ZONE}={zone}"
        files: list[MachineFile] = [
            MachineFile(
                "/etc/healer/node.env",
                (
                    f"HEALER_CLUSTER={cluster.name}\nHEALER_POOL={pool.name}\nHEALER_NODE={name}\n"
                    f"HEALER_NODE_LABELS={labels}\n"
                ).encode(),
            ),
            MachineFile(SSHD_DROPIN, sshd_dropin(cluster.ssh.user).encode()),
        ]
        runcmd: list[Any] = [
            # sshd normally starts after cloud-init wrote the drop-in; reload in case it did not.
            [
                "sh",
                "-c",
                "systemctl try-reload-or-restart ssh.service "
                "|| systemctl try-reload-or-restart sshd.service",
            ]
        ]
        packages: list[str] = []
        agent = self._agent if cluster.agent is not None else None
        if cluster.agent is not None and agent is None:
            log.warning(
                "provisioning.agent_not_shipped",
                cluster=cluster.name,
                hint="healer/agent/healer_agent.py or systemd/healer-agent*.service is missing; "
                "machines get no node agent"
                + (
                    " and reboot on their own (upgrades.automaticReboot: true)"
                    if cluster.upgrades.reboots_unarbitrated(agent=False)
                    else " and do not reboot for updates"
                ),
            )
        if cluster.upgrades.enabled:
            packages.append("unattended-upgrades")
            files += [
                MachineFile("/etc/apt/apt.conf.d/20auto-upgrades", APT_PERIODIC.encode()),
                MachineFile(
                    "/etc/apt/apt.conf.d/52healer-unattended-upgrades",
                    unattended_upgrades_conf(
                        automatic_reboot=cluster.upgrades.automatic_reboot,
                        agent_reboots=agent is not None,
                        origins=cluster.upgrades.origins,
                    ).encode(),
                ),
            ]
        if agent is not None:
            files += self._agent_files(cluster, pool, name, agent)
            runcmd += [
                ["systemctl", "daemon-reload"],
                ["systemctl", "enable", "--now", *agent.enable],
            ]
        if cluster.kubernetes is not None:
            if state is None:
                raise ConfigError(
                    f"cluster {cluster.name}: rendering kubeadm user data needs healer's state "
                    "dir (it holds the cluster's CA and bootstrap token)"
                )
            node = KubeadmBuilder(state, cluster).machine(pool, name)
            files += node.files
            runcmd.append(list(node.command))

        key = ensure_ssh_key(state, cluster.ssh)
        user: dict[str, Any] = {
            "name": cluster.ssh.user,
            "gecos": "healer administrator",
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "shell": "/bin/bash",
            "lock_passwd": True,
        }
        if key is not None:
            user["ssh_authorized_keys"] = [key.public_key]
        doc: dict[str, Any] = {
            "hostname": name,
            "preserve_hostname": False,
            "disable_root": True,
            "ssh_pwauth": False,
            # Keys from the cloud's metadata (an EC2 key pair, GCE project keys) are not imported:
            # the cluster's key is the only one.
            "allow_public_ssh_keys": False,
            # No "default" entry: the image's default user is not created.
            "users": [user],
            "package_update": True,
            "package_upgrade": cluster.upgrades.enabled,
        }
        if packages:
            doc["packages"] = packages
        doc["write_files"] = [f.write_files_entry() for f in files]
        doc["runcmd"] = runcmd
        text = "#cloud-config\n" + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100)
        packed = len(compress_user_data(text))
        if packed > USER_DATA_LIMIT:
            log.warning(
                "provisioning.user_data_large",
                cluster=cluster.name,
                node=name,
                size=len(text.encode()),
                gzipped=packed,
                limit=USER_DATA_LIMIT,
            )
        log.debug(
            "provisioning.user_data_rendered",
            cluster=cluster.name,
            pool=pool.name,
            node=name,
            files=[f.path for f in files],
            ssh_key=key.fingerprint if key else None,
        )
        return text

    def _agent_files(
        self, cluster: ClusterConfig, pool: PoolConfig, name: str, agent: AgentFiles
    ) -> list[MachineFile]:
        cfg = cluster.agent
        assert cfg is not None
        files = [MachineFile(agent.script_path, agent.script, mode="0755")]
        files += [
            MachineFile(f"/etc/systemd/system/{unit}", strip_comment_lines(content, "#;"))
            for unit, content in agent.units.items()
        ]
        env = {
            "HEALER_CLUSTER": cluster.name,
            "HEALER_POOL": pool.name,
            "HEALER_NODE": name,
            "HEALER_MQTT_HOST": cfg.broker_host,
            "HEALER_MQTT_PORT": str(cfg.broker_port),
            "HEALER_MQTT_TLS": "1" if cfg.tls else "0",
            "HEALER_TOPIC_PREFIX": cfg.topic_prefix,
            "HEALER_HEARTBEAT_INTERVAL": f"{cfg.heartbeat_interval:g}",
            # The agent reboots (with healer's permit) only if the cluster wants reboots at all.
            "HEALER_AUTO_REBOOT": "true"
            if cluster.upgrades.reboots_through_agent(agent=True)
            else "false",
        }
        if cfg.reboot_sentinel_file is not None:
            env["HEALER_REBOOT_SENTINEL_FILE"] = cfg.reboot_sentinel_file
        if cfg.reboot_sentinel_command:
            env["HEALER_REBOOT_SENTINEL_COMMAND"] = shlex.join(cfg.reboot_sentinel_command)
            env["HEALER_REBOOT_SENTINEL_TIMEOUT"] = f"{cfg.reboot_sentinel_timeout:g}"
        if cfg.tls_ca is not None:
            files.append(MachineFile(AGENT_CA, _read_ca(cluster, cfg.tls_ca)))
            env["HEALER_MQTT_CA"] = AGENT_CA
        if cfg.username is not None:
            env["HEALER_MQTT_USERNAME"] = cfg.username
        if cfg.password is not None:
            # The environment names the file, not the password: `systemctl show` and
            # /proc/<pid>/environ never carry it.
            files.append(
                MachineFile(
                    AGENT_PASSWORD, cfg.password.reveal().encode(), mode="0600", secret=True
                )
            )
            env["HEALER_MQTT_PASSWORD_FILE"] = AGENT_PASSWORD
        text = "".join(f"{k}={_env_value(v)}\n" for k, v in env.items())
        files.append(MachineFile(AGENT_ENV, text.encode(), mode="0600"))
        return files


def check_references(cluster: ClusterConfig, *, where: str = "") -> list[str]:
    """Problems with the files and secrets the cluster's machine configuration refers to, found
    without creating anything (for ``healer validate``): an unreadable or invalid SSH public key
    file, broker CA, broker password, audit policy or bootstrap token."""
    prefix = f"{where}cluster {cluster.name}"
    problems: list[str] = []

    def attempt(field: str, check: Callable[[], object]) -> None:
        try:
            check()
        except ConfigError as exc:
            message = str(exc).removeprefix(f"cluster {cluster.name}: ")
            if field not in message:
                message = f"{field}: {message}"
            problems.append(f"{prefix}: {message}")

    if cluster.ssh.public_key_file is not None:
        attempt("ssh.publicKeyFile", lambda: ensure_ssh_key(None, cluster.ssh))
    agent = cluster.agent
    if agent is not None:
        if agent.tls_ca is not None:
            attempt("agent.tlsCa", lambda: _read_ca(cluster, agent.tls_ca))  # type: ignore[arg-type]
        if agent.password is not None:
            attempt("agent.password", agent.password.reveal)
    k8s = cluster.kubernetes
    if k8s is not None:
        if k8s.audit.policy_file is not None:
            attempt("kubernetes.audit.policyFile", lambda: audit_policy(k8s))
        token = k8s.bootstrap_token
        if token is not None:
            attempt(
                "kubernetes.bootstrapToken",
                lambda: check_bootstrap_token(token.reveal(), "the referenced value"),
            )
        if k8s.control_plane_endpoint is not None:
            attempt(
                "kubernetes.controlPlaneEndpoint",
                lambda: parse_endpoint(k8s.control_plane_endpoint or ""),
            )
    return problems


def _read_ca(cluster: ClusterConfig, path: Path) -> bytes:
    try:
        ca = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cluster {cluster.name}: agent.tlsCa {path}: cannot read: {exc.strerror}"
        ) from exc
    if b"-----BEGIN CERTIFICATE-----" not in ca:
        raise ConfigError(f"cluster {cluster.name}: agent.tlsCa {path}: not a PEM certificate")
    return ca


def strip_comment_lines(content: bytes, markers: str = "#") -> bytes:
    """``content`` without its whole-line comments (lines whose first non-blank character is
    one of ``markers``), keeping a ``#!`` first line. For systemd units and shell scripts without
    here-documents: the comments stay in the repository, and every byte counts against EC2's
    16 KiB user data limit."""
    lines = content.decode().splitlines(keepends=True)
    kept = [
        line
        for number, line in enumerate(lines)
        if (number == 0 and line.startswith("#!")) or not line.lstrip().startswith(tuple(markers))
    ]
    return "".join(kept).encode()


def compress_user_data(text: str) -> bytes:
    """The user data gzipped, for clouds with a small limit (EC2: 16 KiB). cloud-init recognises
    gzip by its magic bytes and unpacks it before parsing; libcloud's EC2 driver base64-encodes
    bytes as it does text. ``mtime=0`` keeps the bytes stable for the same text.

    Files that were gzipped one by one are unpacked first: one gzip over everything compresses
    better than base64 of gzip inside gzip."""
    doc = yaml.safe_load(text)
    if isinstance(doc, dict) and isinstance(doc.get("write_files"), list):
        for entry in doc["write_files"]:
            if entry.get("encoding") == "gz+b64":
                raw = gzip.decompress(base64.b64decode(entry["content"]))
                try:
                    entry["content"] = raw.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                del entry["encoding"]
        text = "#cloud-config\n" + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100)
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def _env_value(value: str) -> str:
    """A value for a systemd EnvironmentFile (and a shell ``.``), quoted when needed."""
    if re.fullmatch(r"[A-Za-z0-9_./:@%+=,-]*", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def render_user_data(
    cluster: ClusterConfig, pool: str, name: str, *, state_dir: Path | None = None
) -> str:
    """Compatible entry point: ``render_user_data(cluster, pool, name)``. Pass ``state_dir`` (or
    use a :class:`UserDataBuilder`) for the per-cluster key, CA and kubeadm parts."""
    return UserDataBuilder(state_dir)(cluster, pool, name)
