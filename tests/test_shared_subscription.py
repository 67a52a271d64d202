"""Shared subscription against real mosquitto: two daemons in one group split the stream, every
message reaches exactly one of them."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from healer.config import ConfigError, MqttConfig, parse_config
from healer.model import RebootRequest
from healer.sources.mqtt import MqttSource
from tests.plugins.mqtt import MosquittoBroker
from tests.test_mqtt_source import Harness, config_for, heartbeat, publish_raw

N = 60


@pytest.mark.mosquitto
async def test_two_daemons_split_the_stream(mosquitto: MosquittoBroker) -> None:
    first = Harness(config_for(mosquitto, "shared-a", sharedGroup="healers"))
    second = Harness(config_for(mosquitto, "shared-b", sharedGroup="healers"))
    # A plain subscriber beside the group still gets everything: sharing is per group.
    outsider = Harness(config_for(mosquitto, "shared-outsider"))
    async with first.running(), second.running(), outsider.running():
        await publish_raw(
            mosquitto.port,
            [heartbeat(f"n-{i}") for i in range(N)],
            protocol=aiomqtt.ProtocolVersion.V5,
        )
        await first.wait(lambda: len(first.events) + len(second.events) >= N)
        await outsider.wait_events(N)
        # Give a duplicate, if the broker were to send one, time to arrive.
        await asyncio.sleep(0.3)
    a = [e.node for e in first.events]
    b = [e.node for e in second.events]
    assert a and b, f"one member got nothing: {len(a)} / {len(b)}"
    assert len(a) + len(b) == N, "a message was lost or delivered twice"
    assert set(a).isdisjoint(b)
    assert set(a) | set(b) == {f"n-{i}" for i in range(N)}
    assert len(outsider.events) == N


def test_subscription_filters() -> None:
    async def emit(event: object) -> None:
        pass

    async def on_request(request: RebootRequest) -> None:
        pass

    def source(**kw: object) -> MqttSource:
        config = MqttConfig(topicPrefix="site/healer/v1/", **kw)  # type: ignore[arg-type]
        return MqttSource(
            config=config,
            known_clusters=[],
            clock=None,
            emit=emit,
            on_reboot_request=on_request,  # type: ignore[arg-type]
        )

    assert source().subscriptions() == ["site/healer/v1/+/+/+"]
    assert source(sharedGroup="g1").subscriptions() == [
        "$share/g1/site/healer/v1/+/+/+",
        "site/healer/v1/+/+/reboot-request",  # the arbiter must see every request
    ]


@pytest.mark.parametrize(
    ("mqtt", "message"),
    [
        ({"sharedGroup": "g", "protocol": "3.1.1"}, "sharedGroup needs protocol '5'"),
        ({"sharedGroup": "a/b"}, "mqtt.sharedGroup"),
        ({"sharedGroup": "#"}, "mqtt.sharedGroup"),
    ],
)
def test_shared_group_config(mqtt: dict[str, object], message: str) -> None:
    cluster = {"name": "lab", "provider": {"plugin": "lab"}, "pools": [{"name": "w", "size": 1}]}
    with pytest.raises(ConfigError) as err:
        parse_config({"mqtt": mqtt, "clusters": [cluster]})
    assert message in str(err.value)
