"""MQTT intake: the real daemon (`healer run`: MqttSource, event queue, tracker, planner, store)
against a bare aiomqtt subscriber, on one mosquitto the bench starts, fed the same pre-encoded
QoS 1 stream of heartbeats over ``--nodes`` node topics, rounds interleaved.

The stream is written by a raw-socket publisher (pre-encoded PUBLISH packets, so the sender
costs next to nothing) into the broker, which delivers it at the subscriber's pace. A round ends
with one ``reboot started`` message for a fresh node: the daemon has handled everything before
it when ``healer_nodes{health="rebooting"}`` counts it (its /metrics is polled every 50 ms), the
bare subscriber when it receives it. Rate = messages / (end - first byte sent); CPU per message
from /proc of the subscriber's process over the round.

Run as a helper: ``python -m benchmarks.mqtt_intake publish|bare ...`` (JSON lines out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    Cluster,
    DaemonProc,
    Figure,
    Owned,
    World,
    cpu_seconds,
    daemon_config,
    free_port,
    helper,
    median,
    metric_sum,
    paired_ratio,
)

HEALER_PREFIX = "bench/h"
BARE_PREFIX = "bench/b"  # the same length: both streams are the same bytes but these
# aiomqtt's default protocol, MQTT 3.1.1: no properties to decode, the cheapest subscriber.
BARE311_PREFIX = "bench/c"
RECEIVE_MAXIMUM = 100  # what healer's MQTT 5 session asks for; the bare one asks the same


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    n, length = len(body), bytearray()
    while True:
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            return bytes([first]) + bytes(length) + body


def connect_packet(client_id: str) -> bytes:
    return _packet(
        0x10, _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60) + _string(client_id)
    )


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    return _packet(0x32, _string(topic) + struct.pack("!H", packet_id) + payload)


def stream(
    prefix: str, cluster: str, nodes: list[str], per_node: int, marker: str, ts: int
) -> bytes:
    """``per_node`` heartbeats for every node, node after node, each newer than the one
    before (``ts``, ``ts`` + 1, ...), then the round's marker."""
    out, pid = [], 0
    for k in range(per_node):
        body = json.dumps({"v": 1, "ts": ts + k}).encode()
        for node in nodes:
            pid = pid % 65535 + 1
            out.append(publish_packet(f"{prefix}/{cluster}/{node}/heartbeat", body, pid))
    reboot = json.dumps({"v": 1, "event": "started", "reason": "bench"}).encode()
    out.append(publish_packet(f"{prefix}/{cluster}/{marker}/reboot", reboot, pid % 65535 + 1))
    return b"".join(out)


