"""Secrets stay out of user data; control-plane keys arrive over the key push; EC2 instances
require IMDSv2 with a hop limit of 1.

The user data is read back as each cloud stored it (moto's EC2, the recorded GCE fake, the lab's
database) for every machine role: the first control-plane machine (kubeadm init), the joining
control-plane machines and the workers. Every ``write_files`` entry is decoded (gzip, base64)
before it is searched, and the search is shown to find the same material in the files the push
delivers, so it can fail.
"""

from __future__ import annotations

import base64
import gzip
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests_mock as rm
import structlog
import yaml

from healer.cloud.machines import Machine, Provider
from healer.config import ClusterConfig, parse_config
from healer.provisioning.apply import ApplyResult, Inventory, apply
from healer.provisioning.keydelivery import (
    LAB_MACHINES,
    DirectoryPush,
    KeyDelivery,
    KeyDeliveryError,
    KeyPush,
)
from healer.provisioning.keystore import ClusterState
from healer.provisioning.kubeadm.documents import ENCRYPTION_CONFIG
from healer.provisioning.kubeadm.machine import KEYS_READY, KUBEADM_CONFIG
from healer.provisioning.kubeadm.tokens import ensure_secrets
from healer.provisioning.machinefiles import MachineFile
from healer.provisioning.userdata import UserDataBuilder
from providers.ec2.dialect import METADATA_OPTIONS
from providers.lab.driver import DB_FILENAME, LabNodeDriver
from providers.lab.plugin import LabProvider
from tests.gce_fake import ZONE as GCE_ZONE
from tests.gce_fake import GceFake, gce_provider, service_account_key
from tests.moto_ec2 import Ec2Emulator
from tests.provisioning_support import files

ENDPOINT = "api.prod.example.net:6443"


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def _config(
    provider: dict[str, Any], location: str | None = None, *, gce: bool = False
) -> ClusterConfig:
    machine: dict[str, Any] = {"size": "medium" if provider["plugin"] == "lab" else "t3.micro"}
    if gce:
        machine = {"size": "n1-standard-1", "location": location}
    doc: dict[str, Any] = {
        "name": "prod",
        "provider": provider,
        "network": {"cidr": "10.50.0.0/16", "subnetCidr": "10.50.1.0/24"},
        "adminCidrs": ["203.0.113.0/24"],
        "kubernetes": {"controlPlaneEndpoint": ENDPOINT, "installPackages": False},
        "pools": [
            {"name": "cp", "role": "control-plane", "size": 3, "machine": machine},
            {"name": "workers", "size": 2, "machine": machine},
        ],
    }
    if location is not None:
        doc["network"]["location"] = location
    if gce:  # as in test_provisioning_gce: the HTTP check GCE's target pools take
        doc["loadBalancer"] = {"healthCheck": {"protocol": "http", "port": 80, "path": "/healthz"}}
    return parse_config({"clusters": [doc]}).clusters[0]


# -- what counts as secret material ------------------------------------------------------------


def _files(user_data: str | bytes) -> dict[str, bytes]:
    """Every file of a cloud-config, decoded as cloud-init would write it; ``""`` is the whole
    document (runcmd and the rest). EC2's user data may be gzipped as a whole."""
    raw = user_data.encode() if isinstance(user_data, str) else user_data
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    doc = yaml.safe_load(raw)
    assert raw.startswith(b"#cloud-config\n") and isinstance(doc, dict)
    return {"": raw} | {path: content for path, (content, _mode) in files(doc).items()}


def _needles(state: ClusterState) -> dict[str, bytes]:
    """Each private key healer holds for the cluster (whole, and every line of its body), the
    encryption key, and the cluster's SSH private key."""
    found: dict[str, bytes] = {}
    keys = [*sorted(state.root.glob("pki/**/*.key")), state.root / "ssh" / "id_ed25519"]
    for path in keys:
        if not path.is_file():
            continue
        pem = path.read_bytes()
        name = str(path.relative_to(state.root))
        found[name] = pem
        for n, line in enumerate(pem.splitlines()):
            if len(line) >= 40 and not line.startswith(b"-----"):
                found[f"{name} line {n}"] = line
    assert any(k.startswith("pki/") for k in found), "the cluster has no CA keys to look for"
    found["encryption key"] = (state.root / "secrets" / "encryption-key").read_bytes().strip()
    return found


def _leaks(files: dict[str, bytes], state: ClusterState) -> list[str]:
    token = ensure_secrets(state, _K8S).bootstrap_token.reveal().encode()
    token_secret = token.split(b".")[1]
    leaks = []
    for path, content in files.items():
        if b"PRIVATE KEY" in content:
            leaks.append(f"{path or 'user data'}: a PEM private key")
        for what, needle in _needles(state).items():
            if needle in content:
                leaks.append(f"{path or 'user data'}: {what}")
        # The bootstrap token is the one secret a machine's user data carries, in one file.
        if token_secret in content and path not in ("", KUBEADM_CONFIG):
            leaks.append(f"{path}: the bootstrap token outside {KUBEADM_CONFIG}")
    return leaks


