"""The generic libcloud plugin: what EC2 receives on the wire, error mapping, dialects, config.

Wire-level tests use libcloud's real EC2 driver against a local moto server (see
tests/plugins/ec2.py); failure answers EC2 gives but moto does not (throttling, auth failures)
are recorded EC2 error documents served through requests-mock.
"""

from __future__ import annotations

import base64
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import requests
import requests_mock as rm
import structlog
from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
from libcloud.common.types import (
    InvalidCredsError,
    LibcloudError,
    MalformedResponseError,
    ServiceUnavailableError,
)
from libcloud.common.types import ProviderError as LibcloudProviderError
from libcloud.compute.base import Node
from libcloud.compute.providers import get_driver
from libcloud.compute.types import NodeState

from healer.cloud.machines import MachineRequest, MachineState, Provider
from healer.cloud.registry import available_plugins, load_provider
from healer.config import SecretRef
from healer.errors import ConfigError, PermanentError, ProviderError
from healer.model import TAG_CLUSTER, TAG_MANAGED, TAG_POOL, TAG_WORKFLOW
from providers import registry
from providers.dialects import normalise_state
from providers.driver_provider import map_libcloud_error, scrub
from providers.ec2.dialect import Ec2Dialect
from providers.gce.dialect import GceDialect, gce_decode, gce_encode
from providers.lab.dialect import LabDialect
from providers.lab.plugin import LabProvider
from providers.libcloud_generic import LibcloudProvider
from tests.moto_ec2 import AWS_KEY_ID, AWS_SECRET, Ec2Emulator, ec2_provider

# Until tests/conftest.py lists it; registering a plugin twice is harmless.
pytest_plugins = ["tests.plugins.ec2"]

CLUSTER = "prod"
TAGS = {TAG_CLUSTER: CLUSTER, TAG_MANAGED: "true", TAG_POOL: "workers", TAG_WORKFLOW: "wf-7"}


def _request(**changes: Any) -> MachineRequest:
    fields: dict[str, Any] = {
        "name": "worker-3",
        "size": "t3.micro",
        "image": "healer-debian-12",
        "location": "us-east-1b",
        "tags": TAGS,
        "user_data": "#cloud-config\nruncmd: [kubeadm join --token abc.def]\n",
    }
    fields.update(changes)
    return MachineRequest(**fields)


@pytest.fixture
async def on_ec2(ec2: Ec2Emulator, tmp_path: Path) -> AsyncIterator[LibcloudProvider]:
    provider = ec2_provider(ec2, cluster=CLUSTER, state_dir=tmp_path)
    try:
        yield provider
    finally:
        await provider.close()


# -- on the wire ------------------------------------------------------------------------------


async def test_ec2_create_carries_the_tags_and_base64_user_data_on_the_wire(
    on_ec2: LibcloudProvider, ec2: Ec2Emulator
) -> None:
    ami = ec2.register_image("healer-debian-12")
    request = _request()

    made = await on_ec2.create_machine(request)

    (run,) = ec2.calls("RunInstances")
    p = run.params
    assert p["ImageId"] == ami
    assert p["InstanceType"] == "t3.micro"
    assert p["Placement.AvailabilityZone"] == "us-east-1b"
    assert p["MinCount"] == p["MaxCount"] == "1"
    # Tags are part of RunInstances itself: the machine is never visible untagged.
    assert p["TagSpecification.1.ResourceType"] == "instance"
    sent = {
        p[f"TagSpecification.1.Tag.{n}.Key"]: p[f"TagSpecification.1.Tag.{n}.Value"]
        for n in range(1, 10)
        if f"TagSpecification.1.Tag.{n}.Key" in p
    }
    assert sent == {"Name": "worker-3", **TAGS}
    assert p["UserData"] == base64.b64encode(request.user_data.encode()).decode()
    # Signed with the key from the credential file; the secret itself never travels.
    assert not any(AWS_SECRET in v for r in ec2.wire.requests for v in r.params.values())
    # And EC2 really holds it: read back through the API's own attribute call.
    assert ec2.user_data(made.id) == request.user_data
    tagged = ec2.client.describe_tags(Filters=[{"Name": "resource-id", "Values": [made.id]}])
    assert {t["Key"]: t["Value"] for t in tagged["Tags"]} == {"Name": "worker-3", **TAGS}


