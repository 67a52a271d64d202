"""EC2 firewalls: security groups.

The cluster's firewall is one security group for its machines. A source ``lb:<name>`` becomes a
rule naming the load balancer's own security group (``<name>-lb``, which admits the API clients on
the LB port), so 6443 is open to the ELB and nothing else.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from libcloud.compute.base import NodeDriver
from libcloud.compute.drivers.ec2 import EC2SecurityGroup

from healer.cloud.diff import Diff
from healer.cloud.machines import tags_match
from healer.cloud.resources import (
    GROUP_SOURCE,
    LB_SOURCE,
    TAG_RESOURCE,
    Firewall,
    FirewallSpec,
    Network,
    Permission,
    lb_source,
)
from healer.errors import PermanentError
from healer.model import TAG_CLUSTER, TAG_MANAGED
from providers.ec2.api import Ec2Api, ec2_of, text_of
from providers.reconciler import new_firewall

TAG_LB = "healer.io/load-balancer"  # on an LB's security group: which LB it belongs to
LB_FIREWALL = "load-balancer-firewall"  # TAG_RESOURCE of an LB's security group


class SecurityGroups(Ec2Api):
    def _groups(
        self, driver: NodeDriver, tags: Mapping[str, str], *, vpc_id: str | None = None
    ) -> list[EC2SecurityGroup]:
        filters: dict[str, Any] = {f"tag:{k}": v for k, v in tags.items()}
        if vpc_id is not None:
            filters["vpc-id"] = vpc_id
        groups = ec2_of(driver).ex_get_security_groups(filters=filters)
        return [g for g in groups if tags_match(g.extra.get("tags") or {}, tags)]

    def _lb_groups(self, driver: NodeDriver, cluster: str, vpc_id: str) -> dict[str, str]:
        """LB security group id -> ``lb:<name>``, for the cluster's groups in ``vpc_id``."""
        owned = {TAG_MANAGED: "true", TAG_CLUSTER: cluster, TAG_RESOURCE: LB_FIREWALL}
        return {
            g.id: lb_source(g.extra["tags"][TAG_LB])
            for g in self._groups(driver, owned, vpc_id=vpc_id)
            if TAG_LB in g.extra["tags"]
        }

    def list_firewalls(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[Firewall]:
        out = []
        lb_maps: dict[tuple[str, str], dict[str, str]] = {}
        for group in self._groups(driver, tags):
            vpc_id = str(group.extra.get("vpc_id"))
            cluster = group.extra["tags"].get(TAG_CLUSTER, "")
            if (cluster, vpc_id) not in lb_maps:
                lb_maps[cluster, vpc_id] = self._lb_groups(driver, cluster, vpc_id)
            out.append(
                Firewall(
                    id=group.id,
                    name=group.name,
                    network_id=vpc_id,
                    permissions=frozenset(permissions_of(group, lb_maps[cluster, vpc_id])),
                    tags=dict(group.extra["tags"]),
                )
            )
        return out

    def create_firewall(self, driver: NodeDriver, spec: FirewallSpec, network: Network) -> Firewall:
        group_id = self._create_group(
            driver,
            name=spec.name,
            description=f"healer: machines of cluster {spec.tags[TAG_CLUSTER]}",
            vpc_id=network.id,
            tags=spec.tags,
        )
        return new_firewall(group_id, spec, network)

    def _create_group(
        self,
        driver: NodeDriver,
        *,
        name: str,
        description: str,
        vpc_id: str,
        tags: Mapping[str, str],
    ) -> str:
        answer = self._call(
            driver,
            {
                "Action": "CreateSecurityGroup",
                "GroupName": name,
                "GroupDescription": description,
                "VpcId": vpc_id,
                **self._tag_spec("security-group", name, tags),
            },
        )
        group_id = text_of(answer, "groupId")
        if not group_id:
            raise PermanentError(f"EC2 answered CreateSecurityGroup({name}) without a group id")
        return group_id

    def change_permissions(
        self, driver: NodeDriver, firewall: Firewall, spec: FirewallSpec, diff: Diff
    ) -> None:
        add, remove = diff.add, diff.remove
        cluster = firewall.tags[TAG_CLUSTER]
        groups = {v: k for k, v in self._lb_groups(driver, cluster, firewall.network_id).items()}
        for perm in add:
            if perm.source.startswith(LB_SOURCE) and perm.source not in groups:
                # The LB's group is made before the LB, so the node group can name it.
                name = perm.source[len(LB_SOURCE) :]
                groups[perm.source] = self._ensure_lb_group(
                    driver, name, firewall.network_id, cluster
                )
        descriptions = {p: r.description for r in spec.rules for p in r.permissions()}
        if remove:
            self._call(
                driver,
                {
                    "Action": "RevokeSecurityGroupIngress",
                    "GroupId": firewall.id,
                    **ip_permissions(remove, groups, {}),
                },
            )
        if add:
            self._call(
                driver,
                {
                    "Action": "AuthorizeSecurityGroupIngress",
                    "GroupId": firewall.id,
                    **ip_permissions(add, groups, descriptions),
                },
            )

    def _ensure_lb_group(self, driver: NodeDriver, lb_name: str, vpc_id: str, cluster: str) -> str:
        tags = {
            TAG_MANAGED: "true",
            TAG_CLUSTER: cluster,
            TAG_RESOURCE: LB_FIREWALL,
            TAG_LB: lb_name,
        }
        found = self._groups(driver, tags, vpc_id=vpc_id)
        if found:
            return str(found[0].id)
        return self._create_group(
            driver,
            name=f"{lb_name}-lb",
            description=f"healer: clients of load balancer {lb_name}",
            vpc_id=vpc_id,
            tags=tags,
        )

    def _revoke_references(self, driver: NodeDriver, group_id: str, vpc_id: str) -> None:
        """Remove every rule in ``vpc_id`` that names ``group_id`` (EC2 will not delete a group
        another group's rule refers to)."""
        for other in ec2_of(driver).ex_get_security_groups(filters={"vpc-id": vpc_id}):
            perms = [
                p
                for p in permissions_of(other, {group_id: f"{GROUP_SOURCE}{group_id}"})
                if p.source == f"{GROUP_SOURCE}{group_id}"
            ]
            if perms:
                self._call(
                    driver,
                    {
                        "Action": "RevokeSecurityGroupIngress",
                        "GroupId": other.id,
                        **ip_permissions(perms, {}, {}),
                    },
                )

    def delete_firewall(self, driver: NodeDriver, firewall: Firewall) -> bool:
        if not self._groups(driver, firewall.tags, vpc_id=firewall.network_id):
            return False
        ec2_of(driver).ex_delete_security_group_by_id(firewall.id)
        return True


def permissions_of(group: EC2SecurityGroup, groups: Mapping[str, str]) -> list[Permission]:
    """A group's ingress rules as permissions; ``groups`` maps known group ids to sources."""
    out = []
    for rule in group.ingress_rules:
        raw = str(rule["protocol"])
        protocol = {"-1": "all", "6": "tcp", "17": "udp", "1": "icmp"}.get(raw, raw)
        low: int | None = None
        high: int | None = None
        if protocol in ("tcp", "udp"):
            low, high = int(rule["from_port"]), int(rule["to_port"])
        for cidr in rule["cidr_ips"]:
            out.append(Permission(protocol, low, high, cidr))
        for pair in rule["group_pairs"]:
            gid = str(pair.get("group_id"))
            out.append(Permission(protocol, low, high, groups.get(gid, f"{GROUP_SOURCE}{gid}")))
    return out


def ip_permissions(
    perms: Iterable[Permission],
    groups: Mapping[str, str],
    descriptions: Mapping[Permission, str],
) -> dict[str, str]:
    """``IpPermissions.N`` parameters, one entry per protocol and port range."""
    by_range: dict[tuple[str, int | None, int | None], list[Permission]] = defaultdict(list)
    for perm in sorted(perms):
        by_range[perm.protocol, perm.from_port, perm.to_port].append(perm)
    params: dict[str, str] = {}
    for n, ((protocol, low, high), items) in enumerate(sorted(by_range.items(), key=str), start=1):
        root = f"IpPermissions.{n}"
        params[f"{root}.IpProtocol"] = "-1" if protocol == "all" else protocol
        if protocol == "icmp":
            low = high = -1
        if low is not None and high is not None:
            params[f"{root}.FromPort"] = str(low)
            params[f"{root}.ToPort"] = str(high)
        cidrs = [p for p in items if not p.source.startswith((LB_SOURCE, GROUP_SOURCE))]
        refs = [p for p in items if p.source.startswith((LB_SOURCE, GROUP_SOURCE))]
        for m, perm in enumerate(cidrs, start=1):
            params[f"{root}.IpRanges.{m}.CidrIp"] = perm.source
            if descriptions.get(perm):
                params[f"{root}.IpRanges.{m}.Description"] = descriptions[perm]
        for m, perm in enumerate(refs, start=1):
            if perm.source.startswith(GROUP_SOURCE):
                group_id = perm.source[len(GROUP_SOURCE) :]
            else:
                group_id = groups.get(perm.source, "")
                if not group_id:
                    raise PermanentError(f"no security group for the source {perm.source}")
            # No description here: some EC2 implementations then match a later revoke only if
            # it repeats the description, which a read-back rule does not carry.
            params[f"{root}.Groups.{m}.GroupId"] = group_id
    return params
