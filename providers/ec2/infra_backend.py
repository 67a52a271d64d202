"""EC2 infrastructure through libcloud: the backend healer's reconciler drives.

What gets built for a cluster (names from :mod:`healer.provisioning.desired`): a VPC and its
subnets (:mod:`providers.ec2.vpc`), NAT gateways and route tables (:mod:`providers.ec2.egress`),
security groups (:mod:`providers.ec2.security_groups`) and a
classic ELB (:mod:`providers.ec2.elb`); this module puts them together and places machines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from libcloud.compute.base import NodeDriver
from libcloud.compute.drivers.ec2 import EC2NetworkSubnet

from healer.cloud.machines import MachineRequest
from healer.cloud.resources import Capabilities
from providers.ec2 import CAPABILITIES
from providers.ec2.egress import Egress
from providers.ec2.elb import ClassicElbs, Ec2ElbDriver
from providers.reconciler import InfraBackend, Placement

_Subnet: Callable[..., Any] = EC2NetworkSubnet


class Ec2InfraBackend(Egress, ClassicElbs, InfraBackend):
    capabilities: Capabilities = CAPABILITIES

    # -- machines ------------------------------------------------------------------------------

    def placement_kwargs(
        self, driver: NodeDriver, placement: Placement, request: MachineRequest
    ) -> dict[str, Any]:
        # No ex_assign_public_ip: the subnet's MapPublicIpOnLaunch decides, so replacements get
        # what the first machines got.
        return {
            "ex_subnet": _Subnet(placement.subnet.id, placement.subnet.name, "available"),
            "ex_security_group_ids": sorted(f.id for f in placement.firewalls),
        }


def make_backend(key: str, secret: str | None, keywords: Mapping[str, Any]) -> Ec2InfraBackend:
    """The backend of the ``ec2`` registry row: the ELB is reached with the same credentials,
    region and endpoint settings as the EC2 driver."""
    region = str(keywords.get("region", "us-east-1"))
    elb_kwargs = {
        k: keywords[k] for k in ("token", "host", "port", "secure", "timeout") if k in keywords
    }
    return Ec2InfraBackend(lambda: Ec2ElbDriver(key, secret or "", region, **elb_kwargs))