async def test_ec2_lookups_are_filtered_by_the_server(
    on_ec2: LibcloudProvider, ec2: Ec2Emulator
) -> None:
    ec2.register_image("healer-debian-12")
    await on_ec2.create_machine(_request())
    ec2.wire.requests.clear()

    await on_ec2.list_machines({TAG_CLUSTER: CLUSTER, TAG_POOL: "workers"})
    await on_ec2.get_machine("worker-3")

    listed, got = ec2.calls("DescribeInstances")
    assert _filters(listed.params) == {
        "instance-state-name": ["pending", "running", "stopping", "stopped"],
        f"tag:{TAG_CLUSTER}": [CLUSTER],
        f"tag:{TAG_POOL}": ["workers"],
    }
    assert _filters(got.params)["tag:Name"] == ["worker-3"]


async def test_ec2_image_names_are_looked_up_among_own_images_only(
    on_ec2: LibcloudProvider, ec2: Ec2Emulator
) -> None:
    ec2.register_image("healer-debian-12")

    await on_ec2.create_machine(_request())

    (lookup,) = ec2.calls("DescribeImages")
    assert lookup.params["Owner.1"] == "self"
    assert _filters(lookup.params) == {"name": ["healer-debian-12"]}


async def test_ec2_unknown_ami_id_is_a_permanent_error(
    on_ec2: LibcloudProvider, ec2: Ec2Emulator
) -> None:
    with pytest.raises(PermanentError, match=r"create_machine\(worker-3\).*image 'ami-0000dead'"):
        await on_ec2.create_machine(_request(image="ami-0000dead"))
    assert ec2.calls("RunInstances") == []


async def test_ec2_destroy_of_a_vanished_instance_is_false(
    on_ec2: LibcloudProvider, ec2: Ec2Emulator
) -> None:
    ec2.register_image("healer-debian-12")
    made = await on_ec2.create_machine(_request())
    ec2.reset()  # the instance is gone for good: EC2 now answers InvalidInstanceID.NotFound

    assert await on_ec2.destroy_machine(made) is False
    assert ec2.calls("TerminateInstances") == []


def _filters(params: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in range(1, 20):
        name = params.get(f"Filter.{n}.Name")
        if name is None:
            continue
        out[name] = [
            params[f"Filter.{n}.Value.{m}"]
            for m in range(1, 20)
            if f"Filter.{n}.Value.{m}" in params
        ]
    return out


# -- failures EC2 answers with (recorded documents) --------------------------------------------

_EC2_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
    "<Message>{message}</Message></Error></Errors>"
    "<RequestID>ea966190-f9aa-478e-9ede-example</RequestID></Response>"
)


@pytest.fixture
async def ec2_offline(tmp_path: Path) -> AsyncIterator[LibcloudProvider]:
    """The EC2 plugin aimed at the real endpoint; requests-mock answers instead of AWS."""
    (tmp_path / "k").write_text(AWS_KEY_ID)
    (tmp_path / "s").write_text(AWS_SECRET)
    provider = LibcloudProvider(
        cluster=CLUSTER,
        options={"driver": "ec2", "args": {"region": "eu-west-1"}},
        credentials={
            "key": SecretRef(file=tmp_path / "k"),
            "secret": SecretRef(file=tmp_path / "s"),
        },
        state_dir=tmp_path,
    )
    try:
        yield provider
    finally:
        await provider.close()


