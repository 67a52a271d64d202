"""Kubernetes test fixtures (fake API server).

* ``fake_api``: a :class:`FakeApiServer` on a free loopback port, with wall-clock time.
* ``virtual_clock`` + ``fake_api_virtual``: the same server on a :class:`VirtualClock`, for the
  lease-expiry controller and anything else timed.
* ``kubeconfig`` / ``kube``: a kubeconfig for ``fake_api`` and a real ``KubeClient`` on it.
* ``eventually``: poll a condition in real time, bounded; for effects that cross a real socket
  and so cannot be awaited directly.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from healer.clock import VirtualClock
from healer.kube.client import KubeClient
from healer.lab.apiserver.server import FakeApiServer

Predicate = Callable[[], bool | Awaitable[bool]]


async def wait_for(predicate: Predicate, *, timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` real seconds."""
    async with asyncio.timeout(timeout):
        while True:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(interval)


@pytest.fixture
def eventually() -> Callable[..., Awaitable[None]]:
    return wait_for


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def virtual_clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
async def fake_api_virtual(virtual_clock: VirtualClock) -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer(clock=virtual_clock)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def kubeconfig(fake_api: FakeApiServer, tmp_path: Path) -> Path:
    return fake_api.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
async def kube(kubeconfig: Path) -> AsyncIterator[KubeClient]:
    client = await KubeClient.from_kubeconfig(kubeconfig, request_timeout=5.0)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def kube_virtual(
    fake_api_virtual: FakeApiServer, virtual_clock: VirtualClock, tmp_path: Path
) -> AsyncIterator[KubeClient]:
    """A client on ``fake_api_virtual`` whose timestamps come from the same virtual clock."""
    path = fake_api_virtual.write_kubeconfig(tmp_path / "kubeconfig-virtual")
    client = await KubeClient.from_kubeconfig(path, clock=virtual_clock, request_timeout=5.0)
    try:
        yield client
    finally:
        await client.close()
