"""The examples in docs/mqtt.md, docs/webhook.md and docs/agent.md are real: every message parses
with healer's parsers, every config snippet validates, and the curl examples are run with bash
against a webhook listening on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from healer.agent import config as agent_config
from healer.clock import RealClock
from healer.config import WebhookConfig, parse_config
from healer.config.provenance import Ownership
from healer.model import EventKind, NodeEvent, Permit, RebootRequest
from healer.planner.reboots import Situation, decide
from healer.sources.mqtt_payload import parse_message
from healer.sources.mqtt_reboot import parse_reboot_request, permit_payload
from healer.sources.webhook import WebhookServer
from healer.sources.webhook_payload import AlertRules, Parsed, parse_alertmanager, parse_generic

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NOW = 1_700_000_100.0
CLUSTER = {"name": "prod", "provider": {"plugin": "lab"}, "pools": [{"name": "workers", "size": 3}]}


def example(doc: str, name: str) -> str:
    """The fenced block right after ``<!-- example: name -->`` in docs/<doc>."""
    text = (DOCS / doc).read_text()
    match = re.search(rf"<!-- example: {re.escape(name)} -->\n```[a-z]*\n(.*?)\n```", text, re.S)
    assert match, f"docs/{doc} has no example {name!r}"
    return match.group(1)


def yaml_blocks(doc: str) -> list[Any]:
    text = (DOCS / doc).read_text()
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)\n```", text, re.S)]


def lines(block: str) -> list[tuple[str, bytes]]:
    out = []
    for line in block.splitlines():
        topic, payload = line.split(None, 1)
        out.append((topic, payload.encode()))
    return out


# -- docs/mqtt.md ----------------------------------------------------------------------------


def test_mqtt_messages_parse() -> None:
    # With the agents' own conditions named as the page shows (`mqtt.conditions`).
    named = parse_config({"mqtt": yaml_blocks("mqtt.md")[0]["mqtt"], "clusters": [CLUSTER]}).mqtt
    assert named is not None
    owners = Ownership.of(mqtt_conditions=named.conditions)
    kinds = []
    for topic, payload in lines(example("mqtt.md", "mqtt")):
        event = parse_message(
            topic,
            payload,
            prefix="healer/v1",
            now=NOW,
            max_payload=16384,
            known_clusters={"prod"},
            owners=owners,
        )
        assert isinstance(event, NodeEvent), (topic, event)
        kinds.append(event.kind)
    assert kinds == [
        EventKind.HEARTBEAT,
        EventKind.CONDITION,
        EventKind.CONDITION,
        EventKind.REBOOT_STARTED,
        EventKind.BOOTED,
        EventKind.UPGRADE_FAILED,
    ]


def test_reboot_arbitration_exchange_is_what_healer_sends() -> None:
    messages = lines(example("mqtt.md", "mqtt-control"))
    assert [t.rsplit("/", 1)[1] for t, _ in messages] == ["reboot-request", "reboot-permit"] * 2
    for (req_topic, req_payload), (_, permit_raw) in zip(
        messages[::2], messages[1::2], strict=True
    ):
        request = parse_reboot_request(
            req_topic, req_payload, prefix="healer/v1", now=NOW, max_payload=16384
        )
        assert isinstance(request, RebootRequest)
        permit = json.loads(permit_raw)
        assert permit["id"] == request.id
        # The permit shown is exactly what healer's decision and encoder produce for that moment.
        busy = () if permit["granted"] else ("node-2",)
        situation = Situation("prod", "node-1", "workers", True, request.at, busy_in_pool=busy)
        decision = decide(situation, parse_config({"clusters": [CLUSTER]}).clusters[0].reboots)
        produced = permit_payload(
            Permit(
                request.id,
                decision.granted,
                decision.reason,
                decision.message,
                decision.retry_after,
                decision.expires_at,
            ),
            now=request.at,
        )
        assert json.loads(produced) == permit


def test_mqtt_yaml_snippets_validate() -> None:
    blocks = yaml_blocks("mqtt.md")
    assert len(blocks) == 5
    named, health, mqtt, shared, clusters = blocks
    assert parse_config({**named, "clusters": [CLUSTER]}).mqtt.conditions == ("NodeDiskFailing",)  # type: ignore[union-attr]
    parse_config({"mqtt": mqtt["mqtt"], "clusters": [{**CLUSTER, **health}]})
    parse_config({"mqtt": shared["mqtt"], "clusters": [CLUSTER]})
    reboots = (
        parse_config({"clusters": [{**CLUSTER, **clusters["clusters"][0]}]}).clusters[0].reboots
    )
    assert len(reboots.windows) == 2 and reboots.permit_ttl == 600


# -- docs/webhook.md -------------------------------------------------------------------------------


def webhook_config() -> WebhookConfig:
    data = yaml.safe_load(example("webhook.md", "healer-config"))
    return parse_config({**data, "clusters": [CLUSTER]}).webhook  # type: ignore[return-value]


def test_webhook_snippets_validate() -> None:
    config = webhook_config()
    assert config.listen == ("0.0.0.0", 9095) and config.metrics_listen == ("127.0.0.1", 9096)
    health = yaml_blocks("webhook.md")[1]
    parse_config({"clusters": [{**CLUSTER, **health["clusters"][0]}]})
    am = yaml.safe_load(example("webhook.md", "alertmanager-config"))
    hook = am["receivers"][1]["webhook_configs"][0]
    assert hook["url"].endswith("/v1/alertmanager/prod") and hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["type"] == "Bearer"
    assert am["route"]["routes"][0]["receiver"] == "healer"


async def test_alertmanager_example_payload_and_answer() -> None:
    config = webhook_config()
    body = example("webhook.md", "alertmanager-payload").encode()
    rules = AlertRules(
        node_labels=config.node_labels,
        cluster_label=config.cluster_label,
        conditions=config.conditions,
        blocking_alerts=frozenset(config.blocking_alerts),
    )
    parsed = parse_alertmanager(
        body,
        path_cluster="prod",
        rules=rules,
        known_clusters={"prod"},
        now=NOW,
        max_body=config.max_body,
    )
    assert isinstance(parsed, Parsed) and not parsed.rejections
    [event] = parsed.events
    assert (event.node, event.condition, event.status) == ("node-1", "NodeDiskFailing", "True")
    assert event.since == pytest.approx(1_700_000_000.0 - 200 + 0.123456, abs=1e-3)
    # The answer shown in the docs is the server's.
    answer = json.loads(
        re.search(
            r"The answer is `200` with what was done:\n\n```json\n(.*?)\n```",
            (DOCS / "webhook.md").read_text(),
            re.S,
        ).group(1)
    )  # type: ignore[union-attr]

    async def emit(event: NodeEvent) -> None:
        pass

    server = WebhookServer(
        config=WebhookConfig.model_validate(
            {"allowUnauthenticated": True, "conditions": config.conditions}
        ),
        known_clusters=["prod"],
        clock=RealClock(),
        emit=emit,
    )
    async with TestClient(TestServer(server.app())) as client:
        resp = await client.post("/v1/alertmanager/prod", data=body)
        assert resp.status == 200
        assert await resp.json() == answer


def test_generic_example() -> None:
    parsed = parse_generic(
        example("webhook.md", "generic-payload").encode(),
        known_clusters={"prod"},
        now=NOW,
        max_body=4096,
        conditions=frozenset(webhook_config().conditions.values()),
    )
    assert isinstance(parsed, Parsed)
    assert parsed.events[0].detail == {
        "reason": "SmartError",
        "message": "sda: 12 reallocated sectors",
    }


@pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("openssl")), reason="needs curl and openssl"
)
async def test_curl_examples_run(tmp_path: Path) -> None:
    token, secret = tmp_path / "token", tmp_path / "hmac"
    token.write_text("example-token\n")
    secret.write_text("example-hmac-secret")
    events: list[NodeEvent] = []

    async def emit(event: NodeEvent) -> None:
        events.append(event)

    def server_for(**auth: Any) -> WebhookServer:
        config = WebhookConfig.model_validate(
            {"listen": "127.0.0.1:0", "conditions": webhook_config().conditions, **auth}
        )
        return WebhookServer(config=config, known_clusters=["prod"], clock=RealClock(), emit=emit)

    for name, auth in (
        ("curl-bearer", {"token": {"file": str(token)}}),
        ("curl-hmac", {"hmacSecret": {"file": str(secret)}}),
    ):
        server = server_for(**auth)
        await server.start()
        try:
            env = {
                **os.environ,
                "HEALER_WEBHOOK": f"http://127.0.0.1:{server.addresses[0][1]}",
                "TOKEN_FILE": str(token),
                "HMAC_SECRET_FILE": str(secret),
            }
            proc = await asyncio.create_subprocess_exec(
                "bash",
                "-euo",
                "pipefail",
                "-c",
                example("webhook.md", name),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            async with asyncio.timeout(20):
                out, err = await proc.communicate()
            assert proc.returncode == 0, (name, out, err)
            assert json.loads(out)["accepted"] == 1
        finally:
            await server.stop()
    assert [(e.condition, e.status) for e in events] == [
        ("NodeDiskFailing", "False"),
        ("NodeDiskFailing", "True"),
    ]


# -- docs/agent.md ----------------------------------------------------------------------------------


def test_agent_env_example_is_a_valid_configuration(tmp_path: Path) -> None:
    env = tmp_path / "agent.env"
    env.write_text(example("agent.md", "agent-env") + "\n")
    password = tmp_path / "password"
    password.write_text("pw\n")
    config = agent_config.load_config(str(env), {"HEALER_MQTT_PASSWORD_FILE": str(password)})
    assert (config.host, config.port, config.tls, config.cluster, config.node) == (
        "mqtt.prod.internal",
        8883,
        True,
        "prod",
        "prod-workers-7f3k2",
    )
    assert config.reboot_command == ["systemctl", "reboot"] and config.auto_reboot
    assert config.client_id == "healer-agent-prod-prod-workers-7f3k2"
    assert config.password == "pw"
    # Every key the example sets is one the agent reads.
    keys = set(agent_config.read_env_file(str(env)))
    source = Path(agent_config.__file__).read_text()
    for key in keys:
        assert f'"{key.removeprefix("HEALER_")}"' in source, key


def test_agent_files_named_in_the_docs_exist() -> None:
    text = (DOCS / "agent.md").read_text()
    shipped = re.findall(r"\| `[^`]+` \| `([^`]+)`", text)
    assert len(shipped) >= 4
    for path in shipped:
        assert (ROOT / path).is_file(), path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize("unit", ["healer-agent.service", "healer-agent-shutdown.service"])
def test_agent_units_verify(unit: str, tmp_path: Path) -> None:
    copy = tmp_path / unit
    copy.write_text((ROOT / "systemd" / unit).read_text())
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and result.stdout + result.stderr == "", (
        result.stdout + result.stderr
    )
