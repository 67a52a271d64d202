"""`healer run` as systemd runs it: sd_notify (READY, STATUS, WATCHDOG, RELOADING, STOPPING) over
a fake NOTIFY_SOCKET, SIGHUP reloads (valid, invalid, restart-only), and SIGTERM in the middle of
a remediation followed by a restart that completes it exactly once.

The lab world (API server, cloud, kubelets) lives in this test process, as in
tests/test_crash_resume.py; the daemon is a real subprocess.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import signal
import socket
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from healer.cloud.registry import load_provider
from healer.config import load_config
from healer.lab.harness import LabHarness, LabTimings
from healer.lab.report import invariants
from healer.model import TAG_POOL, Role
from healer.provisioning.pools import ensure_pools
from healer.provisioning.userdata import render_user_data
from healer.store.sqlite import Store, WorkflowRecord
from healer.workflow.runner import STEPS
from tests.helpers import fast_lab_config, start_healer_run

pytestmark = pytest.mark.slow

# A slow boot keeps the replacement in wait_for_join for seconds: long enough to reload or
# stop the daemon while the remediation is in flight.
TIMINGS = LabTimings(lease_grace=1.0, monitor_period=0.1, renew_interval=0.25, boot_delay=2.5)
POOLS = {"control-plane": Role.CONTROL_PLANE, "workers": Role.WORKER}
STOP_BUDGET = 10.0  # well inside the unit's TimeoutStopSec=60s
WAIT = 40.0


def config_data(kubeconfig: Path, **cluster_changes: Any) -> dict[str, Any]:
    return fast_lab_config(kubeconfig, startup_timeout="30s", **cluster_changes)


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest_asyncio.fixture
async def lab(tmp_path: Path) -> AsyncIterator[LabHarness]:
    harness = LabHarness(state_dir=tmp_path, pool_roles=POOLS, timings=TIMINGS, with_broker=False)
    await harness.start()
    try:
        cluster = load_config(
            write(tmp_path / "boot.yaml", config_data(harness.kubeconfig))
        ).clusters[0]
        provider = load_provider(
            "lab", cluster="lab", options={}, credentials={}, state_dir=tmp_path
        )
        await ensure_pools(cluster, provider, user_data=render_user_data)
        await provider.close()
        await harness.wait_ready(4)
        yield harness
    finally:
        await harness.stop()


async def spawn(
    config: Path, state: Path, log: Path, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    return await start_healer_run(config, state, log, env=env)


async def until(predicate: Callable[[], object], what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            tail = log.read_text()[-4000:] if log is not None else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        await asyncio.sleep(0.05)


class NotifySocket:
    """What systemd would receive: every datagram, split into its KEY=VALUE lines."""

    def __init__(self) -> None:
        self.name = f"@healer-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.setblocking(False)
        self.messages: list[tuple[float, list[str]]] = []
        self._task: asyncio.Task[None] | None = None

    async def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            self.messages.append((time.monotonic(), data.decode().split("\n")))

    def start(self) -> None:
        self._task = asyncio.create_task(self._receive())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.sock.close()

    def lines(self) -> list[str]:
        return [line for _, msg in self.messages for line in msg]

    def count(self, line: str) -> int:
        return self.lines().count(line)

    def after(self, index: int) -> list[str]:
        return [line for _, msg in self.messages[index:] for line in msg]


def audit(store: Store, event: str) -> list[Any]:
    return store.audit_log(event=event)


def only_workflow(store: Store, node: str) -> WorkflowRecord | None:
    found = store.workflows(node=node)
    return found[0] if found else None


async def stop(proc: asyncio.subprocess.Process) -> tuple[int, float]:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = await asyncio.wait_for(proc.wait(), STOP_BUDGET * 2)
    return rc, time.monotonic() - started


async def test_notify_reload_and_stop(lab: LabHarness) -> None:
    state = lab.state_dir
    log = state / "daemon.log"
    config = write(state / "healer.yaml", config_data(lab.kubeconfig))
    notify = NotifySocket()
    notify.start()
    store = Store.open(state)
    proc = await spawn(
        config,
        state,
        log,
        {"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": ""},
    )
    try:
        # READY=1, with a status, once the cluster API is listed and the state is loaded.
        await until(lambda: notify.count("READY=1") >= 1, "READY=1", log)
        ready = next(msg for _, msg in notify.messages if "READY=1" in msg)
        status = next(line for line in ready if line.startswith("STATUS="))
        assert "watching 1 cluster(s), 4 nodes" in status and "0 workflows in flight" in status
        # WATCHDOG=1 every WATCHDOG_USEC/2 while healthy.
        await until(lambda: notify.count("WATCHDOG=1") >= 3, "three watchdog pings", log)
        pings = [at for at, msg in notify.messages if "WATCHDOG=1" in msg]
        assert 0.3 < pings[-1] - pings[-2] < 0.9

        # A remediation in flight across the reloads.
        target = lab.pool_nodes("workers")[0]
        lab.crash(target)
        await until(lambda: only_workflow(store, target) is not None, "a remediation", log)

        # 1. Invalid: rejected with the field path; the daemon carries on with the old config.
        bad = config_data(lab.kubeconfig)
        bad["clusters"][0]["remediation"]["maxUnhealthy"] = "140%"
        write(config, bad)
        mark = len(notify.messages)
        proc.send_signal(signal.SIGHUP)
        await until(lambda: audit(store, "config.reload_rejected"), "the rejection", log)
        [rejected] = audit(store, "config.reload_rejected")
        assert "clusters[0].remediation.maxUnhealthy" in rejected.evidence["fields"]
        await until(lambda: "READY=1" in notify.after(mark), "READY after the reload", log)
        assert notify.after(mark)[0] == "RELOADING=1"

        # 2. A change only a restart can make: rejected, naming the field.
        moved = config_data(lab.kubeconfig)
        moved["clusters"][0]["kubeconfig"] = str(state / "elsewhere.yaml")
        write(config, moved)
        proc.send_signal(signal.SIGHUP)
        await until(lambda: len(audit(store, "config.reload_rejected")) == 2, "rejection 2", log)
        assert audit(store, "config.reload_rejected")[1].evidence["fields"] == [
            "clusters[0].kubeconfig"
        ]

        # 3. Valid, with a new pool and a drift repair every second: applied at once; the new
        # pool gets its machine while the remediation started under the old config goes on.
        good = config_data(
            lab.kubeconfig,
            pools=[
                {"name": "control-plane", "role": "control-plane", "size": 1},
                {"name": "workers", "size": 3},
                {"name": "extra", "size": 1},
            ],
        )
        good["schedule"] = {"driftRepair": "1s"}
        write(config, good)
        proc.send_signal(signal.SIGHUP)
        await until(lambda: audit(store, "config.reloaded"), "the reload", log)
        wf = only_workflow(store, target)
        assert wf is not None and wf.state == "running"
        await until(
            lambda: any(m["tags"].get(TAG_POOL) == "extra" for m in lab.cloud.machines()),
            "a machine for the new pool",
            log,
        )
        await until(
            lambda: (w := only_workflow(store, target)) is not None and w.state == "succeeded",
            "the in-flight remediation to succeed",
            log,
        )
        assert proc.returncode is None  # still running through all of it

        # SIGTERM: STOPPING=1, then a clean exit.
        rc, took = await stop(proc)
        assert rc == 0 and took < STOP_BUDGET, log.read_text()[-3000:]
        assert "STOPPING=1" in notify.lines()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        store.close()
        await notify.close()

    # JSON logs: every line of the remediation carries its context (cluster, pool, node,
    # workflow), the node being the one replaced, also on the replacement's wait_for_join line.
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    mine = [e for e in lines if e.get("workflow") == wf.id]
    assert {f"remediation.{step}_done" for step in STEPS} <= {e["event"] for e in mine}
    for entry in mine:
        assert (entry["cluster"], entry["pool"], entry["node"]) == ("lab", "workers", target), entry


async def test_sigterm_mid_workflow_then_restart_completes(lab: LabHarness) -> None:
    state = lab.state_dir
    log = state / "daemon.log"
    config = write(state / "healer.yaml", config_data(lab.kubeconfig))
    store = Store.open(state)
    first = await spawn(config, state, log)
    second: asyncio.subprocess.Process | None = None
    try:
        target = lab.pool_nodes("workers")[0]
        await until(lambda: _ready_logged(log), "the daemon to be ready", log)
        lab.crash(target)
        await until(
            lambda: (w := only_workflow(store, target)) is not None and w.step == "wait_for_join",
            "the remediation to reach wait_for_join",
            log,
        )
        rc, took = await stop(first)
        assert rc == 0 and took < STOP_BUDGET, log.read_text()[-3000:]

        # Checkpointed: still running, at the step it was in, the journal whole and ending
        # with the suspension; the database intact.
        wf = only_workflow(store, target)
        assert wf is not None and wf.state == "running" and wf.step == "wait_for_join"
        journal = store.steps(wf.id)
        assert (journal[-1]["step"], journal[-1]["status"]) == ("wait_for_join", "suspended")
        with sqlite3.connect(state / "healer.sqlite") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

        second = await spawn(config, state, log)
        await until(
            lambda: (w := store.workflow(wf.id)) is not None and w.state == "succeeded",
            "the resumed remediation to succeed",
            log,
        )
        rc, _ = await stop(second)
        assert rc == 0

        # Exactly once: one replacement machine, the old one destroyed once, every step done
        # once, and the lab's invariants hold.
        created = [c for c in lab.cloud.driver.ex_created_log() if c["name"] == wf.replacement_name]
        assert len(created) == 1
        destroys = [d for d in lab.cloud.destroy_log() if d["name"] == target]
        assert len(destroys) == 1 and destroys[0]["existed"] and not destroys[0]["repeat"]
        done = [s["step"] for s in store.steps(wf.id) if s["status"] == "done"]
        assert done == ["created", *STEPS]
        inv = invariants(
            cluster=load_config(config).clusters[0],
            machines=lab.cloud.machines(include_terminated=True),
            destroy_log=lab.cloud.destroy_log(),
            ready_nodes=await lab.ready_nodes(),
            store=store,
        )
        assert inv["ok"], inv
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
        store.close()


def _ready_logged(log: Path) -> bool:
    return log.exists() and '"event": "daemon.ready"' in log.read_text()
