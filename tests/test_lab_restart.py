"""The lab on a saved state: quitting with a crash not yet healed, starting again, and starting
over (`healer lab --reset`).

Before the fix, a lab quit with a crashed node not yet replaced never started again: it waited
for every pool's size in Ready nodes (`TimeoutError: only 7 of 8 lab nodes became Ready` after
60 s), and the daemon never saw the crashed machine, whose Node the in-memory API server had
forgotten.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from libcloud.compute.base import Node

from healer.config import load_config
from healer.lab.harness import LabHarness, LabTimings
from healer.lab.main import ResetRefused, reset_state, running_lab
from healer.model import TAG_CLUSTER, TAG_POOL
from tests.helpers import until
from tests.test_lab_scenarios import lab_config, ready_timeouts

FAST = LabTimings(lease_grace=1.0, monitor_period=0.1, renew_interval=0.25, boot_delay=0.1)


def workers(harness: LabHarness, *names: str) -> list[Node]:
    """Lab machines of the workers pool, created in the lab cloud as healer would."""
    driver = harness.cloud.driver
    size = next(s for s in driver.list_sizes() if s.id == "small")
    image = next(i for i in driver.list_images() if i.name == "debian-12")
    tags = {TAG_CLUSTER: "lab", TAG_POOL: "workers"}
    return [driver.create_node(name=n, size=size, image=image, ex_tags=tags) for n in names]


def running(harness: LabHarness, pool: str) -> set[str]:
    return {
        m["name"]
        for m in harness.cloud.machines()
        if m["state"] == "running" and m["tags"].get(TAG_POOL) == pool
    }


@pytest.mark.slow
async def test_a_saved_lab_with_an_unhealed_crash_starts_and_the_daemon_heals_it(
    tmp_path: Path,
) -> None:
    # The lab's config with second-scale Ready timeouts, so the second run heals in seconds.
    config = load_config(lab_config(tmp_path, health=ready_timeouts("1s")))
    state = tmp_path / "lab-state"
    # The first run: the lab starts, a worker crashes, the lab quits before it is replaced (the
    # lab's own lease grace: seconds before the crash could even be seen).
    async with running_lab(config, state) as (harness, _, _):
        workers = running(harness, "workers")
        assert len(workers) == 5
        victim = sorted(workers)[0]
        harness.crash(victim)
    assert LabHarness(state_dir=state).machine_state(victim) == "stopped"

    # The second run starts on that state (it timed out here before the fix) ...
    started = time.monotonic()
    async with running_lab(config, state, timings=FAST) as (harness, _, _):
        assert time.monotonic() - started < 30
        assert victim not in harness.kubelets  # a machine that is off runs no kubelet
        assert await harness.ready_nodes() >= running(harness, "workers") - {victim}

        # ... and the daemon heals it: the crashed machine destroyed, a replacement Ready.
        async def healed() -> bool:
            workers_now = running(harness, "workers")
            return (
                harness.machine_state(victim) == "terminated"
                and len(workers_now) == 5
                and workers_now <= await harness.ready_nodes()
            )

        await until(healed, 60, f"{victim} replaced")
        live = [m for m in harness.cloud.machines() if m["tags"].get(TAG_CLUSTER) == "lab"]
        assert len(live) == 8  # nothing created twice
        assert harness.kube is not None and await harness.kube.get_node(victim) is None
        assert victim not in harness.kubelets


async def _true(value: bool) -> bool:
    return value


@pytest.mark.slow
async def test_destroyed_machines_kubelet_stops(tmp_path: Path) -> None:
    """The harness watches the lab cloud's machine table: the kubelet of a machine destroyed
    behind its back stops at the next poll (no `kubelet.node_missing` flood), and one whose
    machine is started again after a power-off boots anew."""
    harness = LabHarness(state_dir=tmp_path, timings=FAST, with_broker=False)
    await harness.start()
    try:
        driver = harness.cloud.driver
        a, b = workers(harness, "lab-workers-a", "lab-workers-b")
        await until(
            lambda: _ready_set(harness, {"lab-workers-a", "lab-workers-b"}), 10, "both Ready"
        )
        task = harness._kubelet_tasks["lab-workers-a"]

        driver.destroy_node(a)
        await until(lambda: _true("lab-workers-a" not in harness.kubelets), 5, "kubelet gone")
        await until(lambda: _true(task.done()), 5, "its task ended")
        # Its Node, deleted by nobody, stops being renewed: Unknown after the grace period.
        await until(
            lambda: _unknown(harness, "lab-workers-a"), 5, "the destroyed node turned Unknown"
        )

        driver.stop_node(b)
        await until(lambda: _true("lab-workers-b" not in harness.kubelets), 5, "kubelet gone")
        driver.start_node(b)
        await until(lambda: _true("lab-workers-b" in harness.kubelets), 5, "a new kubelet")
        await until(lambda: _ready_set(harness, {"lab-workers-b"}), 10, "Ready again")
    finally:
        await harness.stop()


@pytest.mark.slow
async def test_a_restart_restores_the_nodes_of_stopped_machines_it_had(tmp_path: Path) -> None:
    """The lab's API server forgets its objects when the lab stops; the cluster it plays does
    not. A machine that is off gets its Node back on the next start (not Ready: nobody renews
    it) if the Node was there when the lab stopped, and not if it had been deleted already (a
    remediation under way deletes the Node before it destroys the machine)."""
    harness = LabHarness(state_dir=tmp_path, timings=FAST, with_broker=False)
    await harness.start()
    try:
        names = ("lab-workers-kept", "lab-workers-deleted", "lab-workers-up")
        workers(harness, *names)
        await until(lambda: _ready_set(harness, set(names)), 10, "all Ready")
        for name in names[:2]:
            harness.crash(name)
        assert harness.api is not None and harness.api.delete_node("lab-workers-deleted")
    finally:
        await harness.stop()

    harness = LabHarness(state_dir=tmp_path, timings=FAST, with_broker=False)
    await harness.start()
    try:
        assert harness.kube is not None
        kept = await harness.kube.get_node("lab-workers-kept")
        assert kept is not None and kept.ready is None  # registered, never posted status
        assert kept.labels["healer.io/pool"] == "workers"
        assert await harness.kube.get_node("lab-workers-deleted") is None
        await until(lambda: _ready_set(harness, {"lab-workers-up"}), 10, "the running one Ready")
        await until(lambda: _unknown(harness, "lab-workers-kept"), 5, "the kept one Unknown")
        assert harness.running_machines() == ["lab-workers-up"]
    finally:
        await harness.stop()


async def _ready_set(harness: LabHarness, nodes: set[str]) -> bool:
    return nodes <= await harness.ready_nodes()


async def _unknown(harness: LabHarness, node: str) -> bool:
    assert harness.kube is not None
    info = await harness.kube.get_node(node)
    return info is not None and info.ready == "Unknown"


def test_reset_deletes_a_lab_state_and_says_what(tmp_path: Path) -> None:
    state = tmp_path / "lab-state"
    state.mkdir()
    for name in ("healer.sqlite", "lab-cloud.sqlite", "lab-kubeconfig.yaml"):
        (state / name).write_text("x")
    said = reset_state(state)
    assert not state.exists()
    assert said == (
        f"healer lab: --reset: deleted {state}: healer.sqlite, lab-cloud.sqlite, "
        "lab-kubeconfig.yaml"
    )
    assert "nothing to delete" in reset_state(state)


def test_reset_refuses_a_directory_that_is_not_a_lab_state(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(ResetRefused, match="holds none of the lab's files"):
        reset_state(tmp_path)
    assert (tmp_path / "thesis.tex").exists()