_K8S = _config({"plugin": "lab"}).kubernetes
assert _K8S is not None


def _role(files: dict[str, bytes]) -> str:
    env = files["/etc/healer/kubeadm/bootstrap.env"].decode()
    mode = next(ln.split("=")[1] for ln in env.splitlines() if ln.startswith("KUBEADM_MODE="))
    if mode == "init":
        return "first control plane"
    return "joining control plane" if "KEYS_READY=" in env else "worker"


def _check_cluster(
    stored: dict[str, str | bytes], state: ClusterState, pushed: Callable[[str], Path]
) -> None:
    """``stored``: machine name -> the user data as the cloud keeps it. Every role is there, no
    user data leaks, and each control-plane machine got its keys the other way."""
    roles: dict[str, str] = {}
    for name, data in stored.items():
        files = _files(data)
        roles[name] = _role(files)
        assert _leaks(files, state) == [], name
        assert ENCRYPTION_CONFIG not in files
    assert sorted(roles.values()) == sorted(
        ["first control plane", "joining control plane", "joining control plane"] + ["worker"] * 2
    )
    for name, role in roles.items():
        root = pushed(name)
        ready = root / KEYS_READY.lstrip("/")
        if role == "worker":
            assert not root.exists(), f"keys were pushed to worker {name}"
            continue
        listed = ready.read_text().splitlines()
        assert ENCRYPTION_CONFIG in listed and "/etc/kubernetes/pki/ca.key" in listed
        delivered = {p: (root / p.lstrip("/")).read_bytes() for p in listed}
        # The search does find what the push carried: it is what the user data lacks.
        assert any("pki/ca.key" in leak for leak in _leaks(delivered, state)), name
        assert any("encryption key" in leak for leak in _leaks(delivered, state)), name
        for path in listed:
            mode = (root / path.lstrip("/")).stat().st_mode & 0o777
            assert mode == (0o644 if path.endswith((".crt", ".pub")) else 0o600), path


def _directory(root: Path) -> Callable[[ClusterState, ClusterConfig], KeyPush]:
    return lambda _state, _cluster: DirectoryPush(root)


def _user_data(state_dir: Path) -> Callable[[ClusterConfig, str, str], str]:
    return UserDataBuilder(state_dir, discover_agent=False)


async def _apply(
    cluster: ClusterConfig, provider: Provider, state_dir: Path, machines: Path | None = None
) -> ApplyResult:
    """``apply`` with the key push into ``machines`` (None: the provider's default push)."""
    push = {} if machines is None else {"push": _directory(machines)}
    return await apply(
        cluster,
        provider,
        user_data=_user_data(state_dir),
        inventory=Inventory(state_dir, "prod"),
        keys=KeyDelivery(state_dir, patience=0, **push),  # type: ignore[arg-type]
    )


# -- EC2 ----------------------------------------------------------------------------------------


async def test_ec2_user_data_of_every_role_holds_no_key_and_instances_require_imdsv2(
    ec2_prod: Provider, ec2: Ec2Emulator, tmp_path: Path
) -> None:
    cluster = _config({"plugin": "libcloud", "options": {"driver": "ec2"}}, "us-east-1a")
    state_dir, machines = tmp_path / "state", tmp_path / "machines"
    result = await _apply(cluster, ec2_prod, state_dir, machines)
    assert len(result.created) == 5 and len(result.keys_delivered) == 3
    runs = ec2.calls("RunInstances")
    assert len(runs) == 5
    for run in runs:
        assert run.params["MetadataOptions.HttpTokens"] == "required"
        assert run.params["MetadataOptions.HttpPutResponseHopLimit"] == "1"
        assert run.params["MetadataOptions.HttpEndpoint"] == "enabled"
    reservations = ec2.client.describe_instances()["Reservations"]
    instances = [i for r in reservations for i in r["Instances"]]
    stored: dict[str, str | bytes] = {}
    for instance in instances:
        options = instance["MetadataOptions"]
        assert (options["HttpTokens"], options["HttpPutResponseHopLimit"]) == ("required", 1)
        assert options["HttpEndpoint"] == "enabled"
        name = next(t["Value"] for t in instance["Tags"] if t["Key"] == "Name")
        attr = ec2.client.describe_instance_attribute(
            InstanceId=instance["InstanceId"], Attribute="userData"
        )
        stored[name] = base64.b64decode(attr["UserData"]["Value"])
    _check_cluster(stored, ClusterState(state_dir, "prod"), lambda n: machines / n)


def test_metadata_options_are_the_imdsv2_hop_limit_one_set() -> None:
    assert METADATA_OPTIONS == {
        "MetadataOptions.HttpTokens": "required",
        "MetadataOptions.HttpPutResponseHopLimit": "1",
        "MetadataOptions.HttpEndpoint": "enabled",
    }


# -- GCE ----------------------------------------------------------------------------------------


