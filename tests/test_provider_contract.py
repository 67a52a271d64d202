"""One contract suite, run against every provider implementation.

Backends: the ``lab`` plugin; the generic ``libcloud`` plugin over the lab driver; the generic
plugin over libcloud's real EC2 driver talking HTTP to a local moto server; and the generic plugin
over libcloud's real GCE driver against recorded-shape Compute Engine answers
(tests/gce_fake.py, through requests-mock). Each backend also brings a back door (what the cloud
itself stored), so the suite can check what reached the cloud rather than what the provider says
about it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests_mock as rm

from healer.cloud.machines import (
    CapacityCheck,
    Machine,
    MachineRequest,
    MachineState,
    Provider,
    can_check_capacity,
    can_power_off,
)
from healer.cloud.registry import load_provider
from healer.errors import PermanentError
from healer.model import TAG_CLUSTER, TAG_MANAGED, TAG_POOL, TAG_WORKFLOW
from providers.lab.driver import DB_FILENAME, LabNodeDriver
from tests.gce_fake import ZONE, GceFake, gce_provider, service_account_key
from tests.moto_ec2 import Ec2Emulator, ec2_provider

# Until tests/conftest.py lists it; registering a plugin twice is harmless.
pytest_plugins = ["tests.plugins.ec2"]

CLUSTER = "contract"


@dataclass
class Backend:
    provider: Provider
    size: str
    image: str
    location: str | None
    user_data_of: Callable[[str], str]  # machine id -> user data as the cloud stored it
    destroy_calls: Callable[[], int]  # destroy requests that reached the cloud


def _lab_backdoor(state_dir: Path) -> tuple[Callable[[str], str], Callable[[], int]]:
    driver = LabNodeDriver(key=state_dir / DB_FILENAME)

    def user_data_of(machine_id: str) -> str:
        node = driver.ex_get_node(machine_id)
        assert node is not None
        return str(node.extra["user_data"])

    return user_data_of, lambda: len(driver.ex_destroy_log())


@pytest.fixture(scope="module")
def gce_key() -> str:
    return service_account_key()


def _gce_backend(tmp_path: Path, requests_mock: rm.Mocker, key: str) -> Backend:
    fake = GceFake()
    fake.install(requests_mock)

    def user_data_of(machine_id: str) -> str:
        [instance] = [i for i in fake.items("instances") if i["id"] == machine_id]
        items = {m["key"]: m["value"] for m in instance["metadata"].get("items", [])}
        return str(items["user-data"])

    def destroy_calls() -> int:
        return sum(1 for c in fake.calls if c.method == "DELETE" and "/instances/" in f"/{c.path}")

    provider = gce_provider(cluster=CLUSTER, state_dir=tmp_path, private_key=key)
    return Backend(provider, "n1-standard-1", "debian-12", ZONE, user_data_of, destroy_calls)


@pytest.fixture(params=["lab", "libcloud-lab", "libcloud-ec2", "libcloud-gce"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    kind: str = request.param
    if kind == "lab":
        provider = load_provider(
            "lab", cluster=CLUSTER, options={}, credentials={}, state_dir=tmp_path
        )
        user_data_of, destroys = _lab_backdoor(tmp_path)
        found = Backend(provider, "small", "debian-12", "lab-b", user_data_of, destroys)
    elif kind == "libcloud-lab":
        provider = load_provider(
            "libcloud",
            cluster=CLUSTER,
            options={"driver": "healer_lab"},
            credentials={},
            state_dir=tmp_path,
        )
        user_data_of, destroys = _lab_backdoor(tmp_path)
        # By id this time; the lab plugin above resolves by name.
        found = Backend(provider, "medium", "lab-img-debian-12", None, user_data_of, destroys)
    elif kind == "libcloud-gce":
        found = _gce_backend(
            tmp_path, request.getfixturevalue("requests_mock"), request.getfixturevalue("gce_key")
        )
    else:
        emulator: Ec2Emulator = request.getfixturevalue("ec2")
        emulator.register_image("healer-debian-12")
        provider = ec2_provider(emulator, cluster=CLUSTER, state_dir=tmp_path)
        found = Backend(
            provider,
            "t3.micro",
            "healer-debian-12",
            "us-east-1b",
            emulator.user_data,
            lambda: len(emulator.calls("TerminateInstances")),
        )
    try:
        yield found
    finally:
        await found.provider.close()


def _request(backend: Backend, name: str, **tags: str) -> MachineRequest:
    return MachineRequest(
        name=name,
        size=backend.size,
        image=backend.image,
        location=backend.location,
        tags={TAG_CLUSTER: CLUSTER, TAG_MANAGED: "true", TAG_POOL: "workers", **tags},
        user_data="#cloud-config\nhostname: " + name + "\n",
    )


def _ids(machines: list[Machine]) -> set[str]:
    return {m.id for m in machines}


async def test_provider_satisfies_the_protocol(backend: Backend) -> None:
    assert isinstance(backend.provider, Provider)
    assert backend.provider.name


async def test_create_then_get_then_list_by_tags(backend: Backend) -> None:
    request = _request(backend, "worker-1")
    made = await backend.provider.create_machine(request)

    assert made.name == "worker-1"
    assert made.state in (MachineState.PENDING, MachineState.RUNNING)
    assert request.tags.items() <= made.tags.items()
    assert made.private_ips
    assert made.created_at is not None

    got = await backend.provider.get_machine("worker-1")
    assert got is not None and got.id == made.id
    assert request.tags.items() <= got.tags.items()

    listed = await backend.provider.list_machines({TAG_CLUSTER: CLUSTER, TAG_POOL: "workers"})
    assert _ids(listed) == {made.id}
    assert await backend.provider.get_machine("worker-404") is None


async def test_create_twice_with_the_same_name_makes_one_machine(backend: Backend) -> None:
    first = await backend.provider.create_machine(_request(backend, "worker-1"))
    again = await backend.provider.create_machine(_request(backend, "worker-1"))

    assert again.id == first.id
    assert _ids(await backend.provider.list_machines({TAG_CLUSTER: CLUSTER})) == {first.id}


async def test_concurrent_creates_of_one_name_make_one_machine(backend: Backend) -> None:
    made = await asyncio.gather(
        *(backend.provider.create_machine(_request(backend, "worker-1")) for _ in range(4))
    )

    assert len({m.id for m in made}) == 1
    assert len(await backend.provider.list_machines({TAG_CLUSTER: CLUSTER})) == 1


async def test_a_name_taken_by_a_machine_with_other_tags_is_refused(backend: Backend) -> None:
    theirs = await backend.provider.create_machine(
        _request(backend, "worker-1", **{TAG_WORKFLOW: "wf-1"})
    )

    with pytest.raises(PermanentError, match=rf"worker-1.*{theirs.id}.*{TAG_WORKFLOW}"):
        await backend.provider.create_machine(
            _request(backend, "worker-1", **{TAG_WORKFLOW: "wf-2"})
        )
    assert _ids(await backend.provider.list_machines({TAG_CLUSTER: CLUSTER})) == {theirs.id}


async def test_destroy_makes_the_machine_gone(backend: Backend) -> None:
    made = await backend.provider.create_machine(_request(backend, "worker-1"))

    assert await backend.provider.destroy_machine(made) is True

    assert await backend.provider.get_machine("worker-1") is None
    assert await backend.provider.list_machines({TAG_CLUSTER: CLUSTER}) == []
    assert backend.destroy_calls() == 1


async def test_destroy_twice_destroys_once_and_nothing_else(backend: Backend) -> None:
    doomed = await backend.provider.create_machine(_request(backend, "worker-1"))
    bystander = await backend.provider.create_machine(_request(backend, "worker-2"))

    assert await backend.provider.destroy_machine(doomed) is True
    assert await backend.provider.destroy_machine(doomed) is False

    assert backend.destroy_calls() == 1
    assert _ids(await backend.provider.list_machines({TAG_CLUSTER: CLUSTER})) == {bystander.id}


async def test_destroy_with_mismatching_tags_is_refused_and_the_machine_survives(
    backend: Backend,
) -> None:
    made = await backend.provider.create_machine(_request(backend, "worker-1"))
    stale = dataclasses.replace(made, tags={**made.tags, TAG_POOL: "some-other-pool"})

    with pytest.raises(PermanentError, match=TAG_POOL):
        await backend.provider.destroy_machine(stale)

    still = await backend.provider.get_machine("worker-1")
    assert still is not None and still.id == made.id
    assert backend.destroy_calls() == 0


async def test_destroy_of_a_machine_with_another_name_is_refused(backend: Backend) -> None:
    made = await backend.provider.create_machine(_request(backend, "worker-1"))

    with pytest.raises(PermanentError, match="no longer matches"):
        await backend.provider.destroy_machine(dataclasses.replace(made, name="worker-9"))
    assert backend.destroy_calls() == 0


async def test_destroy_of_another_clusters_machine_is_refused(backend: Backend) -> None:
    made = await backend.provider.create_machine(_request(backend, "worker-1"))
    foreign = dataclasses.replace(made, tags={**made.tags, TAG_CLUSTER: "elsewhere"})

    with pytest.raises(PermanentError, match=f"{TAG_CLUSTER}={CLUSTER}"):
        await backend.provider.destroy_machine(foreign)
    assert backend.destroy_calls() == 0


async def test_create_without_the_cluster_tag_is_refused(backend: Backend) -> None:
    request = dataclasses.replace(_request(backend, "worker-1"), tags={TAG_POOL: "workers"})

    with pytest.raises(PermanentError, match=TAG_CLUSTER):
        await backend.provider.create_machine(request)
    assert await backend.provider.get_machine("worker-1") is None


async def test_list_matches_all_given_tags(backend: Backend) -> None:
    a1 = await backend.provider.create_machine(
        _request(backend, "a-1", **{TAG_POOL: "a", TAG_WORKFLOW: "wf-1"})
    )
    a2 = await backend.provider.create_machine(
        _request(backend, "a-2", **{TAG_POOL: "a", TAG_WORKFLOW: "wf-2"})
    )
    b1 = await backend.provider.create_machine(
        _request(backend, "b-1", **{TAG_POOL: "b", TAG_WORKFLOW: "wf-1"})
    )
    list_ = backend.provider.list_machines

    assert _ids(await list_({TAG_CLUSTER: CLUSTER})) == {a1.id, a2.id, b1.id}
    assert _ids(await list_({TAG_CLUSTER: CLUSTER, TAG_POOL: "a"})) == {a1.id, a2.id}
    assert _ids(await list_({TAG_POOL: "a", TAG_WORKFLOW: "wf-1"})) == {a1.id}
    assert _ids(await list_({TAG_WORKFLOW: "wf-1"})) == {a1.id, b1.id}
    assert await list_({TAG_CLUSTER: CLUSTER, TAG_POOL: "c"}) == []
    assert await list_({TAG_CLUSTER: "other-cluster"}) == []


async def test_list_excludes_terminated_machines(backend: Backend) -> None:
    gone = await backend.provider.create_machine(_request(backend, "worker-1"))
    kept = await backend.provider.create_machine(_request(backend, "worker-2"))
    await backend.provider.destroy_machine(gone)

    assert _ids(await backend.provider.list_machines({TAG_CLUSTER: CLUSTER})) == {kept.id}


async def test_a_name_can_be_reused_after_destroy(backend: Backend) -> None:
    old = await backend.provider.create_machine(_request(backend, "worker-1"))
    await backend.provider.destroy_machine(old)

    new = await backend.provider.create_machine(_request(backend, "worker-1"))

    assert new.id != old.id
    got = await backend.provider.get_machine("worker-1")
    assert got is not None and got.id == new.id


async def test_user_data_reaches_the_cloud_and_stays_out_of_the_record(backend: Backend) -> None:
    request = _request(backend, "worker-1")
    made = await backend.provider.create_machine(request)

    assert backend.user_data_of(made.id) == request.user_data
    assert "hostname: worker-1" not in repr(made)


async def test_unknown_size_and_image_are_permanent_errors_naming_them(backend: Backend) -> None:
    with pytest.raises(PermanentError, match=r"create_machine\(worker-1\).*size 'enormous'"):
        await backend.provider.create_machine(
            dataclasses.replace(_request(backend, "worker-1"), size="enormous")
        )
    with pytest.raises(PermanentError, match=r"image 'no-such-os'"):
        await backend.provider.create_machine(
            dataclasses.replace(_request(backend, "worker-1"), image="no-such-os")
        )
    assert await backend.provider.get_machine("worker-1") is None


async def test_calls_after_close_are_refused(backend: Backend) -> None:
    await backend.provider.close()

    with pytest.raises(PermanentError, match="after close"):
        await backend.provider.get_machine("worker-1")


# -- optional capabilities: PowerControl (fencing) and CapacityPreflight (surge) -------------
# A backend without a capability is skipped, and the workflow uses its fallback (fence by
# destroy; surge falls back to replace): test_workflow_order covers that side.


def _needs(backend: Backend, capability: str) -> None:
    have = can_power_off if capability == "power" else can_check_capacity
    if not have(backend.provider):
        pytest.skip(f"{backend.provider.name} does not offer this optional capability")


async def test_power_off_stops_the_machine_and_is_idempotent(backend: Backend) -> None:
    _needs(backend, "power")
    made = await backend.provider.create_machine(_request(backend, "worker-1"))
    bystander = await backend.provider.create_machine(_request(backend, "worker-2"))

    assert await backend.provider.power_off_machine(made) is True  # type: ignore[attr-defined]
    off = await backend.provider.get_machine("worker-1")
    assert off is not None and off.id == made.id and off.state is MachineState.STOPPED
    assert await backend.provider.power_off_machine(made) is False  # type: ignore[attr-defined]
    other = await backend.provider.get_machine("worker-2")
    assert other is not None and other.id == bystander.id and other.state is MachineState.RUNNING
    # Fenced, then destroyed: one destroy, of a stopped machine.
    assert await backend.provider.destroy_machine(made) is True
    assert await backend.provider.power_off_machine(made) is False  # type: ignore[attr-defined]
    assert backend.destroy_calls() == 1


async def test_power_off_refuses_a_machine_that_no_longer_matches(backend: Backend) -> None:
    _needs(backend, "power")
    made = await backend.provider.create_machine(_request(backend, "worker-1"))
    for stale, match in (
        (dataclasses.replace(made, tags={**made.tags, TAG_POOL: "other"}), TAG_POOL),
        (dataclasses.replace(made, name="worker-9"), "no longer matches"),
        (dataclasses.replace(made, tags={**made.tags, TAG_CLUSTER: "elsewhere"}), TAG_CLUSTER),
    ):
        with pytest.raises(PermanentError, match=match):
            await backend.provider.power_off_machine(stale)  # type: ignore[attr-defined]
    still = await backend.provider.get_machine("worker-1")
    assert still is not None and still.state is MachineState.RUNNING


async def test_capacity_preflight_answers_with_a_capacity_check(backend: Backend) -> None:
    _needs(backend, "capacity")
    check = await backend.provider.check_capacity(_request(backend, "worker-1"), 1)  # type: ignore[attr-defined]
    assert isinstance(check, CapacityCheck)
    assert check.ok is True and check.message
    assert await backend.provider.list_machines({TAG_CLUSTER: CLUSTER}) == []  # nothing made


async def test_lab_capacity_preflight_follows_the_quota(tmp_path: Path) -> None:
    provider = load_provider("lab", cluster=CLUSTER, options={}, credentials={}, state_dir=tmp_path)
    try:
        driver = LabNodeDriver(key=tmp_path / DB_FILENAME)
        request = MachineRequest(
            name="worker-1",
            size="small",
            image="debian-12",
            tags={TAG_CLUSTER: CLUSTER, TAG_MANAGED: "true", TAG_POOL: "workers"},
        )
        await provider.create_machine(request)
        driver.ex_set_quota(2)
        assert (await provider.check_capacity(request, 1)).ok is True  # type: ignore[attr-defined]
        full = await provider.check_capacity(request, 2)  # type: ignore[attr-defined]
        assert (full.ok, full.reason, full.available) == (False, "QuotaExceeded", 1)
        await provider.create_machine(dataclasses.replace(request, name="worker-2"))
        with pytest.raises(PermanentError, match="QuotaExceeded"):
            await provider.create_machine(dataclasses.replace(request, name="worker-3"))
        # A stopped machine still holds its quota; a destroyed one frees it.
        [first] = [m for m in await provider.list_machines({}) if m.name == "worker-1"]
        await provider.power_off_machine(first)  # type: ignore[attr-defined]
        assert (await provider.check_capacity(request, 1)).ok is False  # type: ignore[attr-defined]
        await provider.destroy_machine(first)
        assert (await provider.check_capacity(request, 1)).ok is True  # type: ignore[attr-defined]
    finally:
        await provider.close()
