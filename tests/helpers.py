"""Small builders shared by tests."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from healer.cloud.machines import MachineRequest
from healer.config import HealerConfig, parse_config
from healer.model import Role
from healer.naming import ownership_tags
from healer.store.sqlite import RUNNING, Store, WorkflowRecord
from healer.workflow.runner import STEPS
from providers.lab.plugin import LabProvider


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


def fast_lab_config(
    kubeconfig: Any, *, startup_timeout: str = "20s", **cluster_changes: Any
) -> dict[str, Any]:
    """The config of a `healer run` subprocess driven against a lab harness in tests: one
    control-plane node and three workers, second-scale thresholds, fast retries, and a breaker
    wide enough for a test that crashes node after node on purpose."""
    cluster: dict[str, Any] = {
        "name": "lab",
        "kubeconfig": str(kubeconfig),
        "provider": {"plugin": "lab"},
        "health": {
            "unhealthyConditions": [
                {"type": "Ready", "status": "Unknown", "timeout": "1s"},
                {"type": "Ready", "status": "False", "timeout": "1s"},
            ],
            "nodeStartupTimeout": startup_timeout,
        },
        "remediation": {
            "maxPerHour": 100,
            "drainTimeout": "2s",
            "retry": {"attempts": 5, "initialDelay": "0.2s", "maxDelay": "1s"},
        },
        "breaker": {"maxNewUnhealthy": 100, "maxFailures": 100},
        "pools": [
            {"name": "control-plane", "role": "control-plane", "size": 1},
            {"name": "workers", "size": 3},
        ],
    }
    cluster.update(cluster_changes)
    return {"logFormat": "json", "clusters": [cluster]}


def running_workflow(
    store: Store, node: str, replacement: str, *, wf_id: str = "wf0123456789"
) -> WorkflowRecord:
    """A workflow of cluster ``lab``, pool ``workers``, at its first step, saved in ``store``:
    what the planner hands the runner for a dead worker."""
    now = time.time()
    wf = WorkflowRecord(
        id=wf_id,
        cluster="lab",
        pool="workers",
        node=node,
        role=Role.WORKER,
        state=RUNNING,
        step=STEPS[0],
        reason="ReadyUnknownTimeout",
        evidence={},
        replacement_name=replacement,
        started_at=now,
        updated_at=now,
    )
    store.create_workflow(wf)
    return wf


async def lab_cloud_with_worker(state_dir: Path, name: str) -> LabProvider:
    """A lab cloud holding one machine of pool ``workers`` that healer owns (tagged as
    `healer apply` leaves it), for workflow tests that replace it."""
    provider = LabProvider(cluster="lab", options={}, credentials={}, state_dir=state_dir)
    await provider.create_machine(
        MachineRequest(
            name=name,
            size="small",
            image="debian-12",
            tags=ownership_tags("lab", "workers"),
        )
    )
    return provider


async def start_healer_run(
    config: Path, state: Path, log: Path, *, env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    """`healer run -c CONFIG --state-dir STATE` as a subprocess, its output appended to ``log``:
    the test's environment without systemd's variables and failpoints, plus ``env``."""
    full = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFY_", "WATCHDOG_")) and k != "HEALER_FAILPOINTS"
    }
    full.update(env or {})
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "healer.cli",
            "run",
            "-c",
            str(config),
            "--state-dir",
            str(state),
            env=full,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )


async def seed_ready_nodes(tracker: Any, now: float, pools: Mapping[str, str]) -> None:
    """Feed ``tracker`` the first full list of cluster ``lab``: each node of ``pools`` (node ->
    pool) added and Ready, then the SYNCED marker (nothing is decided before it)."""
    from healer.model import LABEL_POOL, EventKind, NodeEvent

    await tracker.handle(NodeEvent("lab", "", EventKind.LIST_STARTED, now, "kube"))
    for node, pool in pools.items():
        labels = {LABEL_POOL: pool}
        await tracker.handle(
            NodeEvent("lab", node, EventKind.NODE_ADDED, now, "kube", labels=labels)
        )
        ready = NodeEvent(
            "lab", node, EventKind.CONDITION, now, "kube", condition="Ready", status="True"
        )
        await tracker.handle(ready)
    await tracker.handle(NodeEvent("lab", "", EventKind.SYNCED, now, "kube"))


async def write_lab_config(state: Path, doc: dict[str, Any], *, nodes: int, harness: Any) -> Path:
    """Write ``doc`` as ``state/healer.yaml``, create its pools' machines in the lab cloud (as
    `healer apply` would) and wait until ``nodes`` lab nodes are Ready: the world a `healer run`
    subprocess (:func:`start_healer_run`) wakes up to."""
    import yaml

    from healer.cloud.registry import load_provider
    from healer.config import load_config
    from healer.provisioning.pools import ensure_pools
    from healer.provisioning.userdata import render_user_data

    config = state / "healer.yaml"
    config.write_text(yaml.safe_dump(doc))
    cluster = load_config(config).clusters[0]
    provider = load_provider("lab", cluster="lab", options={}, credentials={}, state_dir=state)
    await ensure_pools(cluster, provider, user_data=render_user_data)
    await provider.close()
    await harness.wait_ready(nodes)
    return config


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``predicate`` (real time, every 0.1 s) until it holds; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)
