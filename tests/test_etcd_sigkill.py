"""SIGKILL the daemon (a real `healer run` process, HEALER_FAILPOINTS) before and after each
etcd step of a control-plane replacement, restart it, and check that etcd ends whole: 3
members, all healthy, the old member's id gone, the replacement a member; the workflow done
exactly once. The lab world (API server, cloud, kubelets, real etcd members) lives in this
test process."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from healer.lab.etcd import LabEtcd, etcd_binary
from healer.lab.harness import LabHarness, LabTimings
from healer.model import Role
from healer.store.sqlite import Store
from healer.workflow.order import CONTROL_PLANE_STEPS
from tests.helpers import fast_lab_config, start_healer_run, until, write_lab_config
from tests.sweep import sweep

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

TIMINGS = LabTimings(lease_grace=1.0, monitor_period=0.1, renew_interval=0.25, boot_delay=0.3)
POOLS = {"control-plane": Role.CONTROL_PLANE, "workers": Role.WORKER}
CASE_TIMEOUT = 60.0


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[LabHarness, Path]]:
    if etcd_binary() is None:
        pytest.skip("no etcd binary (Debian package etcd-server)")
    state = tmp_path_factory.mktemp("etcd-lab")
    harness = LabHarness(state_dir=state, pool_roles=POOLS, timings=TIMINGS, with_broker=False)
    await harness.start()
    try:
        assert isinstance(harness.etcd, LabEtcd)
        doc = fast_lab_config(
            harness.kubeconfig,
            etcd={"mode": "direct", "endpoints": harness.etcd.seeds()},
            pools=[
                {"name": "control-plane", "role": "control-plane", "size": 3},
                {"name": "workers", "size": 1},
            ],
        )
        config = await write_lab_config(state, doc, nodes=4, harness=harness)
        yield harness, config
    finally:
        await harness.stop()


# Both steps before and after in `make test-full`; in `make test` (tests/sweep.py) a kill just
# after the member's removal (removed, not yet recorded) and one just before the verification.
@pytest.mark.parametrize(
    ("step", "when"), sweep(["etcd_remove_member", "etcd_verify"], ["after", "before"])
)
async def test_sigkill_at_an_etcd_step_then_resume_keeps_etcd_whole(
    lab: tuple[LabHarness, Path], step: str, when: str
) -> None:
    harness, config = lab
    etcd = harness.etcd
    assert isinstance(etcd, LabEtcd)

    async def whole() -> bool:
        view = await etcd.client.view()
        return len(view.members) == 3 and view.healthy == 3

    await until(whole, 30, "etcd whole before the case")
    await harness.wait_ready(4)
    state = harness.state_dir
    log = state / f"daemon-{step}-{when}.log"
    target = sorted(harness.pool_nodes("control-plane"))[0]
    old = (await etcd.client.view()).member(target)
    assert old is not None
    store = Store.open(state)
    try:
        env = {"HEALER_FAILPOINTS": f"workflow.{step}.{when}=kill"}
        first = await start_healer_run(config, state, log, env=env)
        harness.crash(target)
        rc = await asyncio.wait_for(first.wait(), CASE_TIMEOUT)
        assert rc == -signal.SIGKILL, log.read_text()[-3000:]
        [wf] = store.workflows(node=target)
        assert wf.state == "running" and wf.step == step

        second = await start_healer_run(config, state, log)
        try:

            async def done() -> bool:
                current = store.workflow(wf.id)
                assert current is not None
                if current.state == "failed":
                    raise AssertionError(f"failed: {current.error}\n{log.read_text()[-3000:]}")
                return current.state == "succeeded"

            await until(done, CASE_TIMEOUT, f"workflow {wf.id} to complete")
        finally:
            second.send_signal(signal.SIGTERM)
            await asyncio.wait_for(second.wait(), 20)
        view = await etcd.client.view()
        assert len(view.members) == 3 and view.healthy == 3, view.describe()
        assert old.id not in {m.id for m in view.members}
        assert view.member(wf.replacement_name) is not None
        steps = [s["step"] for s in store.steps(wf.id) if s["status"] == "done"]
        assert steps == ["created", *CONTROL_PLANE_STEPS]
        assert [w.id for w in store.workflows(node=target)] == [wf.id]
    finally:
        store.close()
