"""Prometheus metrics: the daemon's one registry and the metric objects every layer shares.

Metrics live in :data:`REGISTRY`, not in prometheus-client's global registry, so that the
daemon decides what is exposed (and tests can read values with ``REGISTRY.get_sample_value``)
without picking up collectors other libraries register globally. The HTTP endpoint must serve
this registry (``prometheus_client.start_http_server(port, registry=REGISTRY)``).

Label values are bounded sets (sources, rejection reasons); never put node names, topics or
free text in a label.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, PlatformCollector, ProcessCollector

REGISTRY: Final = CollectorRegistry()
# The standard process_* and python_info series operators expect from any exporter.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

EVENTS_RECEIVED: Final = Counter(
    "healer_events_received",
    "Events accepted from a source and passed on to the health tracker.",
    ["source"],
    registry=REGISTRY,
)
EVENTS_REJECTED: Final = Counter(
    "healer_events_rejected",
    "Messages a source could not turn into an event, by reason "
    "(see healer.sources.mqtt_payload for the MQTT reasons).",
    ["source", "reason"],
    registry=REGISTRY,
)
