"""SIGKILL the daemon (a real `healer run` process, HEALER_FAILPOINTS) before and after each step
of a planned reboot's workflow, restart it, and check that the reboot finishes exactly once: the
agent told to reboot once, one hand-over in the audit log, the grant released as ``Rebooted``,
and the node uncordoned (issue 17, must show 4). The lab world (API server, broker, cloud,
kubelets) lives in this test process; the test plays the node agent over MQTT."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from healer.lab.harness import LabHarness, LabTimings
from healer.model import Role
from healer.store.sqlite import Store
from healer.workflow.reboot import STEPS
from tests.helpers import fast_lab_config, start_healer_run, until, write_lab_config
from tests.sweep import sweep

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

TIMINGS = LabTimings(lease_grace=1.0, monitor_period=0.1, renew_interval=0.25, boot_delay=0.3)
CASE_TIMEOUT = 60.0
DOWNTIME = 2.0


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[LabHarness, Path]]:
    state = tmp_path_factory.mktemp("reboot-lab")
    harness = LabHarness(state_dir=state, pool_roles={"workers": Role.WORKER}, timings=TIMINGS)
    await harness.start()
    try:
        assert harness.broker is not None
        doc = fast_lab_config(
            harness.kubeconfig,
            pools=[{"name": "workers", "size": 2}],
            reboots={"drainTimeout": "20s"},
        )
        doc["mqtt"] = {
            "host": "127.0.0.1",
            "port": harness.broker.port,
            "protocol": "3.1.1",
            "clientId": "healer-sigkill",
            "username": "healer",
        }
        config = await write_lab_config(state, doc, nodes=2, harness=harness)
        yield harness, config
    finally:
        await harness.stop()


async def agent(harness: LabHarness, node: str, tag: str, rebooted: list[float]) -> None:
    """The node agent: ask until granted (no answer while the daemon is dead), then reboot."""
    asked = 0
    while True:
        asked += 1
        answer = await harness.ask_reboot_permit(node, f"{tag}-{asked}", timeout=2.0)
        if answer is not None and answer.get("granted"):
            rebooted.append(time.time())
            await harness.reboot(node, downtime=DOWNTIME, upgrade=True)
            return
        await asyncio.sleep(0.3)


# Every step before and after in `make test-full`; each step once in `make test`, before and
# after taking turns (tests/sweep.py).
CASES = sweep(STEPS, ["before", "after"])


@pytest.mark.parametrize(("step", "when"), CASES)
async def test_sigkill_at_a_reboot_step_then_resume_reboots_once_and_uncordons(
    lab: tuple[LabHarness, Path], step: str, when: str
) -> None:
    harness, config = lab
    assert harness.api is not None
    state = harness.state_dir
    log = state / f"daemon-{step}-{when}.log"
    index = CASES.index((step, when))
    target = sorted(harness.pool_nodes("workers"))[index % 2]
    await harness.wait_ready(2)
    harness.api.add_pod("shop", f"app-{index}", target, owner_kind="ReplicaSet")
    since = time.time()
    store = Store.open(state)
    rebooted: list[float] = []
    asking = asyncio.create_task(agent(harness, target, f"{step}-{when}", rebooted))
    try:
        env = {"HEALER_FAILPOINTS": f"reboot.{step}.{when}=kill"}
        first = await start_healer_run(config, state, log, env=env)
        rc = await asyncio.wait_for(first.wait(), CASE_TIMEOUT)
        assert rc == -signal.SIGKILL, log.read_text()[-3000:]

        second = await start_healer_run(config, state, log)
        try:

            async def finished() -> bool:
                node = harness.api.node(target) if harness.api else None
                released = [
                    e
                    for e in store.audit_log(cluster="lab", node=target, event="reboot.released")
                    if e.at >= since
                ]
                return (
                    bool(released)
                    and asking.done()
                    and node is not None
                    and not node.get("spec", {}).get("unschedulable")
                )

            await until(finished, CASE_TIMEOUT, f"the reboot of {target} to finish")
        finally:
            second.send_signal(signal.SIGTERM)
            await asyncio.wait_for(second.wait(), 20)
        audit = [e for e in store.audit_log(cluster="lab", node=target) if e.at >= since]
        assert len(rebooted) == 1
        assert [e.reason for e in audit if e.event == "reboot.handed"] == ["Granted"]
        assert [e.reason for e in audit if e.event == "reboot.released"] == ["Rebooted"], [
            (e.event, e.reason, e.message) for e in audit
        ]
        assert harness.api.pod("shop", f"app-{index}") is None  # drained before the reboot
        node = harness.api.node(target)
        assert node is not None and not node.get("spec", {}).get("unschedulable")
        assert not [e for e in audit if e.event.startswith("remediation.")]
    finally:
        asking.cancel()
        await asyncio.gather(asking, return_exceptions=True)
        store.close()
