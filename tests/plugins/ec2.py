"""EC2 test fixtures (a local moto server; see tests/moto_ec2.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from providers.libcloud_generic import LibcloudProvider
from tests.moto_ec2 import Ec2Emulator, ec2_provider


@pytest.fixture(scope="session")
def ec2_server() -> Iterator[Ec2Emulator]:
    # moto would otherwise load ~1300 public AMIs on the first call after every reset (seconds).
    before = os.environ.get("MOTO_EC2_LOAD_DEFAULT_AMIS")
    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
    emulator = Ec2Emulator()
    try:
        yield emulator
    finally:
        emulator.stop()
        if before is None:
            os.environ.pop("MOTO_EC2_LOAD_DEFAULT_AMIS", None)
        else:
            os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = before


@pytest.fixture
def ec2(ec2_server: Ec2Emulator) -> Ec2Emulator:
    """The emulator, emptied: no instances, no images, no recorded requests."""
    ec2_server.reset()
    return ec2_server


@pytest.fixture
async def ec2_prod(ec2: Ec2Emulator, tmp_path: Path) -> AsyncIterator[LibcloudProvider]:
    """The generic plugin for cluster ``prod`` on the emptied emulator, with an AMI named
    ``debian-12`` (the pools' default image)."""
    ec2.register_image("debian-12")
    p = ec2_provider(ec2, cluster="prod", state_dir=tmp_path)
    try:
        yield p
    finally:
        await p.close()
