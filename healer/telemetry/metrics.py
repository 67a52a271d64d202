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

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

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
EVENTS_DROPPED: Final = Counter(
    "healer_events_dropped",
    "Messages and events let go to keep memory bounded, by source and reason: superseded (a "
    "heartbeat replaced by a newer one of the same node before it was handled), overflow (a "
    "QoS 0 MQTT message that found the incoming queue full). A state change sent at QoS 1 is "
    "never dropped (docs/mqtt.md).",
    ["source", "reason"],
    registry=REGISTRY,
)
WEBHOOK_CONNECTIONS: Final = Gauge(
    "healer_webhook_connections",
    "Connections open on the webhook listener (capped; see docs/webhook.md).",
    registry=REGISTRY,
)
WEBHOOK_SHED: Final = Counter(
    "healer_webhook_connections_shed",
    "Webhook connections closed by the server to protect the daemon, by reason "
    "(evicted, over_cap, header_timeout, body_timeout).",
    ["reason"],
    registry=REGISTRY,
)

# -- the daemon: health, remediation, guards (label values: cluster names from the config,
# health states, refusal reasons and step names; all bounded sets) ------------------------------
NODES: Final = Gauge(
    "healer_nodes",
    "Nodes healer tracks, by cluster and health state.",
    ["cluster", "health"],
    registry=REGISTRY,
)
REMEDIATIONS: Final = Counter(
    "healer_remediations",
    "Remediation workflows by outcome: started, succeeded, failed.",
    ["cluster", "outcome"],
    registry=REGISTRY,
)
REFUSALS: Final = Counter(
    "healer_refusals",
    "Remediations a guard refused, by reason (counted once per node and change of reason, "
    "as in the audit log).",
    ["cluster", "reason"],
    registry=REGISTRY,
)
BREAKER_OPEN: Final = Gauge(
    "healer_breaker_open",
    "1 while the cluster's circuit breaker is open (no remediation until `healer breaker reset`).",
    ["cluster"],
    registry=REGISTRY,
)
BAD_UPGRADE_BREAKER_OPEN: Final = Gauge(
    "healer_bad_upgrade_breaker_open",
    "1 while the cluster's bad-upgrade breaker is open (no reboot granted and no reboot failure "
    "replaced until `healer breaker reset`).",
    ["cluster"],
    registry=REGISTRY,
)
PAUSED: Final = Gauge(
    "healer_paused",
    "1 while remediation in the cluster is paused (globally, for the cluster or for any pool).",
    ["cluster"],
    registry=REGISTRY,
)
WORKFLOWS_IN_FLIGHT: Final = Gauge(
    "healer_workflows_in_flight",
    "Remediation workflows running now.",
    ["cluster"],
    registry=REGISTRY,
)
STATE_WRITABLE: Final = Gauge(
    "healer_state_writable",
    "1 while the state database takes writes; 0 from a failed write (disk full, read-only, "
    "I/O error) until a probe write works again: decisions are frozen meanwhile.",
    registry=REGISTRY,
)
STATE_WRITABLE.set(1)  # until a write fails (healer.store.writable)
STATE_WRITE_FAILURES: Final = Counter(
    "healer_state_write_failures",
    "Writes to the state database that failed, by kind (DiskFull, ReadOnly, IOError).",
    ["kind"],
    registry=REGISTRY,
)
STEP_SECONDS: Final = Histogram(
    "healer_workflow_step_duration_seconds",
    "How long each remediation step took, by outcome (done or failed).",
    ["step", "outcome"],
    buckets=(0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800),
    registry=REGISTRY,
)
PROVIDER_SECONDS: Final = Histogram(
    "healer_provider_call_duration_seconds",
    "Cloud provider calls, by provider plugin and operation.",
    ["provider", "operation"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
PROVIDER_ERRORS: Final = Counter(
    "healer_provider_errors",
    "Failed cloud provider calls, by kind: temporary (retried) or permanent.",
    ["provider", "operation", "kind"],
    registry=REGISTRY,
)

# -- the service: scheduler, reloads, readiness ----------------------------------------------
JOB_RUNS: Final = Counter(
    "healer_scheduler_job_runs",
    "Periodic job runs (healer.jobs.scheduler), by job and outcome (ok or error).",
    ["job", "outcome"],
    registry=REGISTRY,
)
ORPHANS: Final = Gauge(
    "healer_orphan_machines",
    "Machines tagged as healer's for the cluster that healer has no record of (last sweep).",
    ["cluster"],
    registry=REGISTRY,
)
ORPHANS_DESTROYED: Final = Counter(
    "healer_orphan_machines_destroyed",
    "Orphaned machines destroyed after their grace period (orphans.destroy: true).",
    ["cluster"],
    registry=REGISTRY,
)
DRIFT_MACHINES: Final = Counter(
    "healer_drift_machines_created",
    "Machines created because a pool was below its configured size.",
    ["cluster", "pool"],
    registry=REGISTRY,
)
POOL_MACHINES: Final = Gauge(
    "healer_pool_machines",
    "Per pool at the last resync: desired size, machines in the cloud, Ready nodes.",
    ["cluster", "pool", "kind"],
    registry=REGISTRY,
)
MAINTENANCE_OPEN: Final = Gauge(
    "healer_maintenance_window_open",
    "1 while the cluster's reboot maintenance window is open (or none is configured).",
    ["cluster"],
    registry=REGISTRY,
)
RELOAD_OK: Final = Gauge(
    "healer_config_last_reload_successful",
    "1 if the last configuration reload (SIGHUP) was applied, 0 if it was rejected.",
    registry=REGISTRY,
)
RELOAD_TIME: Final = Gauge(
    "healer_config_last_reload_success_timestamp_seconds",
    "When the configuration in use was loaded (start or the last applied reload).",
    registry=REGISTRY,
)
READY: Final = Gauge(
    "healer_ready",
    "1 once the daemon's sources are connected and its state is loaded (READY=1 to systemd).",
    registry=REGISTRY,
)
LIVENESS_PROBLEMS: Final = Gauge(
    "healer_liveness_problems",
    "Problems the watchdog check found at its last run (0 when healthy; no WATCHDOG=1 "
    "is sent to systemd while it is above 0).",
    registry=REGISTRY,
)
PROMETHEUS_POLLS: Final = Counter(
    "healer_reboot_prometheus_polls",
    "Polls of Prometheus for blocking alerts (reboots.prometheus), by cluster and outcome (ok, "
    "unreachable, timeout, http_error, bad_response). Anything but ok holds the cluster's "
    "reboots (PrometheusUnreachable) once the last good answer is too old.",
    ["cluster", "outcome"],
    registry=REGISTRY,
)
REBOOT_NOTIFICATIONS: Final = Counter(
    "healer_reboot_notifications",
    "Reboot notifications POSTed to reboots.notify.url, by event (started, done, refused) and "
    "outcome (sent, failed). A failure never holds a decision.",
    ["event", "outcome"],
    registry=REGISTRY,
)
