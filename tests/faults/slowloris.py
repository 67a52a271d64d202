"""Slow clients for the fault suite: ``SlowFlood`` keeps N connections open to a listener, each
sending a request head one header line at a time and never finishing it (slowloris). A
connection the server closes is counted and opened again, so the pressure lasts as long as the
flood runs. Loopback only; every wait is bounded; ``stop()`` closes everything it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

_HEAD = b"POST /v1/events HTTP/1.1\r\nHost: healer\r\n"


@dataclass
class FloodStats:
    opened: int = 0  # connections established
    refused: int = 0  # connect attempts that failed (refused, reset, timed out)
    closed_by_server: int = 0  # connections the server closed or reset
    open_now: int = 0


class SlowFlood:
    """``connections`` slow senders against ``host:port``; a header line every ``every`` s."""

    def __init__(
        self, host: str, port: int, *, connections: int, every: float = 0.5, retry: float = 0.05
    ) -> None:
        assert host in ("127.0.0.1", "::1", "localhost"), "loopback only"
        self.host = host
        self.port = port
        self.connections = connections
        self.every = every
        self.retry = retry
        self.stats = FloodStats()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._slot(i), name=f"slowloris-{i}")
            for i in range(self.connections)
        ]
        await asyncio.sleep(0)

    async def stop(self) -> FloodStats:
        self._stopping = True  # a slot whose cancellation got lost ends at its next turn
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=10.0)
        self._tasks = []
        return self.stats

    async def run_for(self, seconds: float) -> FloodStats:
        await self.start()
        try:
            await asyncio.sleep(seconds)
        finally:
            await self.stop()
        return self.stats

    async def _slot(self, index: int) -> None:
        while not self._stopping:
            try:
                async with asyncio.timeout(5.0):
                    reader, writer = await asyncio.open_connection(self.host, self.port)
            except (OSError, TimeoutError):
                self.stats.refused += 1
                await asyncio.sleep(self.retry)
                continue
            self.stats.opened += 1
            self.stats.open_now += 1
            try:
                await self._drip(index, reader, writer)
                self.stats.closed_by_server += 1
            finally:
                self.stats.open_now -= 1
                writer.close()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await writer.wait_closed()
            await asyncio.sleep(self.retry)

    async def _drip(
        self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Send the head slowly until the server closes the connection."""
        line = 0
        try:
            writer.write(_HEAD)
            while not self._stopping:
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.
                    async with asyncio.timeout(self.every):
                        data = await reader.read(4096)
                except TimeoutError:
                    line += 1
                    writer.write(f"X-Slow-{index}: {line}\r\n".encode())
                    continue
                if not data:
                    return
        except (ConnectionError, OSError):
            return