def _publisher(args: argparse.Namespace) -> None:
    """Reads {"prefix": P, "round": R} lines; sends that stream; says when it started and when
    the broker had acknowledged every message."""
    nodes = [f"{args.cluster}-n{i:05d}" for i in range(args.nodes)]
    # Newer rounds carry newer timestamps (within the five minutes of future healer allows).
    ts = int(time.time())
    streams = {
        (prefix, r): stream(
            prefix, args.cluster, nodes, args.per_node, nodes[r], ts + r * args.per_node
        )
        for prefix in (HEALER_PREFIX, BARE_PREFIX, BARE311_PREFIX)
        for r in range(args.rounds)
    }
    messages = args.nodes * args.per_node + 1
    print(json.dumps({"ready": True, "messages": messages}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        data = streams[(cmd["prefix"], cmd["round"])]
        sock = socket.create_connection(("127.0.0.1", args.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(connect_packet(f"bench-pub-{cmd['prefix'][-1]}-{cmd['round']}"))
        assert sock.recv(4)[:1] == b"\x20"  # CONNACK
        acked = threading.Event()

        def count_acks(sock: socket.socket = sock, acked: threading.Event = acked) -> None:
            need, got = messages * 4, 0
            while got < need:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                got += len(chunk)
            acked.set()

        reader = threading.Thread(target=count_acks, daemon=True)
        reader.start()
        start = time.monotonic()
        sock.sendall(data)
        sent = time.monotonic()
        acked.wait(120)
        print(
            json.dumps({"start": start, "sent": sent, "acked": time.monotonic()}),
            flush=True,
        )
        sock.close()


async def _bare(args: argparse.Namespace) -> None:
    """A bare aiomqtt subscriber: QoS 1, parses each payload, nothing else. MQTT 5 with
    healer's receive maximum (``--protocol 5``), or aiomqtt's default, MQTT 3.1.1."""
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    if args.protocol == "5":
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        options: dict[str, Any] = {"protocol": aiomqtt.ProtocolVersion.V5, "properties": props}
        prefix = BARE_PREFIX
    else:
        options, prefix = {}, BARE311_PREFIX
    async with aiomqtt.Client(
        "127.0.0.1", args.port, identifier=f"bench-bare-{args.protocol}", **options
    ) as client:
        await client.subscribe(f"{prefix}/+/+/+", qos=1)
        print(json.dumps({"ready": True}), flush=True)
        count = 0
        async for message in client.messages:
            json.loads(message.payload)  # type: ignore[arg-type]
            count += 1
            if message.topic.value.endswith("/reboot"):
                print(json.dumps({"done": time.monotonic(), "count": count}), flush=True)


def _broker(workdir: Path) -> Any:
    """The tests' mosquitto (tests/plugins/mqtt.py) with no limit on a subscriber's queue, so a
    backlog is delivered whole, never dropped."""
    from tests.plugins.mqtt import MosquittoBroker, mosquitto_binary

    binary = mosquitto_binary()
    if binary is None:
        raise RuntimeError("mosquitto is not installed (Debian: apt-get install mosquitto)")

    class Broker(MosquittoBroker):
        def write_config(self) -> Path:
            conf = super().write_config()
            text = re.sub(r"(?m)^max_queued_(messages|bytes) .*\n", "", conf.read_text())
            conf.write_text(text + "max_queued_messages 0\nmax_queued_bytes 0\n")
            return conf

    workdir.mkdir(parents=True, exist_ok=True)
    return Broker(binary=binary, workdir=workdir)


def _wait_rebooting(daemon: DaemonProc, count: int, limit: float) -> float | None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if metric_sum(daemon.metrics(), "healer_nodes", health="rebooting") >= count:
            return time.monotonic()
        time.sleep(0.05)
    return None


def measure(
    workdir: Path, *, nodes: int, per_node: int, rounds: int, timeout: float
) -> tuple[list[Figure], dict[str, Any]]:
    with Owned() as own:
        broker = own.add(_broker(workdir / "mosquitto"))
        broker.start()
        world = own.add(World(workdir / "world", nodes=nodes, clusters=1, prefix="m"))
        cluster: Cluster = world.clusters[0]
        daemon = own.add(
            DaemonProc(
                workdir / "healer",
                daemon_config(
                    [cluster],
                    metrics_port=free_port(),
                    extra={
                        "mqtt": {
                            "host": "127.0.0.1",
                            "port": broker.port,
                            "clientId": "bench-healer",
                            "topicPrefix": HEALER_PREFIX,
                            # No heartbeat goes missing while the other side's round runs.
                            "heartbeatInterval": "1h",
                            "rebootArbiter": False,
                        }
                    },
                ),
            )
        )
        port = str(broker.port)
        pub = own.add(
            helper(
                "mqtt_intake",
                "publish",
                "--port",
                port,
                "--cluster",
                cluster.name,
                "--nodes",
                str(nodes),
                "--per-node",
                str(per_node),
                "--rounds",
                str(rounds + 1),  # the first one warms every side up and is not counted
                log=workdir / "publisher.log",
                stdin=True,
            )
        )
        bares = {
            protocol: own.add(
                helper(
                    "mqtt_intake",
                    "bare",
                    "--port",
                    port,
                    "--protocol",
                    protocol,
                    log=workdir / f"bare-{protocol}.log",
                )
            )
            for protocol in ("5", "3.1.1")
        }
        prefixes = {"5": BARE_PREFIX, "3.1.1": BARE311_PREFIX}
        healer_rates: list[float] = []
        bare_rates: dict[str, list[float]] = {p: [] for p in bares}
        healer_cpu: list[float] = []
        bare_cpu: dict[str, list[float]] = {p: [] for p in bares}
        messages = pub.read()["messages"]
        for bare in bares.values():
            bare.read()
        daemon.start_loaded(nodes, timeout)
        time.sleep(1.0)
        # A first round warms every side up (the daemon's first heartbeat of each node, the
        # subscribers' first messages) and is not counted, as in the webhook section.
        for r in range(rounds + 1):
            # Interleaved, and which goes first turns round.
            turn = ["healer", "5", "3.1.1"]
            order = turn[r % 3 :] + turn[: r % 3]
            for who in order:
                if who == "healer":
                    cpu0 = cpu_seconds(daemon.pid)
                    pub.send({"prefix": HEALER_PREFIX, "round": r})
                    sent = pub.read()
                    end = _wait_rebooting(daemon, r + 1, timeout)
                    if end is None:
                        raise RuntimeError(f"mqtt: healer did not finish round {r}")
                    if r:
                        healer_cpu.append((cpu_seconds(daemon.pid) - cpu0) / messages * 1e6)
                        healer_rates.append(messages / (end - sent["start"]))
                else:
                    bare = bares[who]
                    cpu0 = cpu_seconds(bare.pid)
                    pub.send({"prefix": prefixes[who], "round": r})
                    sent = pub.read()
                    done = bare.read(timeout)
                    if r:
                        bare_cpu[who].append((cpu_seconds(bare.pid) - cpu0) / messages * 1e6)
                        bare_rates[who].append(messages / (done["done"] - sent["start"]))
                time.sleep(0.5)
        text = daemon.metrics()
        counts = {
            what: metric_sum(text, f"healer_events_{what}_total", source="mqtt")
            for what in ("received", "rejected", "dropped")
        }
    rate = median(healer_rates)
    labels = {"5": "bare aiomqtt subscriber, MQTT 5", "3.1.1": "bare aiomqtt, MQTT 3.1.1"}
    figures = []
    for protocol, label in labels.items():
        base = median(bare_rates[protocol])
        ratio = paired_ratio(healer_rates, bare_rates[protocol])
        figures.append(
            Figure(
                f"MQTT intake, QoS 1 heartbeats over {nodes:,} node topics",
                rate,
                "msg/s",
                base,
                label,
                ">= 0.8x",
                ratio is not None and ratio >= 0.8,
                healer_rates,
                bare_rates[protocol],
                note=f"{messages:,} messages a round, {rounds} interleaved rounds after a "
                "warm-up; ratio: median of the rounds' ratios"
                + ("; healer speaks MQTT 5" if protocol != "5" else ""),
                paired=True,
            )
        )
    for protocol, label in labels.items():
        figures.append(
            Figure(
                "CPU per MQTT message",
                median(healer_cpu),
                "us",
                median(bare_cpu[protocol]),
                label,
                samples=healer_cpu,
                baseline_samples=bare_cpu[protocol],
                paired=True,
            )
        )
    return figures, {
        "nodes": nodes,
        "messages_per_round": messages,
        "rounds": rounds,
        # What healer's own counters say it did with them (dropped: superseded heartbeats).
        "healer_events": counts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mqtt_intake")
    parser.add_argument("role", choices=("publish", "bare"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cluster", default="m000")
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--per-node", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    args = parser.parse_args()
    if args.role == "publish":
        _publisher(args)
    else:
        asyncio.run(_bare(args))


if __name__ == "__main__":
    main()
