"""cloud-init user data for a machine: one builder for first boot and for replacements.

Kept deliberately small here: the machine's identity. Hardening (sshd, unattended upgrades, the
node agent) and the kubeadm join are layered on by the provisioning package.
"""

from __future__ import annotations

import yaml

from healer.config import ClusterConfig
from healer.model import LABEL_CLUSTER, LABEL_POOL


def render_user_data(cluster: ClusterConfig, pool: str, name: str) -> str:
    doc = {
        "hostname": name,
        "preserve_hostname": False,
        "write_files": [
            {
                "path": "/etc/healer/node.env",
                "permissions": "0644",
                "content": f"HEALER_CLUSTER={cluster.name}\nHEALER_POOL={pool}\nHEALER_NODE={name}\n"
                f"HEALER_NODE_LABELS={LABEL_CLUSTER}={cluster.name},{LABEL_POOL}={pool}\n",
            }
        ],
    }
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)
