"""The daemon's `mqtt` config section for a fault test's own broker: a client id of its own,
so no test takes over another's persistent session."""

from __future__ import annotations

import uuid
from typing import Any

from tests.faults.world import LOOPBACK
from tests.plugins.mqtt import MosquittoBroker


def mqtt_section(broker: MosquittoBroker, test: str) -> dict[str, Any]:
    return {
        "host": LOOPBACK,
        "port": broker.port,
        "clientId": f"healer-{test}-{uuid.uuid4().hex[:8]}",
    }
