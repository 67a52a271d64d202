"""The bench's world: ``--clusters`` fake Kubernetes API servers (healer's lab API server) on
loopback holding ``--nodes`` Ready nodes between them, in their own process.

Prints one JSON line once every server listens (the clusters with their kubeconfigs), then
answers JSON commands on stdin, one per line:

- ``{"cmd": "fail", "count": N, "seed": S}``: N nodes spread over the clusters turn
  ``Ready=False`` at the same moment; answers ``{"at": that time, "done": when the API had
  them all, "nodes": [[cluster, node], ...]}``;
- ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from benchmarks.harness import pool_of
from healer.lab.apiserver.resources import BY_PLURAL, rfc3339
from healer.lab.apiserver.server import FakeApiServer
from healer.model import LABEL_POOL

# No node goes Unknown by itself (no kubelet renews a lease here): only "fail" fails one.
_GRACE = 10_000_000.0


def node_name(cluster: str, i: int) -> str:
    return f"{cluster}-n{i:05d}"


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.world")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--clusters", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--prefix", default="c")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    servers: dict[str, FakeApiServer] = {}
    out = []
    per, extra = divmod(args.nodes, args.clusters)
    for c in range(args.clusters):
        name = f"{args.prefix}{c:03d}"
        server = FakeApiServer(lease_grace=_GRACE, monitor_period=3600.0)
        count = per + (1 if c < extra else 0)
        for i in range(count):
            server.add_node(node_name(name, i), {LABEL_POOL: pool_of(i)})
        await server.start()
        kubeconfig = server.write_kubeconfig(args.dir / f"{name}.kubeconfig")
        servers[name] = server
        out.append({"name": name, "kubeconfig": str(kubeconfig), "nodes": count})
    print(json.dumps({"clusters": out}), flush=True)
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            cmd = json.loads(line)
            if cmd["cmd"] == "quit":
                return
            if cmd["cmd"] == "fail":
                print(json.dumps(await fail(servers, cmd["count"], cmd.get("seed", 1))), flush=True)
    finally:
        for server in servers.values():
            await server.stop()


async def fail(servers: dict[str, FakeApiServer], count: int, seed: int) -> dict[str, object]:
    """``count`` nodes turn ``Ready=False`` at the same moment, as a node lifecycle controller
    changes many nodes in one pass: written in the API servers' stores directly (one
    MODIFIED watch event each), right after a whole second so that the API's seconds
    precision cuts nothing off their lastTransitionTime."""
    everyone = [
        (name, node["metadata"]["name"])
        for name, server in servers.items()
        for node in server.nodes()
        if _ready(node)
    ]
    chosen = random.Random(seed).sample(everyone, min(count, len(everyone)))
    await asyncio.sleep(1.0 - time.time() % 1.0)
    at = time.time()
    for cluster, node in chosen:
        _not_ready(servers[cluster], node, at)
    return {"at": at, "done": time.time(), "nodes": [list(pair) for pair in chosen]}


def _ready(node: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", [])
    )


def _not_ready(server: FakeApiServer, node: str, at: float) -> None:
    obj = server.node(node)
    assert obj is not None
    for cond in obj["status"]["conditions"]:
        if cond["type"] == "Ready":
            cond.update(
                status="False",
                reason="KubeletNotReady",
                message="container runtime is down",
                lastTransitionTime=rfc3339(at),
                lastHeartbeatTime=rfc3339(at),
            )
    # The lab API server's state methods have no "set a condition": its store, as its own
    # node lifecycle controller writes it (healer/lab/apiserver/lifecycle.py).
    server._store.put(BY_PLURAL["nodes"], "", obj, "MODIFIED")


if __name__ == "__main__":
    asyncio.run(main())
