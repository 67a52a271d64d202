"""Google Compute Engine through libcloud: the label dialect (:mod:`~providers.gce.dialect`)
and the infrastructure backend (:mod:`~providers.gce.infra_backend`). Found by name through
:mod:`providers.registry`.
"""

from __future__ import annotations

from healer.cloud.resources import Capabilities

__all__ = ["CAPABILITIES", "HEALTH_CHECK_SOURCES"]

# Google's documented ranges for legacy (target-pool) health checks.
HEALTH_CHECK_SOURCES = ("35.191.0.0/16", "209.85.152.0/22", "209.85.204.0/22")

CAPABILITIES = Capabilities.builds_all(
    "libcloud/gce",
    lb_passthrough=True,
    lb_internal=False,
    health_check_protocols=frozenset({"http"}),
    health_check_sources=HEALTH_CHECK_SOURCES,
    subnet_scope="region",
    notes=(
        "load balancer: a regional target pool and forwarding rule (external, pass-through); "
        "libcloud has no internal or TCP-proxy load balancer for GCE",
        "target pools only take legacy HTTP health checks: serve an HTTP health endpoint on the "
        "control plane (e.g. port 80 /healthz proxying to https://127.0.0.1:6443/readyz)",
        "GCE firewalls, networks and target pools have no labels: healer's tags are kept as JSON "
        "in each resource's description",
    ),
)
