"""sd_notify over a real datagram socket, and the supervisor's watchdog gate in virtual time."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from healer.clock import VirtualClock
from healer.jobs.systemd import Notifier, Supervisor


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield str(path), sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"healer-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    yield "@" + name, sock
    sock.close()


def _recv(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_sends_to_a_socket_path(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.ready("watching 1 cluster(s)\nsecond line")
    assert _recv(sock) == ["READY=1", "STATUS=watching 1 cluster(s) second line"]
    notifier.stopping()
    assert _recv(sock) == ["STOPPING=1", "STATUS=stopping"]
    notifier.close()


def test_abstract_namespace_address(abstract_socket: tuple[str, socket.socket]) -> None:
    address, sock = abstract_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    notifier.reloading()
    lines = _recv(sock)
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=") and int(lines[1].split("=")[1]) > 0
    notifier.close()


def test_watchdog_interval_is_half_of_watchdog_usec(path_socket: tuple[str, socket.socket]) -> None:
    address, _sock = path_socket
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "3000000"}
    assert Notifier.from_env(env).watchdog_interval == 1.5
    # Meant for another process (a child that inherited the environment): no watchdog.
    other = env | {"WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(other).watchdog_interval is None
    mine = env | {"WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(mine).watchdog_interval == 1.5
    assert Notifier.from_env({"WATCHDOG_USEC": "3000000"}).watchdog_interval is None


def test_outside_systemd_everything_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False


def test_a_missing_socket_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.ready() is False  # no exception: systemd notices silence by itself


class _Target:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.status = "watching 1 cluster(s), 3 nodes, 0 workflows in flight"

    def liveness(self) -> list[str]:
        return list(self.problems)

    def status_line(self) -> str:
        return self.status


async def test_supervisor_pings_only_while_healthy(
    path_socket: tuple[str, socket.socket],
) -> None:
    address, sock = path_socket
    sock.setblocking(False)
    clock = VirtualClock()
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
    target = _Target()
    ticks: list[str] = []
    sup = Supervisor(target, notifier, clock=clock, status_interval=5.0, on_tick=ticks.append)
    task = asyncio.create_task(sup.run())

    def drain() -> list[str]:
        out = []
        while True:
            try:
                out.extend(sock.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return out

    try:
        await clock.advance(3.0)  # pings at 0, 1, 2, 3
        sent = drain()
        assert sent.count("WATCHDOG=1") == 4
        assert f"STATUS={target.status}" in sent
        assert ticks and ticks[0] == target.status

        target.problems = ["the health tracker is 40s behind its re-evaluations"]
        await clock.advance(3.0)
        sent = drain()
        assert "WATCHDOG=1" not in sent
        assert "STATUS=unhealthy: the health tracker is 40s behind its re-evaluations" in sent

        target.problems = []
        await clock.advance(1.0)
        sent = drain()
        assert "WATCHDOG=1" in sent
        # The status line is sent again once healthy (it was replaced by the problem).
        await clock.advance(5.0)
        assert f"STATUS={target.status}" in drain()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        notifier.close()


def test_supervisor_counts_loop_lag_as_a_problem() -> None:
    sup = Supervisor(_Target(), Notifier(None))
    assert sup.check(0.2, 1.0) == []
    assert sup.check(1.5, 1.0) == ["event loop lag 1.5s (limit 1.0s)"]


def test_a_failing_liveness_check_is_a_problem_not_a_crash() -> None:
    class Broken(_Target):
        def liveness(self) -> list[str]:
            raise RuntimeError("database is locked")

    sup = Supervisor(Broken(), Notifier(None))
    assert sup.check(0.0, 1.0) == ["the liveness check failed: RuntimeError: database is locked"]
