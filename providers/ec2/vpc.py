"""EC2 networks: a VPC with, when a public LB, public addresses or NAT gateways need one, an
internet gateway attached (routes to it are in explicit route tables, :mod:`providers.ec2.egress`;
the VPC's main route table is left without one); and subnets, one per availability zone and tier,
where ``MapPublicIpOnLaunch`` stays false unless ``network.publicIps`` is set, so machines have
private addresses only.
"""

from __future__ import annotations

from collections.abc import Mapping

from libcloud.compute.base import NodeDriver
from libcloud.compute.drivers.ec2 import NAMESPACE

from healer.cloud.machines import tags_match
from healer.cloud.resources import TAG_RESOURCE, Network, NetworkSpec, Subnet, SubnetSpec
from healer.errors import PermanentError
from healer.model import TAG_CLUSTER, TAG_MANAGED
from providers.ec2.api import VpcRef, ec2_of, fixxpath, text_of
from providers.ec2.security_groups import SecurityGroups


class Vpcs(SecurityGroups):
    """Networks and subnets (a VPC's security groups go with it, hence the base class)."""

    # -- networks ------------------------------------------------------------------------------

    def list_networks(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[Network]:
        ec2 = ec2_of(driver)
        out = []
        for vpc in ec2.ex_list_networks(filters={f"tag:{k}": v for k, v in tags.items()}):
            gateways = ec2.ex_list_internet_gateways(filters={"attachment.vpc-id": vpc.id})
            out.append(
                Network(
                    id=vpc.id,
                    name=vpc.extra["tags"].get("Name", vpc.id),
                    cidr=vpc.cidr_block,
                    tags=dict(vpc.extra["tags"]),
                    internet_gateway=bool(gateways),
                    extra={"state": vpc.extra.get("state")},
                )
            )
        return out

    def create_network(self, driver: NodeDriver, spec: NetworkSpec) -> Network:
        ec2 = ec2_of(driver)
        answer = self._call(
            driver,
            {
                "Action": "CreateVpc",
                "CidrBlock": spec.cidr,
                **self._tag_spec("vpc", spec.name, spec.tags),
            },
        )
        vpc = ec2._to_network(answer.findall(fixxpath(xpath="vpc", namespace=NAMESPACE))[0])
        network = Network(id=vpc.id, name=spec.name, cidr=vpc.cidr_block, tags=dict(spec.tags))
        if spec.internet_gateway:
            self.add_internet_gateway(driver, network)
        return self._reread_network(driver, network)

    def _reread_network(self, driver: NodeDriver, network: Network) -> Network:
        found = [n for n in self.list_networks(driver, network.tags) if n.id == network.id]
        if not found:
            raise PermanentError(f"EC2 does not list the new VPC {network.id} by its tags")
        return found[0]

    def add_internet_gateway(self, driver: NodeDriver, network: Network) -> None:
        ec2 = ec2_of(driver)
        tags = {**network.tags, TAG_RESOURCE: "internet-gateway"}
        answer = self._call(
            driver,
            {
                "Action": "CreateInternetGateway",
                **self._tag_spec("internet-gateway", f"{network.name}-igw", tags),
            },
        )
        gateway = ec2._to_internet_gateway(
            answer.findall(fixxpath(xpath="internetGateway", namespace=NAMESPACE))[0]
        )
        ec2.ex_attach_internet_gateway(gateway, VpcRef(network.id))

    def delete_network(self, driver: NodeDriver, network: Network) -> bool:
        ec2 = ec2_of(driver)
        if not ec2.ex_list_networks(network_ids=[network.id]):
            return False
        # Security groups of load balancers outlive the ELB by a while (its interfaces hold
        # them), so whatever of the cluster's is left in the VPC goes with the VPC.
        owned = {TAG_MANAGED: "true", TAG_CLUSTER: network.tags[TAG_CLUSTER]}
        for group in self._groups(driver, owned, vpc_id=network.id):
            self._revoke_references(driver, group.id, network.id)
            ec2.ex_delete_security_group_by_id(group.id)
        for gateway in ec2.ex_list_internet_gateways(filters={"attachment.vpc-id": network.id}):
            if not tags_match(gateway.extra.get("tags") or {}, owned):
                continue  # someone else's: EC2 refuses to delete the VPC, and says why
            ec2.ex_detach_internet_gateway(gateway, VpcRef(network.id))
            ec2.ex_delete_internet_gateway(gateway)
        # A failure raises; the answer's <return> element is not sent by every EC2 endpoint.
        ec2.ex_delete_network(VpcRef(network.id))
        return True

    # -- subnets -------------------------------------------------------------------------------

    def list_subnets(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[Subnet]:
        ec2 = ec2_of(driver)
        answer = self._call(
            driver, {"Action": "DescribeSubnets", **self._tag_filters(driver, tags)}
        )
        out = []
        for element in answer.findall(fixxpath(xpath="subnetSet/item", namespace=NAMESPACE)):
            sub = ec2._to_subnet(element)
            out.append(
                Subnet(
                    id=sub.id,
                    name=sub.extra["tags"].get("Name", sub.id),
                    network_id=sub.extra["vpc_id"],
                    cidr=sub.extra["cidr_block"],
                    location=sub.extra["zone"],
                    tags=dict(sub.extra["tags"]),
                    public_ips=text_of(element, "mapPublicIpOnLaunch") == "true",
                )
            )
        return out

    def create_subnet(self, driver: NodeDriver, spec: SubnetSpec, network: Network) -> Subnet:
        answer = self._call(
            driver,
            {
                "Action": "CreateSubnet",
                "VpcId": network.id,
                "CidrBlock": spec.cidr,
                "AvailabilityZone": spec.location,
                **self._tag_spec("subnet", spec.name, spec.tags),
            },
        )
        subnet_id = str(text_of(answer, "subnet/subnetId"))
        if spec.public_ips:
            self._set_public(driver, subnet_id, True)
        found = [s for s in self.list_subnets(driver, spec.tags) if s.id == subnet_id]
        if not found:
            raise PermanentError(f"EC2 does not list the new subnet {subnet_id} by its tags")
        return found[0]

    def set_subnet_public_ips(self, driver: NodeDriver, subnet: Subnet, public: bool) -> None:
        self._set_public(driver, subnet.id, public)

    def _set_public(self, driver: NodeDriver, subnet_id: str, public: bool) -> None:
        self._call(
            driver,
            {
                "Action": "ModifySubnetAttribute",
                "SubnetId": subnet_id,
                "MapPublicIpOnLaunch.Value": "true" if public else "false",
            },
        )

    def delete_subnet(self, driver: NodeDriver, subnet: Subnet) -> bool:
        ec2 = ec2_of(driver)
        if not [s for s in self.list_subnets(driver, subnet.tags) if s.id == subnet.id]:
            return False
        ec2.ex_delete_subnet(VpcRef(subnet.id))
        return True
