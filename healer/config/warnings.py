"""Warnings about a valid configuration that is probably not what the operator wants.

Not errors: ``healer validate`` prints them and still exits 0; ``healer run`` logs them
(``config.warning``). Each is one sentence naming the cluster, the field and what to do.
"""

from __future__ import annotations

from healer.config.model import HealerConfig
from healer.model import Role


def config_warnings(config: HealerConfig) -> list[str]:
    """Every warning for ``config``, cluster by cluster."""
    out: list[str] = []
    arbiter = config.mqtt is not None and config.mqtt.reboot_arbiter
    for c in config.clusters:
        agent = c.agent is not None
        where = f"cluster {c.name}"
        cp = c.control_plane_pool()
        if cp is not None and cp.size == 1:
            out.append(
                f"{where}: control-plane pool {cp.name} has size 1: one etcd member, so healer "
                "never replaces it (SingleControlPlane: losing it loses the cluster's state, a "
                "human restores it from a backup); use 3 for a control plane healer can repair"
            )
        if c.upgrades.reboots_unarbitrated(agent=agent):
            out.append(
                f"{where}: upgrades.automaticReboot is true and there is no node agent (no "
                "'agent' section): unattended-upgrades reboots every machine on its own at 02:00 "
                "when an update needs it, not arbitrated with repairs nor with each other; add "
                "the 'agent' section (healer then times the reboots) or drop automaticReboot"
            )
            for p in c.pools:
                if p.role is Role.CONTROL_PLANE and p.size > 0:
                    out.append(
                        f"{where}: control-plane pool {p.name} ({p.size} member"
                        f"{'' if p.size == 1 else 's'}) reboots unarbitrated: members that took "
                        "the same update reboot at the same minute and the cluster loses its API "
                        "and etcd quorum until they are back"
                    )
        elif c.upgrades.reboots_through_agent(agent=agent) and not arbiter:
            why = "there is no 'mqtt' section" if config.mqtt is None else "mqtt.rebootArbiter"
            why += "" if config.mqtt is None else " is false"
            out.append(
                f"{where}: the node agent asks healer before it reboots, but {why}, so no "
                "healer answers: updates that need a reboot wait on the machines until it does"
            )
    return out
