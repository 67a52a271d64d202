"""The node agent (healer/agent/) run for real against mosquitto.

The agent runs as a subprocess, as on a machine (the one file :mod:`healer.agent.bundle` builds),
with both of its MQTT transports (paho and the built-in client). The test listens on the broker, checks every message against healer's own
parsers, and answers reboot requests by hand (to see that the agent waits for the permit and
follows it exactly) or with healer's real MqttSource + RebootArbiter (one reboot per pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from healer.agent import bundle
from healer.agent.builtin_mqtt import parse_packet, varint
from healer.agent.config import load_config, read_env_file
from healer.agent.healer_agent import EXIT_CONFIG, EXIT_MQTT, EXIT_REFUSED
from healer.clock import RealClock
from healer.config import MqttConfig
from healer.config.provenance import Ownership
from healer.health.tracker import HealthTracker
from healer.model import LABEL_POOL, EventKind, NodeEvent, Permit, RebootRequest
from healer.planner import reboots
from healer.planner.reboots import RebootArbiter
from healer.sources.mqtt import MqttSource
from healer.sources.mqtt_payload import Rejection, parse_message
from healer.sources.mqtt_reboot import (
    REBOOT_PERMIT,
    control_topic,
    parse_reboot_request,
    permit_payload,
)
from healer.store.sqlite import Store
from tests.helpers import lab_like_config
from tests.plugins.kube import wait_for
from tests.plugins.mqtt import MOSQUITTO_PASSWORD, MOSQUITTO_USER, MosquittoBroker

PREFIX = "healer/v1"
WAIT = 10.0
TRANSPORTS = ["builtin", "paho"]


@dataclass
class Seen:
    """What the test's own subscriber saw on the broker."""

    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, node: str, channel: str) -> list[dict[str, Any]]:
        return [doc for topic, doc in self.messages if topic == f"{PREFIX}/lab/{node}/{channel}"]

    async def wait(self, predicate: Callable[[], Any], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def listening(
    broker: MosquittoBroker, client_id: str
) -> AsyncIterator[tuple[Seen, aiomqtt.Client]]:
    """Subscribe to everything under the prefix; every message must parse with healer's parsers."""
    seen = Seen()
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=client_id) as client:
        await client.subscribe(f"{PREFIX}/#", qos=1)

        async def collect() -> None:
            async for message in client.messages:
                topic = message.topic.value
                payload = bytes(message.payload)  # type: ignore[arg-type]
                channel = topic.rsplit("/", 1)[1]
                if channel == "reboot-request":
                    parsed: Any = parse_reboot_request(
                        topic, payload, prefix=PREFIX, now=_now(), max_payload=16384
                    )
                elif channel == "reboot-permit":
                    parsed = None
                else:
                    # As a daemon configured with `mqtt.conditions: [NodeDiskFailing]` reads
                    # them: the agent's `health` command reports the operator's own conditions.
                    parsed = parse_message(
                        topic,
                        payload,
                        prefix=PREFIX,
                        now=_now(),
                        max_payload=16384,
                        owners=Ownership.of(mqtt_conditions=["NodeDiskFailing"]),
                    )
                assert not isinstance(parsed, Rejection), (topic, payload, parsed)
                seen.messages.append((topic, json.loads(payload)))
                seen.changed.set()

        task = asyncio.create_task(collect())
        try:
            yield seen, client
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


def _now() -> float:
    import time

    return time.time()


def agent_env(
    tmp_path: Path, broker: MosquittoBroker, node: str, transport: str, **extra: str
) -> Path:
    values = {
        "HEALER_MQTT_HOST": "127.0.0.1",
        "HEALER_MQTT_PORT": str(broker.port),
        "HEALER_MQTT_TRANSPORT": transport,
        "HEALER_CLUSTER": "lab",
        "HEALER_NODE": node,
        "HEALER_HEARTBEAT_INTERVAL": "0.2",
        "HEALER_CHECK_INTERVAL": "0.1",
        "HEALER_PERMIT_TIMEOUT": "3",
        "HEALER_PUBLISH_TIMEOUT": "3",
        "HEALER_REBOOT_REQUIRED_FILE": str(tmp_path / f"{node}.reboot-required"),
        "HEALER_REBOOT_COMMAND": f"touch {tmp_path / f'{node}.rebooted'}",
        "HEALER_RUNTIME_DIR": str(tmp_path / f"{node}.run"),
        **extra,
    }
    path = tmp_path / f"{node}.env"
    path.write_text("# written by the test\n" + "".join(f'{k}="{v}"\n' for k, v in values.items()))
    return path


