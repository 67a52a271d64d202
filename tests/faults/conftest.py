"""Fixtures of the fault-injection suite (docs/faults.md).

Every test here is marked ``faults`` (and ``slow``) and runs in two sizes: short in `make test`
(seconds each), full in `make faults` (``HEALER_FAULTS_FULL=1``, or ``pytest --faults-full``).
A test picks its size with ``scale(short, full)`` or the ``full`` fixture; the world, the daemon
subprocess and the bounded waits are in :mod:`tests.faults.world`.

Random tests draw from ``fault_rng``: seeded from ``HEALER_FAULTS_SEED`` (or ``--faults-seed``)
when set, else at random; the seed is printed and named in the test's report so a failure can
be replayed exactly.
"""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.faults.world import (
    FULL_ENV,
    SEED_ENV,
    World,
    full_run,
    lab_world,
    set_full_run,
)

_HERE = Path(__file__).parent


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("faults", "the fault-injection suite (tests/faults)")
    group.addoption(
        "--faults-full",
        action="store_true",
        default=False,
        help=f"run the full fault suite (as `make faults`; same as {FULL_ENV}=1)",
    )
    group.addoption(
        "--faults-seed",
        default=None,
        help=f"seed the random fault tests (same as {SEED_ENV}=N) to replay a run",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--faults-full", default=False):
        set_full_run(True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def full() -> bool:
    """True in the full run (`make faults`)."""
    return full_run()


@pytest.fixture
def fault_seed(request: pytest.FixtureRequest) -> int:
    """The seed of this test's random choices; printed and kept in the report."""
    given = request.config.getoption("--faults-seed", default=None) or os.environ.get(SEED_ENV)
    seed = int(given) if given else secrets.randbits(32)
    print(f"fault seed: {seed} (replay: {SEED_ENV}={seed})")
    request.node.user_properties.append(("fault_seed", seed))
    return seed


@pytest.fixture
def fault_rng(fault_seed: int) -> random.Random:
    return random.Random(fault_seed)


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """The default lab world (one control-plane node, three workers, all Ready) with the
    daemon's config written; start daemons with ``await world.daemon()``. For other pools or
    config use :func:`tests.faults.world.lab_world` directly."""
    async with lab_world(tmp_path) as w:
        yield w
