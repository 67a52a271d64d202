"""The lab cloud driver: persistence, sharing one file between processes, outages, audit logs."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from libcloud.common.exceptions import BaseHTTPError
from libcloud.compute.base import Node
from libcloud.compute.providers import get_driver
from libcloud.compute.types import NodeState

from healer.cloud.machines import MachineRequest, MachineState
from healer.errors import PermanentError, ProviderError
from healer.model import TAG_CLUSTER, TAG_POOL
from providers.lab.driver import DB_FILENAME, LAB_DRIVER_NAME, LabNodeDriver
from providers.lab.plugin import LabProvider
from providers.registry import libcloud_driver

CLUSTER = "lab"
TAGS = {TAG_CLUSTER: CLUSTER, TAG_POOL: "workers"}


def _driver(state_dir: Path, **kwargs: object) -> LabNodeDriver:
    return LabNodeDriver(key=state_dir / DB_FILENAME, **kwargs)  # type: ignore[arg-type]


def _create(driver: LabNodeDriver, name: str, **kwargs: object) -> str:
    node = driver.create_node(
        name,
        driver.list_sizes()[0],
        driver.list_images()[0],
        **kwargs,  # type: ignore[arg-type]
    )
    return str(node.id)


def _node(driver: LabNodeDriver, node_id: str) -> Node:
    node = driver.ex_get_node(node_id)
    assert node is not None, node_id
    return node


def _plugin(state_dir: Path) -> LabProvider:
    return LabProvider(cluster=CLUSTER, options={}, credentials={}, state_dir=state_dir)


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[LabProvider]:
    plugin = _plugin(tmp_path)
    try:
        yield plugin
    finally:
        await plugin.close()


def _request(name: str) -> MachineRequest:
    return MachineRequest(name=name, size="small", image="debian-12", tags=TAGS, user_data="#!")


def test_registered_with_libcloud_idempotently(tmp_path: Path) -> None:
    first = libcloud_driver(LAB_DRIVER_NAME)
    again = libcloud_driver(LAB_DRIVER_NAME)

    cls = get_driver(LAB_DRIVER_NAME)
    assert first is again is cls

    assert cls is LabNodeDriver
    driver = cls(key=str(tmp_path / DB_FILENAME))
    assert driver.list_nodes() == []


def test_database_runs_in_wal_mode(tmp_path: Path) -> None:
    _driver(tmp_path)

    with sqlite3.connect(tmp_path / DB_FILENAME) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_nodes_are_libcloud_nodes_with_tags_user_data_and_an_ip(tmp_path: Path) -> None:
    driver = _driver(tmp_path)

    node_id = _create(driver, "n1", ex_tags={"a": "b"}, ex_userdata="#cloud-config\n")
    (node,) = driver.list_nodes()

    assert node.id == node_id and node.name == "n1"
    assert node.state == NodeState.RUNNING
    assert node.extra["tags"] == {"a": "b"}
    assert node.extra["user_data"] == "#cloud-config\n"
    assert node.private_ips == ["10.0.0.1"]
    assert node.extra["location"] == "lab-a"


def test_machines_survive_a_restart_of_the_driver(tmp_path: Path) -> None:
    first = _driver(tmp_path)
    kept = _create(first, "kept", ex_tags={"k": "v"})
    gone = _create(first, "gone")
    first.destroy_node(_node(first, gone))
    first.ex_set_state(kept, NodeState.STOPPED)
    del first

    again = _driver(tmp_path)

    nodes = {n.id: n for n in again.list_nodes()}
    assert nodes[kept].state == NodeState.STOPPED and nodes[kept].extra["tags"] == {"k": "v"}
    # Destroyed machines stay as terminated rows, for the invariants report.
    assert nodes[gone].state == NodeState.TERMINATED
    rows = {m["id"]: m for m in again.ex_list_machines()}
    assert rows[gone]["state"] == "terminated" and rows[gone]["destroyed_at"] is not None
    assert rows[kept]["state"] == "stopped" and rows[kept]["tags"] == {"k": "v"}
    assert _create(again, "new") not in (kept, gone)


def test_two_driver_objects_share_one_file(tmp_path: Path) -> None:
    a, b = _driver(tmp_path), _driver(tmp_path)

    made_by_a = _create(a, "from-a")
    b.ex_set_state(made_by_a, NodeState.ERROR)

    node = _node(a, made_by_a)
    assert node.state == NodeState.ERROR
    assert [n.id for n in b.list_nodes()] == [made_by_a]


def test_threads_and_another_process_create_concurrently_without_collisions(
    tmp_path: Path,
) -> None:
    db = tmp_path / DB_FILENAME
    _driver(tmp_path)
    script = textwrap.dedent(
        f"""
        import sys
        from providers.lab.driver import LabNodeDriver
        d = LabNodeDriver(key={str(db)!r})
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(25):
            d.create_node(f"proc-{{i}}", d.list_sizes()[0], d.list_images()[0])
        """
    )

    def work(prefix: str) -> None:
        driver = _driver(tmp_path)
        for i in range(25):
            _create(driver, f"{prefix}-{i}")

    threads = [threading.Thread(target=work, args=(f"t{n}",)) for n in range(2)]
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as other:
        assert other.stdout is not None and other.stdin is not None
        assert other.stdout.readline().strip() == "ready"
        # Released together, so the three writers really contend for the file.
        other.stdin.write("go\n")
        other.stdin.flush()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert other.wait(timeout=30) == 0

    nodes = _driver(tmp_path).list_nodes()
    assert len(nodes) == 75
    assert len({n.id for n in nodes}) == 75
    assert len({n.private_ips[0] for n in nodes}) == 75


def test_outage_fails_api_calls_with_503_until_it_ends(tmp_path: Path) -> None:
    now = [1000.0]
    driver = _driver(tmp_path, clock=lambda: now[0])
    node_id = _create(driver, "n1")

    driver.ex_set_outage(1060.0)
    assert driver.ex_outage_until() == 1060.0

    for call in (driver.list_nodes, driver.list_sizes, driver.list_images, driver.list_locations):
        with pytest.raises(BaseHTTPError) as caught:
            call()
        assert caught.value.code == 503 and "lab cloud outage" in caught.value.message
    with pytest.raises(BaseHTTPError):
        driver.destroy_node(_node(driver, node_id))
    # The control panel keeps working, so a harness can inspect and end the outage.
    assert driver.ex_destroy_log() == []
    assert [m["id"] for m in driver.ex_list_machines()] == [node_id]

    now[0] = 1060.5
    assert [n.id for n in driver.list_nodes()] == [node_id]


async def test_outage_set_by_another_driver_is_a_provider_error(
    provider: LabProvider, tmp_path: Path
) -> None:
    made = await provider.create_machine(_request("worker-1"))
    harness = _driver(tmp_path)

    harness.ex_set_outage(time.time() + 60)

    with pytest.raises(ProviderError, match=r"provider lab: list_machines.*503.*outage") as err:
        await provider.list_machines(TAGS)
    assert err.value.delay is not None and 55 <= err.value.delay <= 60
    with pytest.raises(ProviderError):
        await provider.create_machine(_request("worker-2"))
    with pytest.raises(ProviderError):
        await provider.destroy_machine(made)

    harness.ex_set_outage(None)
    assert [m.id for m in await provider.list_machines(TAGS)] == [made.id]
    assert [e["name"] for e in harness.ex_created_log()] == ["worker-1"]
    assert harness.ex_destroy_log() == []


def test_destroy_log_records_a_double_destroy(tmp_path: Path) -> None:
    driver = _driver(tmp_path)
    node = _node(driver, _create(driver, "n1"))

    assert driver.destroy_node(node) is True
    assert driver.destroy_node(node) is False

    first, second = driver.ex_destroy_log()
    assert (first["node_id"], first["name"], first["existed"], first["repeat"]) == (
        node.id,
        "n1",
        True,
        False,
    )
    assert (second["node_id"], second["existed"], second["repeat"]) == (node.id, False, True)
    assert second["state_before"] == "terminated"
    assert first["at"] <= second["at"]


async def test_the_provider_never_destroys_twice(provider: LabProvider, tmp_path: Path) -> None:
    made = await provider.create_machine(_request("worker-1"))

    assert await provider.destroy_machine(made) is True
    assert await provider.destroy_machine(made) is False

    (entry,) = _driver(tmp_path).ex_destroy_log()
    assert entry["existed"] and not entry["repeat"]


async def test_a_provider_restart_finds_its_machines(tmp_path: Path) -> None:
    before = _plugin(tmp_path)
    made = await before.create_machine(_request("worker-1"))
    await before.close()

    after = _plugin(tmp_path)
    try:
        found = await after.get_machine("worker-1")
        again = await after.create_machine(_request("worker-1"))
    finally:
        await after.close()

    assert found is not None and found.id == made.id
    assert again.id == made.id
    assert len(_driver(tmp_path).ex_created_log()) == 1


async def test_power_states_show_through_the_provider(
    provider: LabProvider, tmp_path: Path
) -> None:
    made = await provider.create_machine(_request("worker-1"))
    harness = _driver(tmp_path)

    harness.ex_set_state(made.id, NodeState.STOPPED)
    stopped = await provider.get_machine("worker-1")
    harness.ex_set_state(made.id, NodeState.ERROR)
    crashed = await provider.get_machine("worker-1")
    assert harness.reboot_node(_node(harness, made.id)) is True
    rebooted = await provider.get_machine("worker-1")

    assert stopped is not None and stopped.state is MachineState.STOPPED
    assert crashed is not None and crashed.state is MachineState.ERROR
    assert rebooted is not None and rebooted.state is MachineState.RUNNING
    assert rebooted.extra["reboots"] == 1


async def test_tags_edited_behind_healers_back_block_destroy(
    provider: LabProvider, tmp_path: Path
) -> None:
    made = await provider.create_machine(_request("worker-1"))
    harness = _driver(tmp_path)
    harness.ex_set_tags(made.id, {TAG_CLUSTER: CLUSTER, TAG_POOL: "adopted-by-someone"})

    with pytest.raises(PermanentError, match="no longer matches"):
        await provider.destroy_machine(made)
    assert harness.ex_destroy_log() == []


async def test_two_live_machines_with_one_name_are_not_guessed_between(
    provider: LabProvider, tmp_path: Path
) -> None:
    harness = _driver(tmp_path)
    _create(harness, "twin", ex_tags=TAGS)
    _create(harness, "twin", ex_tags=TAGS)

    with pytest.raises(PermanentError, match="2 live machines share the name 'twin'"):
        await provider.get_machine("twin")


async def test_bad_size_names_what_is_available(provider: LabProvider) -> None:
    request = MachineRequest(name="w", size="huge", image="debian-12", tags=TAGS)

    with pytest.raises(PermanentError, match=r"no size 'huge'.*available: .*Lab small"):
        await provider.create_machine(request)


def test_ex_set_state_of_an_unknown_machine_names_it(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="lab-99999"):
        _driver(tmp_path).ex_set_state("lab-99999", NodeState.STOPPED)
