"""Amazon EC2 through libcloud: the tag dialect (:mod:`~providers.ec2.dialect`) and the
infrastructure backend (:mod:`~providers.ec2.infra_backend`: a VPC and subnets in
:mod:`~providers.ec2.vpc`, NAT gateways and route tables in :mod:`~providers.ec2.egress`, security groups in :mod:`~providers.ec2.security_groups`, a classic
ELB in :mod:`~providers.ec2.elb`). Found by name through :mod:`providers.registry`.
"""

from __future__ import annotations

from healer.cloud.resources import Capabilities

__all__ = ["CAPABILITIES"]

CAPABILITIES = Capabilities.builds_all(
    "libcloud/ec2",
    nat="zone",
    notes=(
        "load balancer: a classic ELB with a TCP listener (libcloud has no NLB driver); it "
        "proxies, so nodes admit 6443 only from the ELB's security group",
        "private machines reach the internet through a NAT gateway per zone (an Elastic IP "
        "each, billed by the hour); network.nat: false leaves them without egress",
    ),
)
