"""Small builders shared by tests."""

from __future__ import annotations

from typing import Any

from healer.config import HealerConfig, parse_config


def lab_like_config(**cluster_overrides: Any) -> HealerConfig:
    cluster: dict[str, Any] = {
        "name": "lab",
        "provider": {"plugin": "lab"},
        "health": {
            "unhealthyConditions": [
                {"type": "Ready", "status": "False", "timeout": "5s"},
                {"type": "Ready", "status": "Unknown", "timeout": "5s"},
            ],
            "nodeStartupTimeout": "20s",
            "rebootTimeout": "12s",
        },
        "remediation": {"retry": {"attempts": 3, "initialDelay": 0.1, "maxDelay": 0.2}},
        "pools": [
            {"name": "control-plane", "role": "control-plane", "size": 3},
            {"name": "workers", "size": 5},
        ],
    }
    cluster.update(cluster_overrides)
    return parse_config({"clusters": [cluster]})