@pytest.mark.parametrize(
    ("status", "code", "message", "expected"),
    [
        (503, "RequestLimitExceeded", "Request limit exceeded.", ProviderError),
        (500, "InternalError", "An internal error has occurred.", ProviderError),
        (503, "Unavailable", "The server is overloaded.", ProviderError),
        (
            401,
            "AuthFailure",
            "AWS was not able to validate the provided access credentials",
            PermanentError,
        ),
        (403, "UnauthorizedOperation", "You are not authorized.", PermanentError),
        (400, "InvalidParameterValue", "Value (x) for parameter is invalid.", PermanentError),
    ],
)
async def test_ec2_error_answers_map_to_typed_errors(
    ec2_offline: LibcloudProvider,
    requests_mock: rm.Mocker,
    status: int,
    code: str,
    message: str,
    expected: type[Exception],
) -> None:
    requests_mock.register_uri(
        rm.ANY, rm.ANY, status_code=status, text=_EC2_ERROR.format(code=code, message=message)
    )

    with pytest.raises(expected, match=r"provider libcloud/ec2: list_machines\(.*\) failed") as e:
        await ec2_offline.list_machines({TAG_CLUSTER: CLUSTER})

    assert requests_mock.called
    assert AWS_SECRET not in str(e.value) and AWS_KEY_ID not in str(e.value)
    if expected is PermanentError and status == 401:
        assert "credentials" in str(e.value)


async def test_ec2_throttling_with_retry_after_sets_the_delay(
    ec2_offline: LibcloudProvider, requests_mock: rm.Mocker
) -> None:
    requests_mock.register_uri(
        rm.ANY,
        rm.ANY,
        status_code=429,
        headers={"Retry-After": "12"},
        text=_EC2_ERROR.format(code="Throttling", message="Rate exceeded"),
    )

    with pytest.raises(ProviderError) as caught:
        await ec2_offline.get_machine("worker-3")
    assert caught.value.delay == 12


async def test_unreachable_endpoint_is_temporary_and_leaks_no_signed_url(tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "k").write_text(AWS_KEY_ID)
    (tmp_path / "s").write_text(AWS_SECRET)
    provider = LibcloudProvider(
        cluster=CLUSTER,
        # Signature v2 puts the key id and the signature in the URL, which requests quotes back.
        options={
            "driver": "ec2",
            "args": {"region": "us-east-1", "signature_version": "2"},
            "host": "127.0.0.1",
            "port": port,
            "secure": False,
        },
        credentials={
            "key": SecretRef(file=tmp_path / "k"),
            "secret": SecretRef(file=tmp_path / "s"),
        },
        state_dir=tmp_path,
    )
    try:
        with structlog.testing.capture_logs() as logs, pytest.raises(ProviderError) as caught:
            await provider.list_machines({})
    finally:
        await provider.close()

    assert "cannot reach the cloud" in str(caught.value)
    for text in (str(caught.value), repr(logs)):
        assert AWS_KEY_ID not in text and "Signature" not in text and AWS_SECRET not in text
    assert [entry["event"] for entry in logs] == ["provider.call_failed"]


# -- error mapping -------------------------------------------------------------------------


def _http(code: int, message: str = "", headers: dict[str, str] | None = None) -> Exception:
    return BaseHTTPError(code, message, headers)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_http(503, "lab cloud outage"), ProviderError),
        (_http(502), ProviderError),
        (_http(429), ProviderError),
        (_http(400, "Throttling: Rate exceeded"), ProviderError),
        (_http(400, "InvalidParameterValue: bad"), PermanentError),
        (_http(404, "not found"), PermanentError),
        (_http(401), PermanentError),
        (_http(403), PermanentError),
        (InvalidCredsError("nope"), PermanentError),
        (LibcloudProviderError("boom", http_code=500), ProviderError),
        (LibcloudProviderError("bad", http_code=422), PermanentError),
        (ServiceUnavailableError(), ProviderError),
        (MalformedResponseError("<html>", body="<html>"), ProviderError),
        (requests.ConnectionError("refused"), ProviderError),
        (requests.Timeout("slow"), ProviderError),
        (ConnectionResetError("reset"), ProviderError),
        (TimeoutError(), ProviderError),
        (LibcloudError("odd"), PermanentError),
        (NotImplementedError("stop_node not implemented for this driver"), PermanentError),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else v.__name__,
)
def test_libcloud_errors_map_to_healer_errors(exc: Exception, expected: type[Exception]) -> None:
    mapped = map_libcloud_error(exc, provider="libcloud/ec2", operation="get_machine(w)")

    assert type(mapped) is expected
    assert str(mapped).startswith("provider libcloud/ec2: get_machine(w) failed")


