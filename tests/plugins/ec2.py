"""EC2 test fixtures (a local moto server; see tests/moto_ec2.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.moto_ec2 import Ec2Emulator


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
