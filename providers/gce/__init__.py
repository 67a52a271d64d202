"""Google Compute Engine through libcloud: the label dialect (:mod:`~providers.gce.dialect`)
and the infrastructure backend (:mod:`~providers.gce.infra_backend`). Found by name through
:mod:`providers.registry`.
"""

from __future__ import annotations

from healer.cloud.resources import Capabilities

__all__ = ["CAPABILITIES", "HEALTH_CHECK_SOURCES"]

# Google's documented source ranges of health checks for passthrough Network Load Balancers:
# external (35.191.0.0/16 and the two 209.85 ranges) and internal (35.191.0.0/16, 130.211.0.0/22).
HEALTH_CHECK_SOURCES = ("35.191.0.0/16", "130.211.0.0/22", "209.85.152.0/22", "209.85.204.0/22")

CAPABILITIES = Capabilities.builds_all(
    "libcloud/gce",
    lb_passthrough=True,
    lb_internal=True,
    health_check_protocols=frozenset({"tcp", "http", "https"}),
    health_check_sources=HEALTH_CHECK_SOURCES,
    subnet_scope="region",
    nat="region",
    notes=(
        "load balancer: a backend-service passthrough Network Load Balancer (external, or "
        "internal with loadBalancer.internal), health-checked by the API server's own "
        "https :6443/readyz; the API port admits clients and Google's health checkers by address",
        "private machines reach the internet through Cloud NAT (a Cloud Router per region); "
        "network.nat: false leaves them without egress",
        "GCE firewalls, networks, routers and backend services have no labels: healer's tags are "
        "kept as JSON in each resource's description",
    ),
)
