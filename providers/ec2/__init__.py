"""Amazon EC2 through libcloud: the tag dialect (:mod:`~providers.ec2.dialect`) and the
infrastructure backend (:mod:`~providers.ec2.infra_backend`: a VPC and subnet in
:mod:`~providers.ec2.vpc`, security groups in :mod:`~providers.ec2.security_groups`, a classic
ELB in :mod:`~providers.ec2.elb`). Found by name through :mod:`providers.registry`.
"""

from __future__ import annotations

from healer.cloud.resources import Capabilities

__all__ = ["CAPABILITIES"]

CAPABILITIES = Capabilities.builds_all(
    "libcloud/ec2",
    notes=(
        "load balancer: a classic ELB with a TCP listener (libcloud has no NLB driver); it "
        "proxies, so nodes admit 6443 only from the ELB's security group",
        "a private machine reaches the internet only through a NAT gateway, which libcloud "
        "cannot create: add one yourself, use a package mirror inside the VPC, or set "
        "network.publicIps",
    ),
)
