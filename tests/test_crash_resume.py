"""Kill the daemon with SIGKILL at every workflow step, restart it, and check the workflow
completes exactly once: no orphaned machine, no machine destroyed twice, no second replacement.

The lab world (API server, cloud, kubelets) lives in this test process; the daemon is a real
`healer run` process, killed by a failpoint (HEALER_FAILPOINTS) at a precise point.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from healer.cloud.registry import load_provider
from healer.config import load_config
from healer.lab.harness import LabHarness, LabTimings
from healer.lab.node_monitor import NodeMonitor
from healer.lab.report import invariants
from healer.model import Role
from healer.provisioning.pools import ensure_pools
from healer.provisioning.userdata import render_user_data
from healer.store.sqlite import Store
from healer.workflow.runner import STEPS
from tests.helpers import fast_lab_config, start_healer_run, until
from tests.plugins.store import Backend
from tests.realkube import RealKube
from tests.sweep import sweep

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

TIMINGS = LabTimings(lease_grace=1.0, monitor_period=0.1, renew_interval=0.25, boot_delay=0.3)
POOLS = {"control-plane": Role.CONTROL_PLANE, "workers": Role.WORKER}
CASE_TIMEOUT = 45.0


def write_config(path: Path, kubeconfig: Path) -> Path:
    # Twelve deliberate crashes in a row would (rightly) trip a default breaker: the config's
    # breaker is wide open.
    path.write_text(yaml.safe_dump(fast_lab_config(kubeconfig)))
    return path


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[LabHarness, Path]]:
    state = tmp_path_factory.mktemp("crash-lab")
    harness = LabHarness(state_dir=state, pool_roles=POOLS, timings=TIMINGS, with_broker=False)
    yield await _started(harness)
    await harness.stop()


async def _started(harness: LabHarness) -> tuple[LabHarness, Path]:
    """The harness started, its pools created and four nodes Ready; with its config file."""
    state = harness.state_dir
    await harness.start()
    config_path = write_config(state / "healer.yaml", harness.kubeconfig)
    cluster = load_config(config_path).clusters[0]
    provider = load_provider("lab", cluster="lab", options={}, credentials={}, state_dir=state)
    await ensure_pools(cluster, provider, user_data=render_user_data)
    await provider.close()
    await harness.wait_ready(4)
    return harness, config_path


async def spawn(
    config: Path, state: Path, log: Path, failpoint: str | None
) -> asyncio.subprocess.Process:
    env = {"HEALER_FAILPOINTS": f"{failpoint}=kill"} if failpoint else None
    return await start_healer_run(config, state, log, env=env)


# Every step, before and after, on both backends in `make test-full`; each step once in `make
# test`, the four (when, backend) pairs taking turns (tests/sweep.py).
@pytest.mark.parametrize(
    ("step", "when", "state_backend"),
    sweep(STEPS, ["before", "after"], ["sqlite", "postgresql"]),
    indirect=["state_backend"],
)
async def test_sigkill_at_each_step_then_resume(
    lab: tuple[LabHarness, Path], step: str, when: str, state_backend: Backend
) -> None:
    # On PostgreSQL (tests/plugins/store.py) the daemons keep their state in a fresh database
    # of the test's own; a short lease lets the second daemon take the killed one's over fast.
    harness, config = lab
    section = state_backend.state_section(harness.state_dir)
    if section is not None:
        data = yaml.safe_load(config.read_text())
        data["state"] = section | {"leaseSeconds": 3.0}
        config = config.with_name(f"healer-{state_backend.name}.yaml")
        config.write_text(yaml.safe_dump(data))
    await _kill_and_resume(harness, config, step, when)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def real_lab(
    tmp_path_factory: pytest.TempPathFactory, realkube_session: RealKube
) -> AsyncIterator[tuple[LabHarness, Path]]:
    """The same lab, its kubelets on the real API server of tests/realkube.py."""
    state = tmp_path_factory.mktemp("crash-lab-real")
    monitor = NodeMonitor(
        realkube_session.node_grace,
        realkube_session.monitor_period,
        "tests/realkube.py",
        late_by=2 * realkube_session.monitor_period,
    )
    harness = LabHarness(
        state_dir=state,
        pool_roles=POOLS,
        timings=TIMINGS,
        with_broker=False,
        kubeconfig=realkube_session.kubeconfig,
        node_monitor=monitor,
    )
    try:
        yield await _started(harness)
    finally:
        await harness.stop()
        await asyncio.to_thread(realkube_session.wipe)


# The real server's node grace makes each case ~15 s: the steps either side of the Node's
# deletion, where the real server's answers (eviction, Terminating pods, the Lease's garbage
# collection) matter most.
@pytest.mark.parametrize(("step", "when"), [("drain", "after"), ("delete_node", "before")])
async def test_sigkill_then_resume_on_the_real_server(
    real_lab: tuple[LabHarness, Path], step: str, when: str
) -> None:
    await _kill_and_resume(*real_lab, step, when)


async def _kill_and_resume(harness: LabHarness, config: Path, step: str, when: str) -> None:
    state = harness.state_dir
    log = state / f"daemon-{step}-{when}.log"
    await harness.wait_ready(4)
    target = harness.pool_nodes("workers")[0]
    store = Store.open(state)
    try:
        first = await spawn(config, state, log, f"workflow.{step}.{when}")
        harness.crash(target)
        rc = await asyncio.wait_for(first.wait(), CASE_TIMEOUT)
        assert rc == -signal.SIGKILL, log.read_text()[-3000:]
        [wf] = store.workflows(node=target)
        assert wf.state == "running" and wf.step == step

        second = await spawn(config, state, log, None)
        try:

            async def done() -> bool:
                current = store.workflow(wf.id)
                assert current is not None
                if current.state == "failed":
                    raise AssertionError(
                        f"workflow failed: {current.error}\n{log.read_text()[-3000:]}"
                    )
                return current.state == "succeeded"

            await until(done, CASE_TIMEOUT, f"workflow {wf.id} to complete")
            await until(
                lambda: _ready(harness, wf.replacement_name), CASE_TIMEOUT, "replacement Ready"
            )
        finally:
            second.send_signal(signal.SIGTERM)
            await asyncio.wait_for(second.wait(), 20)

        # Exactly once: one workflow, one replacement machine, the old machine destroyed once.
        assert [w.id for w in store.workflows(node=target)] == [wf.id]
        created = [
            c for c in harness.cloud.driver.ex_created_log() if c["name"] == wf.replacement_name
        ]
        assert len(created) == 1
        destroys = [d for d in harness.cloud.destroy_log() if d["name"] == target]
        assert len(destroys) == 1 and destroys[0]["existed"] and not destroys[0]["repeat"]
        inv = invariants(
            cluster=load_config(config).clusters[0],
            machines=harness.cloud.machines(include_terminated=True),
            destroy_log=harness.cloud.destroy_log(),
            ready_nodes=await harness.ready_nodes(),
            store=store,
        )
        assert inv["ok"], inv
        steps = [s["step"] for s in store.steps(wf.id) if s["status"] == "done"]
        assert steps == ["created", *STEPS]
    finally:
        store.close()


async def _ready(harness: LabHarness, name: str) -> bool:
    return name in await harness.ready_nodes()
