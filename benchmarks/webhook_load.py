"""Webhook: the daemon's alert webhook (`healer run`, bearer token from a file) against a bare
aiohttp handler that checks the same token and parses the same JSON, both loaded by the same
keep-alive load generator (``-c`` connections, each sending the pre-encoded Alertmanager POST
again as soon as the answer is in; a connection the server closes is opened again), rounds
interleaved.

Run as a helper: ``python -m benchmarks.webhook_load load|bare ...`` (JSON lines out).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    DaemonProc,
    Figure,
    Owned,
    World,
    cpu_seconds,
    daemon_config,
    free_port,
    helper,
    median,
    paired_ratio,
)

TOKEN = "bench-webhook-token-0123456789"
ALERT = "NodeDiskFailing"


def body(nodes: list[str]) -> bytes:
    """An Alertmanager v4 notification: one firing alert per node."""
    alerts = [
        {
            "status": "firing",
            "labels": {"alertname": ALERT, "node": node, "severity": "warning"},
            "annotations": {"summary": f"disk of {node} is failing"},
            "startsAt": "2026-12-01T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example/graph",
            "fingerprint": f"{i:016x}",
        }
        for i, node in enumerate(nodes)
    ]
    doc = {
        "version": "4",
        "groupKey": '{}:{alertname="NodeDiskFailing"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "healer",
        "groupLabels": {"alertname": ALERT},
        "commonLabels": {"alertname": ALERT},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example",
        "alerts": alerts,
    }
    return json.dumps(doc).encode()


def request(port: int, path: str, payload: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


class _Conn(asyncio.Protocol):
    """One keep-alive connection: sends the request, waits for a whole answer, again."""

    def __init__(self, load: _Load) -> None:
        self.load = load
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        if self.load.stop or self.transport is None or self.transport.is_closing():
            if self.transport is not None:
                self.transport.close()
            return
        self.transport.write(self.load.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").lower()
            length = 0
            for line in head.split("\r\n"):
                if line.startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            status = int(head.split(" ", 2)[1])
            self.load.done += 1
            if status >= 300:
                self.load.errors += 1
            if "connection: close" in head:
                assert self.transport is not None
                self.transport.close()
                return
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Load:
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.stop = False
        self.done = 0
        self.errors = 0


async def _run_load(port: int, req: bytes, connections: int, seconds: float) -> dict[str, Any]:
    load = _Load(req)
    loop = asyncio.get_running_loop()

    async def worker() -> None:
        while not load.stop:
            try:
                _, conn = await loop.create_connection(lambda: _Conn(load), "127.0.0.1", port)
            except OSError:
                load.errors += 1
                await asyncio.sleep(0.01)
                continue
            await conn.closed

    tasks = [asyncio.create_task(worker()) for _ in range(connections)]
    start = time.monotonic()
    await asyncio.sleep(seconds)
    load.stop = True
    done, elapsed = load.done, time.monotonic() - start
    await asyncio.wait(tasks, timeout=5)
    for task in tasks:
        task.cancel()
    return {"requests": done, "seconds": elapsed, "rate": done / elapsed, "errors": load.errors}


async def _loader(args: argparse.Namespace) -> None:
    """Reads {"port": P, "path": PATH, "seconds": S} lines; answers the rate."""
    payload = Path(args.body).read_bytes()
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, input)
        cmd = json.loads(line)
        req = request(cmd["port"], cmd["path"], payload)
        result = await _run_load(cmd["port"], req, args.connections, cmd["seconds"])
        print(json.dumps(result), flush=True)


async def _bare(args: argparse.Namespace) -> None:
    """A bare aiohttp handler: checks the bearer token, parses the JSON, answers 200."""
    from aiohttp import web

    expected = f"Bearer {TOKEN}".encode()

    async def handle(request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return web.json_response({"error": "unauthorized"}, status=401)
        doc = await request.json()
        return web.json_response({"status": "ok", "alerts": len(doc["alerts"])})

    app = web.Application()
    app.router.add_post("/v1/alertmanager/{cluster}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.Event().wait()


def measure(
    workdir: Path,
    *,
    nodes: int,
    alerts: int,
    connections: int,
    seconds: float,
    rounds: int,
    timeout: float,
) -> tuple[list[Figure], dict[str, Any]]:
    with Owned() as own:
        world = own.add(World(workdir / "world", nodes=nodes, clusters=1, prefix="w"))
        cluster = world.clusters[0]
        names = [f"{cluster.name}-n{i:05d}" for i in range(alerts)]
        payload = body(names)
        (workdir / "body.json").write_bytes(payload)
        token = workdir / "webhook-token"
        token.write_text(TOKEN + "\n")
        token.chmod(0o600)
        port, bare_port = free_port(), free_port()
        daemon = own.add(
            DaemonProc(
                workdir / "healer",
                daemon_config(
                    [cluster],
                    metrics_port=free_port(),
                    extra={
                        "webhook": {
                            "listen": f"127.0.0.1:{port}",
                            "token": {"file": str(token)},
                            "conditions": {ALERT: ALERT},
                        }
                    },
                    health_extra=[{"type": ALERT, "status": "True", "timeout": "1h"}],
                ),
            )
        )
        bare = own.add(
            helper("webhook_load", "bare", "--port", str(bare_port), log=workdir / "bare.log")
        )
        load = own.add(
            helper(
                "webhook_load",
                "load",
                "--body",
                str(workdir / "body.json"),
                "-c",
                str(connections),
                log=workdir / "load.log",
                stdin=True,
            )
        )
        path = f"/v1/alertmanager/{cluster.name}"
        rates: dict[str, list[float]] = {"healer": [], "bare": []}
        cpu: dict[str, list[float]] = {"healer": [], "bare": []}
        errors: dict[str, int] = {"healer": 0, "bare": 0}
        bare.read()
        load.read()
        daemon.start_loaded(nodes, timeout)
        pids = {"healer": daemon.pid, "bare": bare.pid}
        ports = {"healer": port, "bare": bare_port}
        for r in range(rounds + 1):  # the first round warms both up and is not counted
            for who in ("healer", "bare") if r % 2 == 0 else ("bare", "healer"):
                cpu0 = cpu_seconds(pids[who])
                load.send({"port": ports[who], "path": path, "seconds": seconds})
                result = load.read(timeout=seconds + 60)
                if r == 0:
                    continue
                rates[who].append(result["rate"])
                errors[who] += result["errors"]
                cpu[who].append((cpu_seconds(pids[who]) - cpu0) / max(1, result["requests"]) * 1e6)
    rate, base = median(rates["healer"]), median(rates["bare"])
    ratio = paired_ratio(rates["healer"], rates["bare"])
    note = (
        f"{alerts} alerts a POST, {connections} connections, {rounds} rounds of {seconds:g} s; "
        "ratio: median of the rounds' ratios"
    )
    if errors["healer"] or errors["bare"]:
        note += f"; non-2xx answers or failed connects: healer {errors['healer']}, bare {errors['bare']}"
    figures = [
        Figure(
            "webhook, authenticated Alertmanager POSTs",
            rate,
            "req/s",
            base,
            "bare aiohttp handler parsing the same JSON",
            ">= 0.6x",
            ratio is not None and ratio >= 0.6 and not errors["healer"],
            rates["healer"],
            rates["bare"],
            note=note,
            paired=True,
        ),
        Figure(
            "CPU per webhook request",
            median(cpu["healer"]),
            "us",
            median(cpu["bare"]),
            "bare aiohttp handler",
            samples=cpu["healer"],
            baseline_samples=cpu["bare"],
            paired=True,
        ),
    ]
    return figures, {"alerts_per_post": alerts, "connections": connections, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.webhook_load")
    parser.add_argument("role", choices=("load", "bare"))
    parser.add_argument("--port", type=int)
    parser.add_argument("--body")
    parser.add_argument("-c", "--connections", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(_loader(args) if args.role == "load" else _bare(args))


if __name__ == "__main__":
    main()
