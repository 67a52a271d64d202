"""EC2 egress for private machines: a NAT gateway (with its Elastic IP) in each zone's public
subnet, and explicit route tables: one per zone sending ``0.0.0.0/0`` to that zone's NAT gateway,
associated with the zone's private subnet, and one sending it to the internet gateway, associated
with the public subnets. No subnet of healer's relies on the VPC's main route table, so a private
subnet never routes to the internet gateway, by AWS's definition of "private".

libcloud has no NAT gateway, Elastic IP tagging or route-table-replacement calls; every request
here goes through libcloud's own signed EC2 connection (:class:`~providers.ec2.api.Ec2Api`) with
the parameters the EC2 API documents, each resource tagged on its create call.
"""

from __future__ import annotations

from collections.abc import Mapping
from xml.etree.ElementTree import Element

from libcloud.common.exceptions import BaseHTTPError
from libcloud.compute.base import NodeDriver
from libcloud.compute.drivers.ec2 import NAMESPACE

from healer.cloud.machines import tags_match
from healer.cloud.resources import (
    INTERNET,
    NAT_ROUTE,
    TAG_RESOURCE,
    NatGateway,
    NatSpec,
    Network,
    RouteTable,
    RouteTableSpec,
    Subnet,
)
from healer.errors import PermanentError
from healer.model import TAG_CLUSTER, TAG_MANAGED
from providers.ec2.api import findall, text_of
from providers.ec2.vpc import Vpcs

_DEFAULT = "0.0.0.0/0"
_GONE = ("deleted", "failed")  # NAT gateway states that hold nothing any more


def _tags_of(element: Element) -> dict[str, str]:
    return {
        str(text_of(t, "key")): str(text_of(t, "value") or "")
        for t in findall(element=element, xpath="tagSet/item", namespace=NAMESPACE)
    }


