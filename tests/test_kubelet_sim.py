"""SimulatedKubelet against the fake API server over HTTP, in virtual time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from structlog.testing import capture_logs

from healer.clock import VirtualClock
from healer.kube.client import KubeClient
from healer.lab.apiserver.resources import TAINT_UNREACHABLE, parse_time
from healer.lab.apiserver.server import FakeApiServer
from healer.lab.kubelet import KubeletState, SimulatedKubelet

Eventually = Callable[..., Awaitable[None]]


@dataclass
class Machine:
    kubelet: SimulatedKubelet
    task: asyncio.Task[None]
    published: list[tuple[str, dict[str, Any]]]
    fake: FakeApiServer
    clock: VirtualClock

    def channel(self, name: str) -> list[dict[str, Any]]:
        return [payload for channel, payload in self.published if channel == name]

    def ready(self) -> str | None:
        node = self.fake.node(self.kubelet.node)
        if node is None:
            return None
        for cond in node.get("status", {}).get("conditions", []):
            if cond["type"] == "Ready":
                return str(cond["status"])
        return None

    def state(self) -> KubeletState:
        """Read afresh (a property mypy would keep narrowed from an earlier assert)."""
        return self.kubelet.state

    def renewed_at(self) -> float | None:
        lease = self.fake.lease(self.kubelet.node)
        return parse_time(lease["spec"]["renewTime"]) if lease else None


@pytest.fixture
async def machine(
    fake_api_virtual: FakeApiServer,
    kube_virtual: KubeClient,
    virtual_clock: VirtualClock,
    eventually: Eventually,
) -> AsyncIterator[Machine]:
    published: list[tuple[str, dict[str, Any]]] = []

    async def publish(channel: str, payload: dict[str, Any]) -> None:
        published.append((channel, payload))

    kubelet = SimulatedKubelet(
        client=kube_virtual,
        node="w1",
        labels={"healer.io/pool": "workers"},
        clock=virtual_clock,
        renew_interval=1.0,
        publish=publish,
    )
    task = asyncio.create_task(kubelet.run())
    m = Machine(kubelet, task, published, fake_api_virtual, virtual_clock)
    await eventually(lambda: m.ready() == "True" and len(m.channel("heartbeat")) == 1)
    try:
        yield m
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def tick(m: Machine, eventually: Eventually, seconds: float = 1.0) -> None:
    """Advance virtual time by one round of a live kubelet and wait for the round to finish.

    Its HTTP calls cross a real socket, so the round is not over when ``advance`` returns; the
    heartbeat is published last, and from there to its next sleep there is no I/O."""
    beats = len(m.channel("heartbeat"))
    await m.clock.advance(seconds)
    await eventually(lambda: len(m.channel("heartbeat")) > beats)
    await m.clock.settle()


async def test_registers_renews_and_heartbeats(machine: Machine, eventually: Eventually) -> None:
    node = machine.fake.node("w1")
    assert node is not None
    assert node["metadata"]["labels"] == {"healer.io/pool": "workers"}
    assert machine.renewed_at() == machine.clock.now()
    assert machine.channel("heartbeat") == [{"v": 1}]
    start = machine.clock.now()
    for _ in range(3):
        await tick(machine, eventually)
    await eventually(lambda: len(machine.channel("heartbeat")) == 4)
    assert machine.renewed_at() == start + 3
    assert machine.kubelet.state is KubeletState.RUNNING


async def test_lease_is_owned_by_the_node_and_goes_with_it(
    machine: Machine, eventually: Eventually
) -> None:
    """As a real kubelet's lease: the Node is its owner (apiVersion v1, kind Node, name, uid), so
    the garbage collector deletes it once the Node is deleted."""
    node, lease = machine.fake.node("w1"), machine.fake.lease("w1")
    assert node is not None and lease is not None
    owner = {"apiVersion": "v1", "kind": "Node", "name": "w1", "uid": node["metadata"]["uid"]}
    assert lease["metadata"]["ownerReferences"] == [owner]
    await tick(machine, eventually)  # renewals keep the owner
    renewed = machine.fake.lease("w1")
    assert renewed is not None and renewed["metadata"]["ownerReferences"] == [owner]

    machine.kubelet.crash()  # the machine dies, then its Node is deleted
    await machine.clock.settle()
    machine.fake.delete_node("w1")
    assert machine.fake.lease("w1") is not None  # the collector runs after the delete
    await machine.clock.advance(machine.fake.monitor_period)
    assert machine.fake.lease("w1") is None


async def test_adopts_an_existing_node(
    fake_api_virtual: FakeApiServer,
    kube_virtual: KubeClient,
    virtual_clock: VirtualClock,
    eventually: Eventually,
) -> None:
    fake_api_virtual.add_node("w2", {"old": "label"}, ready=False)
    kubelet = SimulatedKubelet(
        client=kube_virtual, node="w2", labels={"new": "label"}, clock=virtual_clock
    )
    with capture_logs() as logs:
        task = asyncio.create_task(kubelet.run())
        try:
            await eventually(lambda: kubelet.registered)
            await eventually(
                lambda: (
                    (fake_api_virtual.node("w2") or {})["status"]["conditions"][-1]["status"]
                    == "True"
                )
            )
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    (registered,) = [e for e in logs if e["event"] == "kubelet.registered"]
    assert registered["adopted"] is True and registered["node"] == "w2"
    node = fake_api_virtual.node("w2")
    assert node is not None
    assert node["metadata"]["labels"] == {"old": "label", "new": "label"}


async def test_crash_goes_silent_and_the_node_turns_unknown(
    machine: Machine, eventually: Eventually
) -> None:
    machine.kubelet.crash()
    beats = len(machine.channel("heartbeat"))
    last_renewal = machine.renewed_at()
    machine.fake.add_node("w2")  # healthy: with every node down nothing is tainted
    await machine.clock.advance(30)
    machine.fake.set_lease("w2")
    await machine.clock.advance(15)
    await asyncio.sleep(0.05)
    assert machine.kubelet.state is KubeletState.CRASHED
    assert len(machine.channel("heartbeat")) == beats
    assert machine.renewed_at() == last_renewal
    assert machine.ready() == "Unknown"
    node = machine.fake.node("w1")
    assert node is not None
    assert TAINT_UNREACHABLE in {t["key"] for t in node["spec"]["taints"]}
    assert not machine.task.done()  # a dead machine never exits cleanly


async def test_partition_and_heal(machine: Machine, eventually: Eventually) -> None:
    machine.kubelet.partition()
    await machine.clock.advance(1)
    assert machine.kubelet.state is KubeletState.PARTITIONED
    beats = len(machine.channel("heartbeat"))
    renewed = machine.renewed_at()
    await machine.clock.advance(45)
    await asyncio.sleep(0.05)
    assert machine.ready() == "Unknown"
    assert len(machine.channel("heartbeat")) == beats and machine.renewed_at() == renewed

    machine.kubelet.heal()
    await eventually(lambda: machine.ready() == "True")
    await eventually(lambda: len(machine.channel("heartbeat")) == beats + 1)
    node = machine.fake.node("w1")
    assert node is not None and "taints" not in node["spec"]
    assert machine.state() is KubeletState.RUNNING


async def test_reboot_announces_goes_down_and_comes_back(
    machine: Machine, eventually: Eventually
) -> None:
    await machine.kubelet.reboot(10)
    assert machine.channel("reboot") == [{"v": 1, "event": "started"}]
    assert machine.kubelet.state is KubeletState.REBOOTING
    await machine.clock.settle()  # down: no I/O until it boots
    renewed = machine.renewed_at()
    beats = len(machine.channel("heartbeat"))
    await machine.clock.advance(9)
    await asyncio.sleep(0.05)
    assert machine.renewed_at() == renewed and len(machine.channel("heartbeat")) == beats
    await machine.clock.advance(1)
    await eventually(lambda: len(machine.channel("reboot")) == 2)
    assert machine.channel("reboot")[-1] == {"v": 1, "event": "booted"}
    assert machine.ready() == "True"
    assert machine.renewed_at() == machine.clock.now()
    assert machine.channel("upgrade") == []
    assert machine.state() is KubeletState.RUNNING


async def test_bad_upgrade_never_comes_back(machine: Machine, eventually: Eventually) -> None:
    await machine.kubelet.reboot(None, upgrade=True)
    assert [c for c, _ in machine.published if c != "heartbeat"] == ["upgrade", "reboot"]
    assert machine.channel("upgrade") == [{"v": 1, "event": "started"}]
    await machine.clock.advance(120)
    await asyncio.sleep(0.05)
    assert machine.channel("reboot") == [{"v": 1, "event": "started"}]
    assert machine.ready() == "Unknown"
    assert machine.kubelet.state is KubeletState.REBOOTING


async def test_upgrade_with_reboot_finishes(machine: Machine, eventually: Eventually) -> None:
    await machine.kubelet.reboot(5, upgrade=True)
    await machine.clock.settle()  # down: no I/O until it boots
    await machine.clock.advance(5)
    await eventually(lambda: len(machine.channel("upgrade")) == 2)
    assert machine.channel("upgrade")[-1] == {"v": 1, "event": "finished"}


async def test_reboot_reregisters_a_node_deleted_while_down(
    machine: Machine, eventually: Eventually
) -> None:
    await machine.kubelet.reboot(5)
    await machine.clock.settle()  # down: no I/O until it boots
    machine.fake.delete_node("w1")
    await machine.clock.advance(5)
    await eventually(lambda: machine.ready() == "True")
    await eventually(lambda: machine.fake.lease("w1") is not None)


async def test_api_errors_are_logged_and_retried(machine: Machine, eventually: Eventually) -> None:
    # A renewal goes out from the lease last written (no read): the update is what fails.
    machine.fake.fail_next("PUT", "/leases/w1$", 503)
    with capture_logs() as logs:
        await tick(machine, eventually)
        await eventually(lambda: any(e["event"] == "kubelet.api_error" for e in logs))
        before = machine.renewed_at()
        await tick(machine, eventually)
        await eventually(lambda: machine.renewed_at() != before)
    (error,) = [e for e in logs if e["event"] == "kubelet.api_error"]
    assert error["error_type"] == "KubeUnavailable" and error["log_level"] == "warning"
    # The heartbeat still went out on the failing round: the agent does not need the API.
    assert len(machine.channel("heartbeat")) >= 3


async def test_publish_failures_do_not_stop_the_kubelet(
    fake_api_virtual: FakeApiServer,
    kube_virtual: KubeClient,
    virtual_clock: VirtualClock,
    eventually: Eventually,
) -> None:
    async def broken(channel: str, payload: dict[str, Any]) -> None:
        raise ConnectionError("broker down")

    kubelet = SimulatedKubelet(
        client=kube_virtual, node="w3", labels={}, clock=virtual_clock, publish=broken
    )
    with capture_logs() as logs:
        task = asyncio.create_task(kubelet.run())
        try:
            await eventually(lambda: fake_api_virtual.lease("w3") is not None)
            await eventually(lambda: any(e["event"] == "kubelet.publish_failed" for e in logs))
        finally:
            kubelet.stop()
            await virtual_clock.advance(0)
            async with asyncio.timeout(5):
                await task
    assert kubelet.state is KubeletState.STOPPED


async def test_stop_returns(machine: Machine, eventually: Eventually) -> None:
    machine.kubelet.stop()
    async with asyncio.timeout(5):
        await machine.task
    assert machine.kubelet.state is KubeletState.STOPPED
