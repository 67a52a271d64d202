"""Slow clients (issue 10, must-show 2): slow connections flood the webhook of a real `healer run`
while a node crashes. The crashed node is replaced normally, authenticated webhook requests are
answered throughout, and the flood is shed (counted, logged in a few summary lines).

Short run (`make test`): 300 slow connections against a cap of 150, until the node is replaced.
Full run (`make faults`): 2000 slow connections for 60 s against the default cap.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from healer.app.limits import raise_nofile_limit
from healer.config import load_config
from tests.faults.slowloris import SlowFlood
from tests.faults.world import LOOPBACK, fault_config, lab_world, scale, until

TOKEN = "slow-clients-token"


async def test_slow_connections_do_not_starve_the_daemon(tmp_path: Path) -> None:
    raise_nofile_limit()  # the flood's own sockets are in this process (the lab's too)
    connections, seconds, webhook_extra = scale(
        (300, 5.0, {"maxConnections": 150}), (2000, 60.0, {})
    )
    token = tmp_path / "webhook-token"
    token.write_text(TOKEN)
    webhook = {
        "token": {"file": str(token)},
        "conditions": {"NodeDiskFailing": "NodeDiskFailing"},
        **webhook_extra,
    }

    def config(kubeconfig: Path) -> dict[str, Any]:
        # `metrics` set: /healthz and /metrics on their own free port, no webhook ops listener.
        return fault_config(kubeconfig, top={"webhook": webhook, "metrics": {}})

    async with lab_world(tmp_path / "world", config=config) as world:
        daemon = await world.daemon()
        await daemon.ready()
        loaded = load_config(world.config_path)
        assert loaded.webhook is not None and loaded.metrics is not None
        port = loaded.webhook.listen[1]
        harness = world.harness
        workers = sorted(harness.pool_nodes("workers"))
        victim, witness = workers[0], workers[-1]
        before = await harness.ready_nodes()

        flood = SlowFlood(LOOPBACK, port, connections=connections)
        await flood.start()
        answered: list[float] = []
        replaced_at: float | None = None
        try:
            await until(lambda: flood.stats.opened >= connections, 30, "the flood to connect")
            started = time.monotonic()
            harness.crash(victim)
            doc = {"cluster": "lab", "node": witness, "condition": "NodeDiskFailing"}
            async with aiohttp.ClientSession() as http:
                while True:
                    elapsed = time.monotonic() - started
                    if replaced_at is not None and elapsed >= seconds:
                        break
                    assert elapsed < seconds + 90, "the crashed node was not replaced in time"
                    assert daemon.running, daemon.tail()
                    t0 = time.monotonic()
                    async with (
                        asyncio.timeout(5),
                        http.post(
                            f"http://{LOOPBACK}:{port}/v1/events",
                            json={**doc, "status": "False"},
                            headers={"Authorization": f"Bearer {TOKEN}"},
                        ) as resp,
                    ):
                        assert resp.status == 200, await resp.text()
                    answered.append(time.monotonic() - t0)
                    if replaced_at is None:
                        ready = await harness.ready_nodes()
                        if victim not in ready and len(ready) == len(before):
                            replaced_at = time.monotonic() - started
                    await asyncio.sleep(0.25)
        finally:
            stats = await flood.stop()

        assert max(answered) < 2.0, f"slowest answer {max(answered):.2f}s"
        assert stats.opened > connections, stats  # the server closed some and they came back
        assert stats.closed_by_server > 0, stats
        store = world.store()
        try:
            result = await world.invariants(store)
        finally:
            store.close()
        assert result["ok"], result
        assert not any("Too many open files" in line for line in daemon.tail(200_000).splitlines())
        shed_lines = daemon.events("webhook.connections_shed")
        assert shed_lines, daemon.tail()
        # A summary per interval, not a line per connection.
        assert len(shed_lines) <= (time.monotonic() - started) / 10 + 3
        print(
            f"slow clients: {connections} connections, node replaced after {replaced_at:.1f}s, "
            f"{len(answered)} requests answered (slowest {max(answered):.2f}s), {stats}"
        )