def agent_program(directory: Path) -> Path:
    """The agent as machines get it: the one file healer.agent.bundle builds."""
    program = directory / "healer_agent.py"
    if not program.exists():
        program.write_bytes(bundle.build())
    return program


def _clean_env() -> dict[str, str]:
    # The agent reads HEALER_* from its environment too; keep the test's own out of it.
    return {k: v for k, v in os.environ.items() if not k.startswith("HEALER_")}


@contextlib.asynccontextmanager
async def running_agent(env_file: Path, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(agent_program(env_file.parent)),
            "--env-file",
            str(env_file),
            "run",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            env=_clean_env(),
        )
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(WAIT):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def run_command(env_file: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(agent_program(env_file.parent)),
        "--env-file",
        str(env_file),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_clean_env(),
    )
    async with asyncio.timeout(WAIT * 2):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def send_permit(client: aiomqtt.Client, node: str, permit: Permit) -> None:
    topic = control_topic(PREFIX, "lab", node, REBOOT_PERMIT)
    await client.publish(topic, permit_payload(permit, now=_now()), qos=1)


# -- the service, answered by hand ------------------------------------------------------------


@pytest.mark.mosquitto
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_agent_publishes_and_reboots_only_with_a_permit(
    mosquitto: MosquittoBroker, tmp_path: Path, transport: str
) -> None:
    node = f"agent-{transport}"
    env = agent_env(tmp_path, mosquitto, node, transport)
    rebooted = tmp_path / f"{node}.rebooted"
    async with listening(mosquitto, f"listener-{transport}") as (seen, client):
        async with running_agent(env, tmp_path / f"{node}.log") as proc:
            # At start: booted (once per boot), RebootRequired cleared, heartbeats.
            await seen.wait(lambda: len(seen.of(node, "heartbeat")) >= 3)
            assert [d["event"] for d in seen.of(node, "reboot")] == ["booted"]
            assert seen.of(node, "health") == [
                {
                    "v": 1,
                    "ts": seen.of(node, "health")[0]["ts"],
                    "condition": "RebootRequired",
                    "status": "False",
                }
            ]

            (tmp_path / f"{node}.reboot-required.pkgs").write_text("linux-image-amd64\nlibc6\n")
            (tmp_path / f"{node}.reboot-required").write_text("*** System restart required ***\n")
            await seen.wait(lambda: seen.of(node, "reboot-request"))
            required = [d for d in seen.of(node, "reboot") if d["event"] == "required"]
            assert required and required[0]["message"] == "packages: linux-image-amd64 libc6"
            first = seen.of(node, "reboot-request")[0]["id"]

            # It waits: no reboot without an answer, nor with an answer to another request.
            await send_permit(
                client,
                node,
                Permit(
                    id="someone-else",
                    granted=True,
                    reason="Granted",
                    message="",
                    expires_at=_now() + 60,
                ),
            )
            await asyncio.sleep(0.8)
            assert not rebooted.exists()
            assert len(seen.of(node, "reboot-request")) == 1

            # Refused: it asks again after retryAfter, with a new id.
            await send_permit(
                client,
                node,
                Permit(
                    id=first,
                    granted=False,
                    reason="PoolBusy",
                    message="w-9 reboots",
                    retry_after=0.5,
                ),
            )
            await seen.wait(lambda: len(seen.of(node, "reboot-request")) == 2)
            second = seen.of(node, "reboot-request")[1]["id"]
            assert second != first
            assert not rebooted.exists()

            # An expired grant is not used either.
            await send_permit(
                client,
                node,
                Permit(
                    id=second, granted=True, reason="Granted", message="", expires_at=_now() - 1
                ),
            )
            await seen.wait(lambda: len(seen.of(node, "reboot-request")) == 3)
            assert not rebooted.exists()

            third = seen.of(node, "reboot-request")[2]["id"]
            await send_permit(
                client,
                node,
                Permit(
                    id=third, granted=True, reason="Granted", message="ok", expires_at=_now() + 60
                ),
            )
            await seen.wait(lambda: any(d["event"] == "started" for d in seen.of(node, "reboot")))
            assert rebooted.exists()
            # It stays up (systemd stops it on the way down) and asks nothing more.
            await asyncio.sleep(0.5)
            assert proc.returncode is None
            assert len(seen.of(node, "reboot-request")) == 3
        assert proc.returncode == 0