def test_rate_limit_retry_after_becomes_the_delay() -> None:
    exc = RateLimitReachedError(headers={"retry-after": "30"})  # type: ignore[no-untyped-call]

    mapped = map_libcloud_error(exc, provider="p", operation="o")

    assert isinstance(mapped, ProviderError) and mapped.delay == 30


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("bug"),
        ValueError("Invalid region: mars-1"),
        TypeError("create_node() got an unexpected keyword argument"),
        KeyError("tags"),
        AttributeError("'NoneType' object has no attribute 'id'"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_programming_errors_are_not_mapped(exc: Exception) -> None:
    # As the module says: only libcloud's and the transport's failures are cloud failures.
    assert map_libcloud_error(exc, provider="p", operation="o") is None


async def test_a_programming_error_in_a_call_propagates_unchanged(tmp_path: Path) -> None:
    provider = LabProvider(cluster=CLUSTER, options={}, credentials={}, state_dir=tmp_path)

    def broken(driver: Any, op: str) -> None:
        raise KeyError("no-such-field")

    try:
        with pytest.raises(KeyError, match="no-such-field"):
            await provider.run_blocking("broken()", broken)
    finally:
        await provider.close()


async def test_a_busy_lab_database_is_a_temporary_error(tmp_path: Path) -> None:
    """The lab driver answers a locked database as a cloud answers overload (HTTP 503), so the
    provider maps it like any cloud's, with no knowledge of SQLite."""
    provider = LibcloudProvider(
        cluster=CLUSTER,
        options={"driver": "healer_lab", "args": {"busy_timeout": 0.05}},
        credentials={},
        state_dir=tmp_path,
    )
    holder = sqlite3.connect(tmp_path / "lab-cloud.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the other process holds the write lock
    try:
        with pytest.raises(ProviderError, match=r"HTTP 503 lab cloud database busy") as caught:
            await provider.create_machine(
                MachineRequest(name="w-1", size="small", image="debian-12", tags=TAGS)
            )
        assert isinstance(caught.value.__cause__, BaseHTTPError)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await provider.close()


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        (
            "url: https://ec2.amazonaws.com/?Action=X&AWSAccessKeyId=AKID1&Signature=x%2B (key s3cr3t)",
            "url: https://ec2.amazonaws.com/ (key ***)",
        ),
        (
            "Max retries exceeded with url: /?Action=X&Signature=abc%3D (Caused by ...)",
            "Max retries exceeded with url: /?... (Caused by ...)",
        ),
        ("is it there? no", "is it there? no"),
    ],
)
def test_scrub_removes_secrets_and_query_strings(text: str, clean: str) -> None:
    assert scrub(text, ["s3cr3t"]) == clean


# -- dialects --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "label"),
    [
        ("healer.io/cluster", "healer_2eio_2fcluster"),
        ("prod-eu", "prod-eu"),
        ("snake_case", "snake_5fcase"),
        ("Upper", "_55pper"),
        ("", ""),
        ("ünï", "_c3_bcn_c3_af"),
    ],
)
def test_gce_label_encoding_round_trips(tag: str, label: str) -> None:
    assert gce_encode(tag) == label
    assert gce_decode(label) == tag


