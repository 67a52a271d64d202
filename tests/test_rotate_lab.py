"""Must-show 4 of issue 13: `healer rotate encryption-key` in the lab adds the new key, rewrites
every Secret under it and removes the old key last, each stage journalled, and a rotation killed
(SIGKILL) between stages continues where it left off when run again.

The lab's API server models encryption at rest (healer.lab.apiserver.encryption): each
control-plane machine's API server reads the EncryptionConfiguration healer put on the machine,
writes go to the servers in turn, and anything one server stores that another cannot read, or a
configuration that can no longer read a stored Secret, is recorded as a violation.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import yaml

from healer.cli.main import main
from healer.jobs.rotate import FINISHED, STAGE_DONE, STARTED
from healer.lab.apiserver.server import FakeApiServer
from healer.model import Role
from healer.provisioning.rotation import STAGES
from healer.store.sqlite import Store
from tests.test_rolling_lab import lab_world

OLD, NEW, ID = "healer-key-1", "healer-key-2", "identity"
SECRETS = [("default", f"app-{i}") for i in range(4)] + [("kube-system", "bootstrap-x")]


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def _config(path: Path, kubeconfig: Path, revision: str = "") -> None:
    cp = {"name": "control-plane", "role": "control-plane", "size": 3}
    cluster = {
        "name": "demo",
        "provider": {"plugin": "lab"},
        "kubeconfig": str(kubeconfig),
        "kubernetes": {"controlPlaneEndpoint": "10.0.0.10:6443", "installPackages": False},
        "pools": [cp | {"rollout": {"revision": revision}}],
    }
    path.write_text(yaml.safe_dump({"logFormat": "json", "clusters": [cluster]}))


async def _until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _healer(*argv: str, failpoints: str = "") -> int:
    """`healer ...` in a process of its own (a failpoint may SIGKILL it)."""
    env = dict(os.environ, HEALER_FAILPOINTS=failpoints)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "healer.cli", *argv, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    print(out.decode(errors="replace"))  # shown when the test fails
    assert proc.returncode is not None
    return proc.returncode


def _journal(state: Path) -> list[tuple[str, str]]:
    store = Store.open(state)
    try:
        return [
            (e.event, str(e.evidence.get("stage", "")))
            for e in store.audit_log(cluster="demo")
            if e.event in (STARTED, STAGE_DONE, FINISHED)
        ]
    finally:
        store.close()


def _file_keys(state: Path, machine: str) -> list[str]:
    doc = yaml.safe_load(
        (state / "lab-machines" / machine / "etc/kubernetes/encryption/config.yaml").read_text()
    )
    (provider, identity) = doc["resources"][0]["providers"]
    assert identity == {"identity": {}}
    return [k["name"] for k in provider["secretbox"]["keys"]]


async def test_rotate_encryption_key_stages_resume_after_a_kill_and_remove_the_old_key_last(
    tmp_path: Path,
) -> None:
    roles = {"control-plane": Role.CONTROL_PLANE}
    async with lab_world(tmp_path, roles) as (harness, config, args):
        state = harness.state_dir
        _config(config, harness.kubeconfig)
        assert await asyncio.to_thread(main, ["apply", *args, "--yes"]) == 0
        api = harness.api
        assert isinstance(api, FakeApiServer) and harness.kube is not None
        enc = api.encryption
        await _until(lambda: len(enc.servers) == 3, 10, "three API servers with their keys")
        assert set(enc.servers.values()) == {(OLD, ID)}
        servers = sorted(enc.servers)

        for ns, name in SECRETS:
            await harness.kube.put_secret(ns, name, type_="Opaque", data={"v": name.encode()})
        assert {enc.stored[s] for s in SECRETS} == {OLD}

        # Killed (SIGKILL, no cleanup) right after the second stage.
        rotate = ["rotate", "encryption-key", *args, "--settle", "0.6"]
        code = await _healer(*rotate, failpoints="rotate.write-new-key.after=kill")
        assert code == -signal.SIGKILL
        assert _journal(state) == [
            (STARTED, ""),
            (STAGE_DONE, "add-key"),
            (STAGE_DONE, "write-new-key"),
        ]
        assert {enc.stored[s] for s in SECRETS} == {OLD}  # not rewritten yet
        assert all(_file_keys(state, m) == [NEW, OLD] for m in servers)

        # Run again: it continues at the rewrite, with the same new key.
        assert await _healer(*rotate) == 0
        assert _journal(state) == [
            (STARTED, ""),
            *((STAGE_DONE, s) for s in STAGES),
            (FINISHED, ""),
        ]
        await _until(lambda: set(enc.servers.values()) == {(NEW, ID)}, 5, "the old key gone")

        # Every Secret is stored under the new key, and reads back unchanged.
        assert {enc.stored[s] for s in SECRETS} == {NEW}
        for ns, name in SECRETS:
            secret = await harness.kube.get_secret(ns, name)
            assert secret is not None and secret.data == {"v": name.encode()}
        # Each API server went through the stages in order, and at no moment did one store a
        # Secret another could not read, nor lose a key a stored Secret needed: the old key
        # was removed last, after the rewrite.
        for server in servers:
            seen = [keys for s, keys in enc.changes if s == server]
            assert seen == [(OLD, ID), (OLD, NEW, ID), (NEW, OLD, ID), (NEW, ID)], server
        assert enc.violations == []
        assert all(_file_keys(state, m) == [NEW] for m in servers)

        # The state directory now holds the new key only, under its name.
        secrets_dir = state / "clusters" / "demo" / "secrets"
        assert (secrets_dir / "encryption-key-name").read_text().strip() == NEW
        assert not (secrets_dir / "encryption-key.next").exists()

        # Control-plane machines made afterwards get the new key under its name: a roll of the
        # control plane (one machine at a time, keys pushed to each) keeps every Secret readable.
        _config(config, harness.kubeconfig, revision="after-rotation")
        assert await asyncio.to_thread(main, ["apply", *args, "--yes"]) == 0
        fresh = sorted(m["name"] for m in harness.cloud.machines() if m["state"] == "running")
        assert len(fresh) == 3 and not set(fresh) & set(servers)
        assert all(_file_keys(state, m) == [NEW] for m in fresh)
        await _until(lambda: sorted(enc.servers) == fresh, 5, "the new API servers")
        assert set(enc.servers.values()) == {(NEW, ID)}
        assert enc.violations == []
