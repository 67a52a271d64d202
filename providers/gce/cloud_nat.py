"""GCE egress for private machines: a Cloud Router with a Cloud NAT configuration for the
cluster's private subnetwork, in the subnetwork's region.

GCE networks keep their own default route to the internet gateway, but it only carries traffic
of instances with an external address; instances without one (healer's default) reach the
internet only through Cloud NAT, which lets no connection in. libcloud has no Cloud Router calls:
the requests go through libcloud's signed GCE connection, with the bodies the Compute API
documents. The router's description carries healer's tags.
"""

from __future__ import annotations

from collections.abc import Mapping

from libcloud.compute.base import NodeDriver

from healer.cloud.machines import tags_match
from healer.cloud.resources import NatGateway, NatSpec, Network
from healer.errors import PermanentError
from providers.gce.api import aggregated, basename, call, describe, get, link, meta_of


class CloudNat:
    """Routers with one NAT each; a healer "NAT gateway" here is a router and its NAT."""

    def list_nat_gateways(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[NatGateway]:
        out = []
        for router in aggregated(driver, "routers"):
            meta = meta_of(router.get("description"))
            if meta is None or not tags_match(meta["tags"], tags):
                continue
            nats = router.get("nats") or [{}]
            served = [basename(s.get("name")) for s in nats[0].get("subnetworks") or []]
            out.append(
                NatGateway(
                    id=str(router["name"]),
                    name=str(router["name"]),
                    network_id=basename(router.get("network")),
                    subnet=served[0] if served else "",
                    location=basename(router.get("region")) or None,
                    tags=meta["tags"],
                    extra={"nat": nats[0].get("name"), "subnets": served},
                )
            )
        return out

    def create_nat_gateway(self, driver: NodeDriver, spec: NatSpec, network: Network) -> NatGateway:
        if spec.location is None:
            raise PermanentError(f"Cloud NAT {spec.name}: needs the subnetwork's region")
        region = spec.location
        body = {
            "name": spec.name,
            "network": link(driver, f"global/networks/{network.name}"),
            "description": describe(spec.tags),
            "nats": [
                {
                    "name": spec.name,
                    "natIpAllocateOption": "AUTO_ONLY",
                    "sourceSubnetworkIpRangesToNat": "LIST_OF_SUBNETWORKS",
                    "subnetworks": [
                        {
                            "name": link(driver, f"regions/{region}/subnetworks/{spec.subnet}"),
                            "sourceIpRangesToNat": ["ALL_IP_RANGES"],
                        }
                    ],
                    "logConfig": {"enable": True, "filter": "ERRORS_ONLY"},
                }
            ],
        }
        call(driver, f"/regions/{region}/routers", "POST", body)
        found = [n for n in self.list_nat_gateways(driver, spec.tags) if n.name == spec.name]
        if not found:
            raise PermanentError(f"GCE does not list the router {spec.name} after creating it")
        return found[0]

    def delete_nat_gateway(self, driver: NodeDriver, nat: NatGateway, /) -> bool:
        path = f"/regions/{nat.location}/routers/{nat.name}"
        if get(driver, path) is None:
            return False
        call(driver, path, "DELETE")
        return True