def test_gce_dialect_labels_and_user_data() -> None:
    kwargs = GceDialect().create_kwargs(tags=TAGS, user_data="#cloud-config")

    assert kwargs["ex_labels"]["healer_2eio_2fpool"] == "workers"
    assert kwargs["ex_metadata"] == {"user-data": "#cloud-config"}
    node = Node("1", "w", NodeState.RUNNING, [], [], None, extra={"labels": kwargs["ex_labels"]})
    assert GceDialect().tags_of(node) == TAGS


@pytest.mark.parametrize(
    ("tags", "problem"),
    [
        ({"9lives": "x"}, "must start a-z"),
        ({"healer.io/pool": "x" * 64}, "longer than 63"),
    ],
)
def test_gce_dialect_refuses_tags_it_cannot_label(tags: dict[str, str], problem: str) -> None:
    with pytest.raises(PermanentError, match=problem):
        GceDialect().create_kwargs(tags=tags, user_data="")


def test_ec2_dialect_treats_shutting_down_as_terminated() -> None:
    node = Node("i-1", "w", NodeState.UNKNOWN, [], [], None, extra={"status": "shutting-down"})

    assert Ec2Dialect().state_of(node) is MachineState.TERMINATED


def test_ec2_dialect_gzips_user_data_over_the_16k_limit() -> None:
    import gzip
    import os

    small = Ec2Dialect().create_kwargs(tags={}, user_data="#cloud-config\n")
    assert small["ex_userdata"] == "#cloud-config\n"
    big_text = "#cloud-config\nwrite_files:\n" + "  - {path: /x, content: hello}\n" * 1500
    assert len(big_text) > 16384
    big = Ec2Dialect().create_kwargs(tags={}, user_data=big_text)["ex_userdata"]
    assert isinstance(big, bytes) and big[:2] == b"\x1f\x8b" and len(big) <= 16384
    assert gzip.decompress(big).decode() == big_text
    noise = "#cloud-config\n# " + os.urandom(20000).hex()
    with pytest.raises(PermanentError, match="even gzipped"):
        Ec2Dialect().create_kwargs(tags={}, user_data=noise)


def test_ec2_dialect_kwargs() -> None:
    assert Ec2Dialect().create_kwargs(tags={"a": "b"}, user_data="") == {
        "ex_metadata": {"a": "b"},
        "ex_userdata": None,
    }


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (NodeState.RUNNING, MachineState.RUNNING),
        (NodeState.STARTING, MachineState.PENDING),
        (NodeState.REBOOTING, MachineState.PENDING),
        (NodeState.STOPPING, MachineState.STOPPED),
        (NodeState.SUSPENDED, MachineState.STOPPED),
        (NodeState.TERMINATED, MachineState.TERMINATED),
        (NodeState.ERROR, MachineState.ERROR),
        ("migrating", MachineState.UNKNOWN),
    ],
)
def test_node_states_are_normalised(state: Any, expected: MachineState) -> None:
    assert normalise_state(state) is expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [("ec2", Ec2Dialect), ("eucalyptus", Ec2Dialect), ("gce", GceDialect), ("dummy", None)],
)
def test_dialects_are_found_by_name_or_driver_class(name: str, expected: type | None) -> None:
    cloud = registry.get(name) or registry.by_driver_class(get_driver(name))
    assert (cloud.load_dialect() if cloud else None) is expected
    lab = registry.get("healer_lab")
    assert lab is not None and lab.load_dialect() is LabDialect
    by_class = registry.by_driver_class(registry.libcloud_driver("healer_lab"))
    assert by_class is lab


# -- plugin loading and configuration ---------------------------------------------------------


def test_both_plugins_are_registered() -> None:
    assert {"lab", "libcloud"} <= set(available_plugins())


