"""GCE API load balancers: a backend-service-based passthrough Network Load Balancer, external or
internal.

The pieces, all in the cluster's region: a regional health check of the kind the config asks for
(by default HTTPS ``:6443/readyz``, which the kube-apiserver itself answers, so nothing else has
to run on the machines; TCP and HTTP work too), an unmanaged instance group per zone holding the
control-plane instances of that zone, a regional backend service (``loadBalancingScheme``
``EXTERNAL`` or ``INTERNAL``, protocol TCP) with those groups as backends, and a forwarding rule
for the API port (an internal one takes an address from the private subnetwork). Packets pass
through unchanged, so the node firewall admits the API clients and Google's health-check ranges
by address (``Capabilities.lb_passthrough``).

libcloud's GCE driver knows only target pools with legacy HTTP health checks, which cannot probe
an HTTPS-only API server and cannot be internal; these requests go through its signed connection
with the bodies the Compute API documents. Descriptions carry healer's tags.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from libcloud.common.google import ResourceNotFoundError
from libcloud.compute.base import NodeDriver

from healer.cloud.machines import tags_match
from healer.cloud.resources import HealthCheck, LoadBalancer, LoadBalancerSpec, Network, Subnet
from healer.errors import PermanentError
from providers.gce.api import (
    aggregated,
    basename,
    call,
    describe,
    gce_of,
    get,
    link,
    meta_of,
    path_of,
)

_KIND = {"tcp": "TCP", "http": "HTTP", "https": "HTTPS"}
_BLOCK = {"TCP": "tcpHealthCheck", "HTTP": "httpHealthCheck", "HTTPS": "httpsHealthCheck"}


def health_check_body(name: str, check: HealthCheck, description: str) -> dict[str, Any]:
    kind = _KIND[check.protocol]
    block: dict[str, Any] = {"port": check.port}
    if kind != "TCP":
        block["requestPath"] = check.path or "/"
    return {
        "name": name,
        "type": kind,
        _BLOCK[kind]: block,
        "checkIntervalSec": check.interval,
        "timeoutSec": check.timeout,
        "healthyThreshold": check.healthy_threshold,
        "unhealthyThreshold": check.unhealthy_threshold,
        "description": description,
    }


def health_check_of(body: Mapping[str, Any]) -> HealthCheck | None:
    kind = str(body.get("type", ""))
    block = body.get(_BLOCK.get(kind, "")) or {}
    if not block:
        return None
    protocol = kind.lower()
    return HealthCheck(
        protocol=protocol,
        port=int(block.get("port", 0)),
        path=str(block.get("requestPath", "")) if protocol != "tcp" else "",
        interval=int(body.get("checkIntervalSec", 0)),
        timeout=int(body.get("timeoutSec", 0)),
        healthy_threshold=int(body.get("healthyThreshold", 0)),
        unhealthy_threshold=int(body.get("unhealthyThreshold", 0)),
    )


class BackendServiceLbs:
    def list_load_balancers(
        self, driver: NodeDriver, tags: Mapping[str, str]
    ) -> list[LoadBalancer]:
        out = []
        for rule in aggregated(driver, "forwardingRules"):
            meta = meta_of(rule.get("description"))
            if meta is None or not tags_match(meta["tags"], tags):
                continue
            out.append(self._to_lb(driver, rule, meta["tags"]))
        return out

    def _to_lb(
        self, driver: NodeDriver, rule: Mapping[str, Any], tags: Mapping[str, str]
    ) -> LoadBalancer:
        region = basename(rule.get("region"))
        ports = rule.get("ports") or [str(rule.get("portRange") or "0").partition("-")[0]]
        service = get(driver, str(rule.get("backendService") or "")) or {}
        checks = [str(u) for u in service.get("healthChecks") or []]
        check = get(driver, checks[0]) if checks else None
        groups = [str(b["group"]) for b in service.get("backends") or []]
        members: list[str] = []
        for group in groups:
            # An answer, not an operation to wait for.
            path = path_of(group) + "/listInstances"
            listed = gce_of(driver).connection.request(path, method="POST", data={}).object or {}
            for item in listed.get("items") or []:
                instance = get(driver, str(item["instance"]))
                members.append(str(instance["id"]) if instance else str(item["instance"]))
        return LoadBalancer(
            id=str(rule["name"]),
            name=str(rule["name"]),
            address=rule.get("IPAddress"),
            port=int(ports[0]),
            target_port=int(ports[0]),  # pass-through: the same port on the members
            health_check=health_check_of(check) if check else None,
            allowed_sources=(),
            internal=rule.get("loadBalancingScheme") == "INTERNAL",
            members=tuple(sorted(members)),
            tags=tags,
            extra={
                "region": region,
                "backend_service": basename(rule.get("backendService")) or None,
                "health_checks": [basename(c) for c in checks],
                "groups": groups,
                "target_pool": basename(rule.get("target")) or None,  # an LB of older healers
            },
        )

    def create_load_balancer(
        self, driver: NodeDriver, spec: LoadBalancerSpec, network: Network, subnet: Subnet
    ) -> LoadBalancer:
        if spec.port != spec.target_port:
            raise PermanentError(
                f"load balancer {spec.name}: a GCE passthrough load balancer forwards to the same "
                f"port; loadBalancer.port must be {spec.target_port}"
            )
        region = subnet.location
        scheme = "INTERNAL" if spec.internal else "EXTERNAL"
        hc_path = f"/regions/{region}/healthChecks/{spec.name}-hc"
        if get(driver, hc_path) is None:  # else left by an interrupted create
            body = health_check_body(
                f"{spec.name}-hc", spec.health_check, describe(spec.tags, load_balancer=spec.name)
            )
            call(driver, f"/regions/{region}/healthChecks", "POST", body)
        service_path = f"/regions/{region}/backendServices/{spec.name}"
        if get(driver, service_path) is None:
            service: dict[str, Any] = {
                "name": spec.name,
                "loadBalancingScheme": scheme,
                "protocol": "TCP",
                "healthChecks": [link(driver, hc_path)],
                "backends": [],
                "description": describe(spec.tags, load_balancer=spec.name),
            }
            if spec.internal:
                service["network"] = link(driver, f"global/networks/{network.name}")
            call(driver, f"/regions/{region}/backendServices", "POST", service)
        rule: dict[str, Any] = {
            "name": spec.name,
            "loadBalancingScheme": scheme,
            "IPProtocol": "TCP",
            "ports": [str(spec.port)],
            "backendService": link(driver, service_path),
            "description": describe(spec.tags),
        }
        if spec.internal:
            rule["network"] = link(driver, f"global/networks/{network.name}")
            rule["subnetwork"] = link(driver, f"regions/{region}/subnetworks/{subnet.name}")
        call(driver, f"/regions/{region}/forwardingRules", "POST", rule)
        found = [lb for lb in self.list_load_balancers(driver, spec.tags) if lb.name == spec.name]
        if len(found) != 1:
            raise PermanentError(f"GCE does not list {spec.name!r} after creating it")
        return found[0]

    def update_load_balancer(
        self, driver: NodeDriver, lb: LoadBalancer, spec: LoadBalancerSpec
    ) -> None:
        if lb.health_check == spec.health_check:
            return
        if lb.extra.get("target_pool"):
            raise PermanentError(
                f"load balancer {lb.name} is a target pool with a legacy HTTP health check "
                "(made by an older healer); `healer destroy` and `healer apply` rebuild it as a "
                "backend service the API server's own health endpoint serves"
            )
        for name in lb.extra.get("health_checks", []):
            path = f"/regions/{lb.extra['region']}/healthChecks/{name}"
            about = describe(spec.tags, load_balancer=lb.name)
            body = health_check_body(name, spec.health_check, about)
            call(driver, path, "PATCH", body)

    def change_members(
        self, driver: NodeDriver, lb: LoadBalancer, *, add: Sequence[str], remove: Sequence[str]
    ) -> None:
        gce = gce_of(driver)
        nodes = {str(n.id): n for n in gce.list_nodes(ex_zone="all")}
        for machine_id, verb in [(m, "addInstances") for m in add] + [
            (m, "removeInstances") for m in remove
        ]:
            node = nodes.get(machine_id)
            if node is None:
                if verb == "addInstances":
                    raise PermanentError(f"load balancer {lb.name}: no instance {machine_id}")
                continue  # gone: GCE took it out of its group with it
            zone = str(node.extra["zone"].name)
            group = self._group(driver, lb, zone, create=verb == "addInstances")
            if group is None:
                continue
            body = {"instances": [{"instance": node.extra["selfLink"]}]}
            call(driver, f"{path_of(group)}/{verb}", "POST", body)

    def _group(
        self, driver: NodeDriver, lb: LoadBalancer, zone: str, *, create: bool
    ) -> str | None:
        """The URL of ``lb``'s instance group in ``zone``, made (and made a backend) if asked."""
        path = f"/zones/{zone}/instanceGroups/{lb.name}-{zone}"
        url = link(driver, path.lstrip("/"))
        if get(driver, path) is None:
            if not create:
                return None
            # The group takes the network of the first instance added to it.
            body = {
                "name": f"{lb.name}-{zone}",
                "description": describe(lb.tags, load_balancer=lb.name),
            }
            call(driver, f"/zones/{zone}/instanceGroups", "POST", body)
        service_path = f"/regions/{lb.extra['region']}/backendServices/{lb.name}"
        service = get(driver, service_path) or {}
        backends = list(service.get("backends") or [])
        if url not in [b.get("group") for b in backends]:
            backends.append({"group": url, "balancingMode": "CONNECTION"})
            patch = {"backends": backends, "fingerprint": service.get("fingerprint")}
            call(driver, service_path, "PATCH", patch)
        return url

    def delete_load_balancer(self, driver: NodeDriver, lb: LoadBalancer, /) -> bool:
        region = lb.extra.get("region")
        existed = get(driver, f"/regions/{region}/forwardingRules/{lb.name}") is not None
        if existed:
            call(driver, f"/regions/{region}/forwardingRules/{lb.name}", "DELETE")
        # Already gone is fine: a retried delete, or an interrupted create that never made them.
        paths = [f"/regions/{region}/backendServices/{lb.name}"]
        paths += [path_of(g) for g in lb.extra.get("groups") or []]
        names = lb.extra.get("health_checks") or [f"{lb.name}-hc"]
        paths += [f"/regions/{region}/healthChecks/{n}" for n in names]
        for path in paths:
            with contextlib.suppress(ResourceNotFoundError):
                call(driver, path, "DELETE")
        return existed
