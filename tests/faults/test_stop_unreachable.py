"""SIGTERM while the Kubernetes API and the MQTT broker vanish at the same moment: the daemon
exits within ``STOP_BUDGET`` (10 s), cleanly.

A real mosquitto (tests/plugins/mqtt.py) and a real `healer run` on the lab's API server. Both
peers go away together and the daemon gets SIGTERM. The broker goes away in one of two ways,
alternately:

* killed (connections refused, as after a crash), SIGTERM in the same instant: the MQTT link
  fails while the stop comes. This is the race that kept the daemon of issue 10 retrying MQTT
  for 37 minutes (a Python 3.11 TaskGroup let the link's error swallow the cancellation; about
  one round in six hung before the fix);
* frozen (SIGSTOP: connections are accepted by the kernel and then nothing answers, as behind a
  dead link), SIGTERM after a random gap of up to 3 s (in a reconnect attempt, or in the wait
  before the next one).

The API server is stopped (refused). Four rounds in `make test`, thirty in `make faults`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from random import Random
from typing import Any

from tests.faults.mqtt_section import mqtt_section
from tests.faults.world import (
    LOOPBACK,
    STOP_BUDGET,
    World,
    fault_config,
    lab_world,
    scale,
    until,
)
from tests.plugins.mqtt import MosquittoBroker

ROUNDS = scale(4, 30)
MAX_GAP = 3.0  # seconds between the broker freezing and SIGTERM


async def test_sigterm_with_api_and_broker_gone_exits_in_time(
    tmp_path: Path, mosquitto_restartable: MosquittoBroker, fault_rng: Random
) -> None:
    broker = mosquitto_restartable
    top = {"mqtt": mqtt_section(broker, "stop")}

    rounds: list[dict[str, Any]] = []
    async with lab_world(tmp_path / "lab", config=lambda kc: fault_config(kc, top=top)) as world:
        for n in range(ROUNDS):
            frozen = n % 2 == 1
            gap = round(fault_rng.uniform(0.0, MAX_GAP), 2) if frozen else 0.0
            rounds.append(await one_round(world, broker, frozen=frozen, gap=gap))
            print(json.dumps(rounds[-1]))
    assert all(r["exit"] == 0 and r["stop_s"] < STOP_BUDGET for r in rounds), rounds


async def one_round(
    world: World, broker: MosquittoBroker, *, frozen: bool, gap: float
) -> dict[str, Any]:
    """Start a daemon, take both peers away, SIGTERM it ``gap`` seconds later; the outcome."""
    api = world.harness.api
    assert api is not None
    port = int(api.url.rsplit(":", 1)[1])
    if not broker.running:
        await asyncio.to_thread(broker.start)
    daemon = await world.daemon()
    await daemon.ready()
    await until(lambda: daemon.logged("mqtt.subscribed"), 30, "MQTT", tail=daemon.tail)
    proc = broker._proc
    assert proc is not None
    try:
        if frozen:
            os.kill(proc.pid, signal.SIGSTOP)
        else:
            proc.kill()
        await api.stop()
        await asyncio.sleep(gap)
        rc, took = await daemon.stop(STOP_BUDGET)
    finally:
        if frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
        await asyncio.to_thread(broker.stop)
        await api.start(LOOPBACK, port)
    outcome = {
        "broker": "frozen" if frozen else "killed",
        "gap_s": gap,
        "exit": rc,
        "stop_s": round(took, 2),
    }
    assert rc == 0, (outcome, daemon.tail())
    assert took < STOP_BUDGET, (outcome, daemon.tail())
    # Stopped by its own means, not by the stop deadline of healer/cli/run.py.
    assert not daemon.logged("daemon.stop_forced"), daemon.tail()
    assert daemon.logged("daemon.stopped"), daemon.tail()
    await world.harness.wait_ready(4)
    return outcome