@pytest.mark.mosquitto
async def test_no_answer_means_ask_again_and_booted_once_per_boot(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    node = "agent-retry"
    env = agent_env(tmp_path, mosquitto, node, "builtin", HEALER_PERMIT_TIMEOUT="0.5")
    (tmp_path / f"{node}.reboot-required").write_text("")
    async with listening(mosquitto, "listener-retry") as (seen, _):
        async with running_agent(env, tmp_path / "a.log"):
            await seen.wait(lambda: len(seen.of(node, "reboot-request")) >= 3)
        ids = [d["id"] for d in seen.of(node, "reboot-request")]
        assert len(set(ids)) == len(ids)
        assert not (tmp_path / f"{node}.rebooted").exists()
        # Restarted within the same boot (the runtime marker is still there): no second booted.
        async with running_agent(env, tmp_path / "b.log"):
            await seen.wait(lambda: len(seen.of(node, "heartbeat")) >= 6)
        assert [d["event"] for d in seen.of(node, "reboot")].count("booted") == 1


@pytest.mark.mosquitto
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_broker_restart_keeps_the_agent_working(
    mosquitto_restartable: MosquittoBroker, tmp_path: Path, transport: str
) -> None:
    broker = mosquitto_restartable
    node = f"agent-restart-{transport}"
    env = agent_env(tmp_path, broker, node, transport, HEALER_PERMIT_TIMEOUT="0.5")
    async with running_agent(env, tmp_path / "agent.log"):
        async with listening(broker, "listener-before") as (seen, _):
            await seen.wait(lambda: len(seen.of(node, "heartbeat")) >= 2)
        broker.restart()
        (tmp_path / f"{node}.reboot-required").write_text("")
        # After the restart the agent is connected and subscribed again: it gets the answer.
        async with listening(broker, "listener-after") as (seen, client):
            await seen.wait(lambda: seen.of(node, "reboot-request"))
            request = seen.of(node, "reboot-request")[-1]["id"]
            await send_permit(
                client,
                node,
                Permit(
                    id=request, granted=True, reason="Granted", message="", expires_at=_now() + 60
                ),
            )
            # The answer may race a re-request (0.5 s timeout); answer the newest until it goes.
            async with asyncio.timeout(WAIT):
                while not (tmp_path / f"{node}.rebooted").exists():
                    await asyncio.sleep(0.1)
                    latest = seen.of(node, "reboot-request")[-1]["id"]
                    if latest != request:
                        request = latest
                        await send_permit(
                            client,
                            node,
                            Permit(
                                id=request,
                                granted=True,
                                reason="Granted",
                                message="",
                                expires_at=_now() + 60,
                            ),
                        )


# -- one-shot commands -------------------------------------------------------------------------


@pytest.mark.mosquitto
async def test_one_shot_commands(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    node = "agent-oneshot"
    env = agent_env(tmp_path, mosquitto, node, "builtin")
    async with listening(mosquitto, "listener-oneshot") as (seen, _):
        assert (await run_command(env, "upgrade", "started"))[0] == 0
        assert (
            await run_command(
                env, "upgrade", "failed", "openssl", "libssl3", "--message", "dpkg error"
            )
        )[0] == 0
        assert (
            await run_command(env, "health", "NodeDiskFailing", "True", "--reason", "SmartError")
        )[0] == 0
        # No systemd here, so it cannot tell a reboot from a poweroff: it announces (safe side).
        assert (await run_command(env, "rebooting"))[0] == 0
        assert (await run_command(env, "heartbeat"))[0] == 0
        await seen.wait(lambda: len(seen.messages) >= 5)
    upgrades = seen.of(node, "upgrade")
    assert [d["event"] for d in upgrades] == ["started", "failed"]
    assert (
        upgrades[1]["packages"] == ["openssl", "libssl3"] and upgrades[1]["message"] == "dpkg error"
    )
    assert seen.of(node, "health")[0]["condition"] == "NodeDiskFailing"
    assert seen.of(node, "reboot")[0]["event"] == "started"
    assert len(seen.of(node, "heartbeat")) == 1


@pytest.mark.mosquitto
async def test_request_reboot_without_healer_times_out(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    env = agent_env(tmp_path, mosquitto, "agent-alone", "builtin", HEALER_PERMIT_TIMEOUT="0.3")
    code, out, _ = await run_command(env, "request-reboot", "--wait", "1")
    assert code == EXIT_REFUSED
    assert json.loads(out)["reason"] == "NoAnswer"


@pytest.mark.mosquitto
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_tls_and_password(
    mosquitto_secure: MosquittoBroker, tmp_path: Path, transport: str
) -> None:
    password = tmp_path / "password"
    password.write_text(MOSQUITTO_PASSWORD + "\n")
    assert mosquitto_secure.tls_port is not None and mosquitto_secure.tls_ca is not None
    common = {
        "HEALER_MQTT_PORT": str(mosquitto_secure.tls_port),
        "HEALER_MQTT_CA": str(mosquitto_secure.tls_ca),
        "HEALER_MQTT_USERNAME": MOSQUITTO_USER,
    }
    ok = agent_env(
        tmp_path,
        mosquitto_secure,
        f"tls-{transport}",
        transport,
        **common,
        HEALER_MQTT_PASSWORD_FILE=str(password),
    )
    code, _, err = await run_command(ok, "heartbeat")
    assert code == 0, err
    bad = agent_env(
        tmp_path,
        mosquitto_secure,
        f"tls-bad-{transport}",
        transport,
        **common,
        HEALER_MQTT_PASSWORD="wrong",
    )
    code, _, err = await run_command(bad, "heartbeat")
    assert code == EXIT_MQTT
    assert "refused the connection" in err
    assert "wrong" not in err  # the password is never logged


async def test_configuration_errors_name_the_file_and_key(tmp_path: Path) -> None:
    env = tmp_path / "agent.env"
    env.write_text("HEALER_CLUSTER=lab\n")
    code, _, err = await run_command(env, "heartbeat")
    assert code == EXIT_CONFIG
    assert f"{env}: HEALER_MQTT_HOST is required" in err
    env.write_text(
        "HEALER_MQTT_HOST=127.0.0.1\nHEALER_CLUSTER=lab\nHEALER_HEARTBEAT_INTERVAL=soon\n"
    )
    code, _, err = await run_command(env, "heartbeat")
    assert code == EXIT_CONFIG and "HEALER_HEARTBEAT_INTERVAL='soon'" in err
    env.write_text("HEALER_MQTT_HOST=127.0.0.1\nthis is not a setting\n")
    code, _, err = await run_command(env, "heartbeat")
    assert code == EXIT_CONFIG and f"{env}:2: expected KEY=VALUE" in err


async def test_an_unreachable_broker_is_exit_2(tmp_path: Path) -> None:
    env = tmp_path / "agent.env"
    env.write_text(
        "HEALER_MQTT_HOST=127.0.0.1\nHEALER_MQTT_PORT=1\nHEALER_CLUSTER=lab\nHEALER_NODE=n1\n"
    )
    code, _, err = await run_command(env, "heartbeat")
    assert code == EXIT_MQTT and "cannot connect to 127.0.0.1:1" in err


def test_env_file_syntax(tmp_path: Path) -> None:
    path = tmp_path / "agent.env"
    path.write_text(
        "# comment\n\nHEALER_A=plain\nexport HEALER_B='single quoted'\nHEALER_C=\"double = sign\"\n"
    )
    assert read_env_file(str(path)) == {
        "HEALER_A": "plain",
        "HEALER_B": "single quoted",
        "HEALER_C": "double = sign",
    }
    assert read_env_file(str(tmp_path / "missing")) == {}
    config = load_config(
        str(path), {"HEALER_MQTT_HOST": "b", "HEALER_CLUSTER": "c", "HEALER_NODE": "n"}
    )
    assert (config.host, config.port, config.tls, config.auto_reboot) == ("b", 1883, False, True)
    assert config.topic("heartbeat") == "healer/v1/c/n/heartbeat"
    tls = load_config(
        str(path), {"HEALER_MQTT_HOST": "b", "HEALER_CLUSTER": "c", "HEALER_MQTT_TLS": "1"}
    )
    assert (tls.tls, tls.port) == (True, 8883)


@pytest.mark.parametrize("length", [0, 1, 127, 128, 16383, 16384, 2_097_151, 2_097_152])
def test_mqtt_remaining_length_roundtrip(length: int) -> None:
    packet = b"\x30" + varint(length) + b"x" * length
    parsed = parse_packet(packet)
    assert parsed is not None and parsed[0] == 0x30 and len(parsed[1]) == length
    assert parsed[2] == len(packet)
    assert parse_packet(packet[:-1] if length else packet[:1]) is None


# -- with healer's arbiter ------------------------------------------------------------------------


@pytest.mark.mosquitto
async def test_the_arbiter_lets_one_node_of_a_pool_reboot_at_a_time(
    mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Production asks a busy pool's agents to come back in a minute; the test cannot wait that.
    monkeypatch.setitem(reboots.RETRY_AFTER, reboots.POOL_BUSY, 0.3)
    config = lab_like_config()
    clock = RealClock()
    store = Store.open(tmp_path / "state")
    tracker = HealthTracker(config=config, store=store, clock=clock)
    # The first list, folded whole: the arbiter grants nothing before the SYNCED marker.
    await tracker.handle(NodeEvent("lab", "", EventKind.LIST_STARTED, clock.now(), "kube"))
    for node in ("arb-1", "arb-2"):
        await tracker.handle(
            NodeEvent(
                "lab",
                node,
                EventKind.NODE_ADDED,
                clock.now(),
                "kube",
                labels={LABEL_POOL: "workers"},
            )
        )
        await tracker.handle(
            NodeEvent(
                "lab",
                node,
                EventKind.CONDITION,
                clock.now(),
                "kube",
                condition="Ready",
                status="True",
            )
        )
    await tracker.handle(NodeEvent("lab", "", EventKind.SYNCED, clock.now(), "kube"))
    source_box: list[MqttSource] = []

    async def publish(cluster: str, node: str, permit: Permit) -> None:
        await source_box[0].publish(
            control_topic(PREFIX, cluster, node, REBOOT_PERMIT),
            permit_payload(permit, now=clock.now()),
        )

    arbiter = RebootArbiter(
        config=config, store=store, clock=clock, tracker=tracker, publish=publish
    )

    async def emit(event: NodeEvent) -> None:
        await tracker.handle(event)
        await arbiter.observe(event)

    async def on_request(request: RebootRequest) -> None:
        await arbiter.on_request(request)

    source = MqttSource(
        config=MqttConfig(host="127.0.0.1", port=mosquitto.port, clientId="arbiter-daemon"),
        known_clusters=["lab"],
        clock=clock,
        emit=emit,
        is_known_node=tracker.knows,
        on_reboot_request=on_request,
    )
    source_box.append(source)
    envs = {}
    for node in ("arb-1", "arb-2"):
        envs[node] = agent_env(tmp_path, mosquitto, node, "builtin")
        (tmp_path / f"{node}.reboot-required").write_text("")
    task = asyncio.create_task(source.run())
    try:
        async with listening(mosquitto, "listener-arbiter") as (seen, _):
            await wait_for(lambda: source.state.reason == "subscribed", timeout=WAIT)
            async with (
                running_agent(envs["arb-1"], tmp_path / "1.log"),
                running_agent(envs["arb-2"], tmp_path / "2.log"),
            ):

                def rebooted() -> list[str]:
                    return [n for n in ("arb-1", "arb-2") if (tmp_path / f"{n}.rebooted").exists()]

                await seen.wait(
                    lambda: any(
                        d["event"] == "started"
                        for n in ("arb-1", "arb-2")
                        for d in seen.of(n, "reboot")
                    )
                )
                first = rebooted()
                assert len(first) == 1
                other = "arb-2" if first == ["arb-1"] else "arb-1"
                # The other keeps asking and is refused while the first is down.
                await seen.wait(lambda: len(seen.of(other, "reboot-request")) >= 3)
                assert rebooted() == first
                refusals = {e.reason for e in store.audit_log(event="reboot.refused")}
                assert refusals == {reboots.POOL_BUSY}
                # The first comes back: the grant is released and the other may go.
                assert (await run_command(envs[first[0]], "booted"))[0] == 0
                await seen.wait(lambda: len(rebooted()) == 2)
        events = [
            (e.event, e.node, e.reason)
            for e in store.audit_log()
            if e.event.startswith("reboot.") and e.event != "reboot.refused"
        ]
        assert events == [
            ("reboot.granted", first[0], "Granted"),
            ("reboot.started", first[0], "RebootStarted"),
            ("reboot.released", first[0], "Booted"),
            ("reboot.granted", other, "Granted"),
            ("reboot.started", other, "RebootStarted"),
        ]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        store.close()