class Egress(Vpcs):
    """NAT gateways and route tables (they need the VPC's subnets, hence the base class)."""

    # -- NAT gateways --------------------------------------------------------------------------

    def _nat_elements(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[Element]:
        answer = self._call(
            driver, {"Action": "DescribeNatGateways", **self._tag_filters(driver, tags)}
        )
        return [
            e
            for e in findall(element=answer, xpath="natGatewaySet/item", namespace=NAMESPACE)
            if text_of(e, "state") not in _GONE and tags_match(_tags_of(e), tags)
        ]

    def _subnets(self, driver: NodeDriver, cluster: str) -> dict[str, Subnet]:
        """The cluster's subnets by id."""
        owned = {TAG_MANAGED: "true", TAG_CLUSTER: cluster, TAG_RESOURCE: "subnet"}
        return {s.id: s for s in self.list_subnets(driver, owned)}

    def _subnet_names(self, driver: NodeDriver, cluster: str) -> dict[str, str]:
        """Subnet id -> name for the cluster's subnets."""
        return {k: s.name for k, s in self._subnets(driver, cluster).items()}

    def list_nat_gateways(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[NatGateway]:
        elements = self._nat_elements(driver, tags)
        if not elements:
            return []
        out = []
        known: dict[str, dict[str, Subnet]] = {}
        for e in elements:
            nat_tags = _tags_of(e)
            cluster = nat_tags.get(TAG_CLUSTER, "")
            if cluster not in known:
                known[cluster] = self._subnets(driver, cluster)
            subnet_id = str(text_of(e, "subnetId"))
            subnet = known[cluster].get(subnet_id)
            out.append(
                NatGateway(
                    id=str(text_of(e, "natGatewayId")),
                    name=nat_tags.get("Name", str(text_of(e, "natGatewayId"))),
                    network_id=str(text_of(e, "vpcId")),
                    subnet=subnet.name if subnet is not None else subnet_id,
                    location=subnet.location if subnet is not None else None,
                    tags=nat_tags,
                    address=text_of(e, "natGatewayAddressSet/item/publicIp"),
                    extra={
                        "state": text_of(e, "state"),
                        "subnet_id": subnet_id,
                        "allocation_id": text_of(e, "natGatewayAddressSet/item/allocationId"),
                    },
                )
            )
        return out

    def create_nat_gateway(self, driver: NodeDriver, spec: NatSpec, network: Network) -> NatGateway:
        subnets = {v: k for k, v in self._subnet_names(driver, spec.tags[TAG_CLUSTER]).items()}
        subnet_id = subnets.get(spec.subnet)
        if subnet_id is None:
            raise PermanentError(f"NAT gateway {spec.name}: no subnet {spec.subnet} to put it in")
        address = self._call(
            driver,
            {
                "Action": "AllocateAddress",
                "Domain": "vpc",
                **self._tag_spec("elastic-ip", f"{spec.name}-ip", spec.tags),
            },
        )
        allocation = text_of(address, "allocationId")
        if not allocation:
            raise PermanentError(f"EC2 answered AllocateAddress({spec.name}) without an id")
        self._call(
            driver,
            {
                "Action": "CreateNatGateway",
                "SubnetId": subnet_id,
                "AllocationId": allocation,
                **self._tag_spec("natgateway", spec.name, spec.tags),
            },
        )
        found = [n for n in self.list_nat_gateways(driver, spec.tags) if n.name == spec.name]
        if not found:
            raise PermanentError(f"EC2 does not list the new NAT gateway {spec.name} by its tags")
        return found[0]

    def delete_nat_gateway(self, driver: NodeDriver, nat: NatGateway, /) -> bool:
        """Delete the gateway, then release its Elastic IP. EC2 deletes a gateway in the
        background and refuses to release its address until it is gone; that refusal is raised
        as "in use", so ``destroy`` waits and calls again, and this finds the gateway by id
        (listed as deleting, then deleted) and releases the address."""
        answer = self._call(driver, {"Action": "DescribeNatGateways", "NatGatewayId.1": nat.id})
        found = findall(element=answer, xpath="natGatewaySet/item", namespace=NAMESPACE)
        if not found or not tags_match(_tags_of(found[0]), nat.tags):
            return False
        state = text_of(found[0], "state")
        done = False
        if state not in ("deleting", "deleted"):
            self._call(driver, {"Action": "DeleteNatGateway", "NatGatewayId": nat.id})
            done = True
        allocation = text_of(found[0], "natGatewayAddressSet/item/allocationId")
        if allocation and self._allocated(driver, allocation):
            self._release(driver, allocation, f"NAT gateway {nat.id}")
            done = True
        return done

    def _release(self, driver: NodeDriver, allocation: str, holder: str) -> None:
        try:
            self._call(driver, {"Action": "ReleaseAddress", "AllocationId": allocation})
        except BaseHTTPError as exc:
            if "InUse" not in str(exc):  # InvalidIPAddress.InUse while its holder goes away
                raise
            # Raised with words destroy waits on: the holder is still being deleted.
            raise PermanentError(
                f"Elastic IP {allocation} is still in use by {holder}, which EC2 is "
                f"deleting (ResourceInUse): {exc}"
            ) from exc

    def delete_network(self, driver: NodeDriver, network: Network, /) -> bool:
        """The VPC, after releasing every Elastic IP of the cluster (a NAT gateway deleted by
        hand, or whose delete was interrupted, leaves its address allocated)."""
        owned = {TAG_MANAGED: "true", TAG_CLUSTER: network.tags[TAG_CLUSTER]}
        answer = self._call(
            driver, {"Action": "DescribeAddresses", **self._tag_filters(driver, owned)}
        )
        for item in findall(element=answer, xpath="addressesSet/item", namespace=NAMESPACE):
            allocation = text_of(item, "allocationId")
            if allocation and tags_match(_tags_of(item), owned):
                self._release(driver, allocation, f"NAT gateway of VPC {network.id}")
        return super().delete_network(driver, network)

    def _allocated(self, driver: NodeDriver, allocation: str) -> bool:
        answer = self._call(
            driver,
            {
                "Action": "DescribeAddresses",
                "Filter.1.Name": "allocation-id",
                "Filter.1.Value.1": allocation,
            },
        )
        return bool(findall(element=answer, xpath="addressesSet/item", namespace=NAMESPACE))

    # -- route tables --------------------------------------------------------------------------

    def _table_elements(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[Element]:
        answer = self._call(
            driver, {"Action": "DescribeRouteTables", **self._tag_filters(driver, tags)}
        )
        return [
            e
            for e in findall(element=answer, xpath="routeTableSet/item", namespace=NAMESPACE)
            if tags_match(_tags_of(e), tags)
        ]

    def list_route_tables(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[RouteTable]:
        out = []
        for e in self._table_elements(driver, tags):
            table_tags = _tags_of(e)
            cluster = table_tags.get(TAG_CLUSTER, "")
            subnets = self._subnet_names(driver, cluster)
            nats = {
                n.id: n.name
                for n in self.list_nat_gateways(
                    driver, {TAG_MANAGED: "true", TAG_CLUSTER: cluster, TAG_RESOURCE: "nat-gateway"}
                )
            }
            associations = {
                str(text_of(a, "subnetId")): str(text_of(a, "routeTableAssociationId"))
                for a in findall(element=e, xpath="associationSet/item", namespace=NAMESPACE)
                if text_of(a, "subnetId")
            }
            route = None
            for r in findall(element=e, xpath="routeSet/item", namespace=NAMESPACE):
                if text_of(r, "destinationCidrBlock") != _DEFAULT:
                    continue
                nat_id, gateway = text_of(r, "natGatewayId"), text_of(r, "gatewayId")
                if nat_id:
                    route = f"{NAT_ROUTE}{nats.get(nat_id, nat_id)}"
                elif gateway and gateway.startswith("igw-"):
                    route = INTERNET
                else:
                    route = f"other:{gateway}"
            out.append(
                RouteTable(
                    id=str(text_of(e, "routeTableId")),
                    name=table_tags.get("Name", str(text_of(e, "routeTableId"))),
                    network_id=str(text_of(e, "vpcId")),
                    subnets=tuple(sorted(subnets.get(s, s) for s in associations)),
                    default_route=route,
                    tags=table_tags,
                    extra={"associations": associations},
                )
            )
        return out

    def create_route_table(
        self, driver: NodeDriver, spec: RouteTableSpec, network: Network
    ) -> RouteTable:
        answer = self._call(
            driver,
            {
                "Action": "CreateRouteTable",
                "VpcId": network.id,
                **self._tag_spec("route-table", spec.name, spec.tags),
            },
        )
        if not text_of(answer, "routeTable/routeTableId"):
            raise PermanentError(f"EC2 answered CreateRouteTable({spec.name}) without an id")
        # Routes and associations are the update the reconciler makes next (one code path).
        return self._one_table(driver, spec)

    def _one_table(self, driver: NodeDriver, spec: RouteTableSpec) -> RouteTable:
        found = [t for t in self.list_route_tables(driver, spec.tags) if t.name == spec.name]
        if not found:
            raise PermanentError(f"EC2 does not list the route table {spec.name} by its tags")
        return found[0]

    def set_routes(self, driver: NodeDriver, table: RouteTable, spec: RouteTableSpec) -> None:
        cluster = spec.tags[TAG_CLUSTER]
        if table.default_route != spec.default_route:
            self._set_default_route(driver, table, spec, cluster)
        by_name = {v: k for k, v in self._subnet_names(driver, cluster).items()}
        associations: Mapping[str, str] = table.extra.get("associations", {})
        for name in spec.subnets:
            subnet_id = by_name.get(name)
            if subnet_id is None:
                raise PermanentError(f"route table {spec.name}: no subnet {name} to associate")
            if subnet_id not in associations:
                self._associate(driver, table.id, subnet_id)
        wanted = {by_name.get(n) for n in spec.subnets}
        for subnet_id, association in associations.items():
            if subnet_id not in wanted:
                self._call(
                    driver, {"Action": "DisassociateRouteTable", "AssociationId": association}
                )

    def _set_default_route(
        self, driver: NodeDriver, table: RouteTable, spec: RouteTableSpec, cluster: str
    ) -> None:
        base = {"RouteTableId": table.id, "DestinationCidrBlock": _DEFAULT}
        if table.default_route is not None:
            self._call(driver, {"Action": "DeleteRoute", **base})
        target = spec.default_route
        if target is None:
            return
        if target == INTERNET:
            gateways = self._call(
                driver,
                {
                    "Action": "DescribeInternetGateways",
                    "Filter.1.Name": "attachment.vpc-id",
                    "Filter.1.Value.1": table.network_id,
                },
            )
            gateway = text_of(gateways, "internetGatewaySet/item/internetGatewayId")
            if not gateway:
                raise PermanentError(f"route table {spec.name}: VPC has no internet gateway")
            self._call(driver, {"Action": "CreateRoute", **base, "GatewayId": gateway})
            return
        nat_name = target[len(NAT_ROUTE) :]
        owned = {TAG_MANAGED: "true", TAG_CLUSTER: cluster, TAG_RESOURCE: "nat-gateway"}
        nats = [n for n in self.list_nat_gateways(driver, owned) if n.name == nat_name]
        if not nats:
            raise PermanentError(f"route table {spec.name}: no NAT gateway {nat_name}")
        self._call(driver, {"Action": "CreateRoute", **base, "NatGatewayId": nats[0].id})

    def _associate(self, driver: NodeDriver, table_id: str, subnet_id: str) -> None:
        """Associate ``subnet_id``, taking it from another table it is explicitly in."""
        answer = self._call(
            driver,
            {
                "Action": "DescribeRouteTables",
                "Filter.1.Name": "association.subnet-id",
                "Filter.1.Value.1": subnet_id,
            },
        )
        for item in findall(element=answer, xpath="routeTableSet/item", namespace=NAMESPACE):
            for a in findall(element=item, xpath="associationSet/item", namespace=NAMESPACE):
                if text_of(a, "subnetId") == subnet_id:
                    self._call(
                        driver,
                        {
                            "Action": "ReplaceRouteTableAssociation",
                            "AssociationId": str(text_of(a, "routeTableAssociationId")),
                            "RouteTableId": table_id,
                        },
                    )
                    return
        self._call(
            driver,
            {"Action": "AssociateRouteTable", "RouteTableId": table_id, "SubnetId": subnet_id},
        )

    def delete_route_table(self, driver: NodeDriver, table: RouteTable, /) -> bool:
        listed = [t for t in self.list_route_tables(driver, table.tags) if t.id == table.id]
        if not listed:
            return False
        for association in listed[0].extra.get("associations", {}).values():
            self._call(driver, {"Action": "DisassociateRouteTable", "AssociationId": association})
        self._call(driver, {"Action": "DeleteRouteTable", "RouteTableId": table.id})
        return True