async def test_gce_user_data_of_every_role_holds_no_key(
    requests_mock: rm.Mocker, tmp_path: Path
) -> None:
    gce = GceFake()
    gce.install(requests_mock)
    provider = gce_provider(cluster="prod", state_dir=tmp_path, private_key=service_account_key())
    cluster = _config({"plugin": "libcloud", "options": {"driver": "gce"}}, GCE_ZONE, gce=True)
    state_dir, machines = tmp_path / "state", tmp_path / "machines"
    try:
        result = await _apply(cluster, provider, state_dir, machines)
    finally:
        await provider.close()
    assert len(result.created) == 5 and len(result.keys_delivered) == 3
    stored: dict[str, str | bytes] = {}
    for body in gce.posted(f"/zones/{GCE_ZONE}/instances"):
        metadata = {i["key"]: i["value"] for i in body["metadata"]["items"]}
        # GCE keeps no SSH keys of its own for the machine either (cloud-init ignores them).
        assert set(metadata) == {"user-data"}
        stored[body["name"]] = metadata["user-data"]
    _check_cluster(stored, ClusterState(state_dir, "prod"), lambda n: machines / n)


# -- lab ----------------------------------------------------------------------------------------


async def test_lab_user_data_of_every_role_holds_no_key_and_keys_land_in_the_lab(
    tmp_path: Path,
) -> None:
    """The lab's default push: the keys go to ``<state>/lab-machines/<machine>/``."""
    cluster = _config({"plugin": "lab"})
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    provider = LabProvider(cluster="prod", options={}, credentials={}, state_dir=state_dir)
    try:
        result = await _apply(cluster, provider, state_dir)
        assert len(result.keys_delivered) == 3
        # A second apply pushes to nobody: every control-plane machine has its keys.
        again = await _apply(cluster, provider, state_dir)
        assert again.keys_delivered == ()
    finally:
        await provider.close()
    driver = LabNodeDriver(key=state_dir / DB_FILENAME)
    stored: dict[str, str | bytes] = {
        m["name"]: m["user_data"] for m in driver.ex_list_machines() if m["state"] != "terminated"
    }
    _check_cluster(stored, ClusterState(state_dir, "prod"), lambda n: state_dir / LAB_MACHINES / n)


async def test_a_control_plane_machine_left_without_keys_gets_them_on_the_next_apply(
    tmp_path: Path,
) -> None:
    """A push that fails (the machine unreachable) fails the apply, says why, and the next
    apply pushes to that machine only."""
    cluster = _config({"plugin": "lab"})
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    reached: list[str] = []

    class Flaky:
        def __init__(self, root: Path, down: bool) -> None:
            self.inner, self.down = DirectoryPush(root), down

        async def push(self, machine: Machine, address: str, files: Any) -> None:
            if self.down and machine.name.endswith(first_cp[-5:]):
                raise KeyDeliveryError(f"key push to {machine.name}: connection refused")
            reached.append(machine.name)
            await self.inner.push(machine, address, files)

    first_cp = ""
    provider = LabProvider(cluster="prod", options={}, credentials={}, state_dir=state_dir)
    try:
        builder = _user_data(state_dir)

        def render(c: ClusterConfig, pool: str, name: str) -> str:
            nonlocal first_cp
            if pool == "cp" and not first_cp:
                first_cp = name
            return builder(c, pool, name)

        down = KeyDelivery(state_dir, push=lambda s, c: Flaky(tmp_path / "m", True), patience=0)
        with pytest.raises(KeyDeliveryError, match="connection refused"):
            await apply(
                cluster, provider, user_data=render, inventory=Inventory(state_dir, "p"), keys=down
            )
        assert len(reached) == 2 and first_cp not in reached
        reached.clear()
        up = KeyDelivery(state_dir, push=lambda s, c: Flaky(tmp_path / "m", False), patience=0)
        result = await apply(
            cluster, provider, user_data=render, inventory=Inventory(state_dir, "p"), keys=up
        )
    finally:
        await provider.close()
    assert reached == [first_cp] and result.keys_delivered == (first_cp,)


def test_the_leak_search_sees_through_gzip_and_base64(tmp_path: Path) -> None:
    """A CA key put back into user data (as healer did before) is found however it is packed."""
    cluster = _config({"plugin": "lab"})
    state = ClusterState(tmp_path, "prod")
    text = _user_data(tmp_path)(cluster, "cp", "prod-cp-aaaaa")
    key = (state.root / "pki" / "ca.key").read_bytes()
    doc = yaml.safe_load(text)
    padded = key + b"\n" * 3000  # over the size where a file is gzipped
    doc["write_files"].append(MachineFile("/etc/x/ca.key", padded).write_files_entry())
    assert doc["write_files"][-1]["encoding"] == "gz+b64"
    leaked = "#cloud-config\n" + yaml.safe_dump(doc)
    assert any("pki/ca.key" in leak for leak in _leaks(_files(leaked), state))
    assert _leaks(_files(gzip.compress(text.encode())), state) == []