def test_unknown_plugin_lists_the_available_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown provider plugin 'nope'.*lab, libcloud"):
        load_provider("nope", cluster=CLUSTER, options={}, credentials={}, state_dir=tmp_path)


async def test_load_provider_builds_a_provider(tmp_path: Path) -> None:
    provider = load_provider("lab", cluster=CLUSTER, options={}, credentials={}, state_dir=tmp_path)
    try:
        assert isinstance(provider, LabProvider) and isinstance(provider, Provider)
        assert provider.db_path == tmp_path / "lab-cloud.sqlite"
    finally:
        await provider.close()


@pytest.mark.parametrize(
    ("options", "credentials", "error", "match"),
    [
        ({}, {}, ConfigError, "option 'driver' is required"),
        ({"driver": "no-such-cloud"}, {}, ConfigError, "no compute driver 'no-such-cloud'"),
        ({"driver": "dummy"}, {"key": "k"}, PermanentError, "driver dummy cannot tag machines"),
        ({"driver": "healer_lab", "colour": "red"}, {}, ConfigError, "unknown option.*colour"),
        ({"driver": "healer_lab", "args": "x"}, {}, ConfigError, "'args' must be"),
        (
            {"driver": "healer_lab", "image_owner": "me"},
            {},
            ConfigError,
            "'image_owner' does not apply to driver healer_lab",
        ),
        ({"driver": "ec2"}, {}, ConfigError, "needs provider.credentials.key"),
        (
            {"driver": "ec2", "args": {"region": "mars-north-1"}},
            {"key": "AKID", "secret": "SEKRIT"},
            ConfigError,
            "cannot build the libcloud driver: Invalid region: mars-north-1",
        ),
        ({"driver": "healer_lab", "max_concurrency": 0}, {}, ConfigError, "max_concurrency"),
    ],
)
def test_bad_configuration_is_refused_up_front(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    options: dict[str, Any],
    credentials: dict[str, str],
    error: type[Exception],
    match: str,
) -> None:
    refs = {}
    for name, value in credentials.items():
        monkeypatch.setenv(f"HEALER_TEST_{name.upper()}", value)
        refs[name] = SecretRef(env=f"HEALER_TEST_{name.upper()}")

    with pytest.raises(error, match=match) as caught:
        LibcloudProvider(cluster=CLUSTER, options=options, credentials=refs, state_dir=tmp_path)
    assert "SEKRIT" not in str(caught.value)


@pytest.mark.parametrize(
    ("options", "credentials", "match"),
    [
        ({"region": "x"}, {}, "unknown option"),
        ({}, {"key": SecretRef(env="X")}, "takes no credentials"),
    ],
)
def test_lab_plugin_refuses_options_it_does_not_take(
    tmp_path: Path, options: dict[str, Any], credentials: dict[str, SecretRef], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        LabProvider(cluster=CLUSTER, options=options, credentials=credentials, state_dir=tmp_path)


async def test_generic_lab_driver_defaults_to_the_state_dir_database(tmp_path: Path) -> None:
    provider = LibcloudProvider(
        cluster=CLUSTER, options={"driver": "healer_lab"}, credentials={}, state_dir=tmp_path
    )
    try:
        await provider.list_machines({})
    finally:
        await provider.close()

    assert (tmp_path / "lab-cloud.sqlite").exists()
    assert provider.name == "libcloud/healer_lab"
    assert "SecretRef" not in repr(provider)


async def test_machine_extra_conflicting_with_healers_own_arguments_is_refused(
    tmp_path: Path,
) -> None:
    provider = LabProvider(cluster=CLUSTER, options={}, credentials={}, state_dir=tmp_path)
    request = MachineRequest(
        name="w", size="small", image="debian-12", tags=TAGS, extra={"ex_tags": {}}
    )
    try:
        with pytest.raises(PermanentError, match="may not set ex_tags"):
            await provider.create_machine(request)
    finally:
        await provider.close()
