"""EC2 load balancers: a classic ELB (libcloud's ``ElasticLBDriver``; libcloud has no NLB driver)
in the subnet, with a TCP listener (TLS passes through to the apiserver, client certificates
included), a health check (``ConfigureHealthCheck``), its own security group admitting the API
clients, and the control-plane instances registered. It is tagged on ``CreateLoadBalancer``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from xml.etree.ElementTree import Element

from libcloud.compute.base import NodeDriver
from libcloud.loadbalancer.base import Driver as LBDriver
from libcloud.loadbalancer.drivers.elb import HOST as ELB_HOST
from libcloud.loadbalancer.drivers.elb import NS as ELB_NS
from libcloud.loadbalancer.drivers.elb import ElasticLBDriver

from healer.cloud.machines import tags_match
from healer.cloud.resources import (
    TAG_RESOURCE,
    HealthCheck,
    LoadBalancer,
    LoadBalancerSpec,
    Network,
    Permission,
    Subnet,
    lb_source,
)
from healer.errors import PermanentError
from healer.model import TAG_CLUSTER, TAG_MANAGED
from providers.ec2.api import ec2_of, findall, text_of
from providers.ec2.security_groups import (
    TAG_LB,
    ip_permissions,
    permissions_of,
)
from providers.ec2.vpc import Vpcs


class Ec2ElbDriver(ElasticLBDriver):
    """libcloud's ELB driver, with the endpoint settings its constructor does not take."""

    def __init__(
        self,
        key: str,
        secret: str,
        region: str,
        token: str | None = None,
        host: str | None = None,
        port: int | None = None,
        secure: bool = True,
        **kwargs: Any,
    ) -> None:
        self.token = token
        self.region = region
        self.region_name = region
        LBDriver.__init__(  # type: ignore[no-untyped-call]
            self,
            key,
            secret,
            secure=secure,
            host=host or ELB_HOST % region,
            port=port,
            region=region,
            token=token,
            **kwargs,
        )


class ClassicElbs(Vpcs):  # the subnets it spans are looked up by name
    def _describe_elbs(self) -> list[Element]:
        out: list[Element] = []
        marker: str | None = None
        while True:
            params = {"Action": "DescribeLoadBalancers"}
            if marker:
                params["Marker"] = marker
            answer = self._elb_call(params)
            out.extend(
                findall(
                    element=answer,
                    xpath="DescribeLoadBalancersResult/LoadBalancerDescriptions/member",
                    namespace=ELB_NS,
                )
            )
            marker = text_of(answer, "DescribeLoadBalancersResult/NextMarker", ELB_NS)
            if not marker:
                return out

    def _elb_tags(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for start in range(0, len(names), 20):  # DescribeTags takes at most 20 names
            params = {"Action": "DescribeTags"}
            for n, name in enumerate(names[start : start + 20], start=1):
                params[f"LoadBalancerNames.member.{n}"] = name
            answer = self._elb_call(params)
            for desc in findall(
                element=answer,
                xpath="DescribeTagsResult/TagDescriptions/member",
                namespace=ELB_NS,
            ):
                name = str(text_of(desc, "LoadBalancerName", ELB_NS))
                out[name] = {
                    str(text_of(t, "Key", ELB_NS)): str(text_of(t, "Value", ELB_NS) or "")
                    for t in findall(element=desc, xpath="Tags/member", namespace=ELB_NS)
                }
        return out

    def list_load_balancers(
        self, driver: NodeDriver, tags: Mapping[str, str]
    ) -> list[LoadBalancer]:
        elbs = self._describe_elbs()
        if not elbs:
            return []
        all_tags = self._elb_tags([str(text_of(e, "LoadBalancerName", ELB_NS)) for e in elbs])
        out = []
        for element in elbs:
            name = str(text_of(element, "LoadBalancerName", ELB_NS))
            elb_tags = all_tags.get(name, {})
            if not tags_match(elb_tags, tags):
                continue
            out.append(self._to_lb(driver, element, elb_tags))
        return out

    def _to_lb(self, driver: NodeDriver, element: Element, tags: Mapping[str, str]) -> LoadBalancer:
        name = str(text_of(element, "LoadBalancerName", ELB_NS))
        listener = _first(element, "ListenerDescriptions/member/Listener")
        port = (
            int(text_of(listener, "LoadBalancerPort", ELB_NS) or 0) if listener is not None else 0
        )
        target = int(text_of(listener, "InstancePort", ELB_NS) or 0) if listener is not None else 0
        health = None
        hc = _first(element, "HealthCheck")
        if hc is not None and text_of(hc, "Target", ELB_NS):
            health = _parse_target(
                str(text_of(hc, "Target", ELB_NS)),
                interval=int(text_of(hc, "Interval", ELB_NS) or 0),
                timeout=int(text_of(hc, "Timeout", ELB_NS) or 0),
                healthy=int(text_of(hc, "HealthyThreshold", ELB_NS) or 0),
                unhealthy=int(text_of(hc, "UnhealthyThreshold", ELB_NS) or 0),
            )
        members = sorted(
            str(m.text)
            for m in findall(element=element, xpath="Instances/member/InstanceId", namespace=ELB_NS)
        )
        group_ids = [
            str(g.text)
            for g in findall(element=element, xpath="SecurityGroups/member", namespace=ELB_NS)
        ]
        subnets = [
            str(s.text) for s in findall(element=element, xpath="Subnets/member", namespace=ELB_NS)
        ]
        allowed: set[str] = set()
        if group_ids:
            for group in ec2_of(driver).ex_get_security_groups(group_ids=group_ids):
                if (group.extra.get("tags") or {}).get(TAG_LB) != name:
                    continue
                allowed |= {
                    p.source
                    for p in permissions_of(group, {})
                    if p.protocol == "tcp" and p.from_port == port and p.to_port == port
                }
        return LoadBalancer(
            id=name,
            name=name,
            address=text_of(element, "DNSName", ELB_NS),
            port=port,
            target_port=target,
            health_check=health,
            allowed_sources=tuple(sorted(allowed)),
            internal=text_of(element, "Scheme", ELB_NS) == "internal",
            members=tuple(members),
            tags=dict(tags),
            extra={
                "security_groups": group_ids,
                "subnets": subnets,
                "vpc_id": text_of(element, "VPCId", ELB_NS),
            },
            subnets=tuple(sorted(self._names_of_subnets(driver, tags, subnets))),
        )

    def _subnet_ids(self, driver: NodeDriver, cluster: str) -> dict[str, str]:
        """The cluster's subnets: name -> id."""
        owned = {TAG_MANAGED: "true", TAG_CLUSTER: cluster, TAG_RESOURCE: "subnet"}
        return {s.name: s.id for s in self.list_subnets(driver, owned)}

    def _names_of_subnets(
        self, driver: NodeDriver, tags: Mapping[str, str], ids: Sequence[str]
    ) -> list[str]:
        names = {v: k for k, v in self._subnet_ids(driver, tags.get(TAG_CLUSTER, "")).items()}
        return [names.get(i, i) for i in ids]

    def create_load_balancer(
        self, driver: NodeDriver, spec: LoadBalancerSpec, network: Network, subnet: Subnet
    ) -> LoadBalancer:
        group_id = self._ensure_lb_group(driver, spec.name, network.id, spec.tags[TAG_CLUSTER])
        self._set_lb_clients(driver, group_id, spec)
        params: dict[str, str] = {
            "Action": "CreateLoadBalancer",
            "LoadBalancerName": spec.name,
            "Listeners.member.1.Protocol": "TCP",
            "Listeners.member.1.LoadBalancerPort": str(spec.port),
            "Listeners.member.1.InstanceProtocol": "TCP",
            "Listeners.member.1.InstancePort": str(spec.target_port),
            "SecurityGroups.member.1": group_id,
        }
        for n, subnet_id in enumerate(self._lb_subnets(driver, spec, subnet), start=1):
            params[f"Subnets.member.{n}"] = subnet_id
        if spec.internal:
            params["Scheme"] = "internal"
        for n, (key, value) in enumerate(spec.tags.items(), start=1):
            params[f"Tags.member.{n}.Key"] = key
            params[f"Tags.member.{n}.Value"] = value
        self._elb_call(params)
        self._configure_health_check(spec.name, spec.health_check)
        found = [lb for lb in self.list_load_balancers(driver, spec.tags) if lb.name == spec.name]
        if not found:
            raise PermanentError(f"ELB does not list the new load balancer {spec.name}")
        return found[0]

    def _lb_subnets(self, driver: NodeDriver, spec: LoadBalancerSpec, subnet: Subnet) -> list[str]:
        """Ids of the subnets the ELB spans: one per zone (``spec.subnets``), ``subnet`` first."""
        if len(spec.subnets) <= 1:
            return [subnet.id]
        by_name = self._subnet_ids(driver, spec.tags[TAG_CLUSTER])
        missing = [n for n in spec.subnets if n not in by_name]
        if missing:
            raise PermanentError(f"load balancer {spec.name}: no subnet {', '.join(missing)}")
        return [by_name[n] for n in spec.subnets]

    def _configure_health_check(self, name: str, check: HealthCheck) -> None:
        self._elb_call(
            {
                "Action": "ConfigureHealthCheck",
                "LoadBalancerName": name,
                "HealthCheck.Target": _target(check),
                "HealthCheck.Interval": str(check.interval),
                "HealthCheck.Timeout": str(check.timeout),
                "HealthCheck.HealthyThreshold": str(check.healthy_threshold),
                "HealthCheck.UnhealthyThreshold": str(check.unhealthy_threshold),
            }
        )

    def _set_lb_clients(self, driver: NodeDriver, group_id: str, spec: LoadBalancerSpec) -> None:
        (group,) = ec2_of(driver).ex_get_security_groups(group_ids=[group_id])
        have = frozenset(permissions_of(group, {}))
        want = frozenset(Permission("tcp", spec.port, spec.port, s) for s in spec.allowed_sources)
        if have - want:
            self._call(
                driver,
                {
                    "Action": "RevokeSecurityGroupIngress",
                    "GroupId": group_id,
                    **ip_permissions(have - want, {}, {}),
                },
            )
        if want - have:
            self._call(
                driver,
                {
                    "Action": "AuthorizeSecurityGroupIngress",
                    "GroupId": group_id,
                    **ip_permissions(
                        want - have,
                        {},
                        dict.fromkeys(want - have, f"clients of {spec.name}"),
                    ),
                },
            )

    def update_load_balancer(
        self, driver: NodeDriver, lb: LoadBalancer, spec: LoadBalancerSpec
    ) -> None:
        if lb.health_check != spec.health_check:
            self._configure_health_check(lb.name, spec.health_check)
        vpc_id = str(lb.extra.get("vpc_id"))
        group_id = self._ensure_lb_group(driver, spec.name, vpc_id, spec.tags[TAG_CLUSTER])
        if group_id not in lb.extra.get("security_groups", []):
            params = {"Action": "ApplySecurityGroupsToLoadBalancer", "LoadBalancerName": lb.name}
            params["SecurityGroups.member.1"] = group_id
            self._elb_call(params)
        self._set_lb_clients(driver, group_id, spec)
        wanted = sorted(spec.subnets or (spec.subnet,))
        if lb.subnets and list(lb.subnets) != wanted:
            self._move(driver, lb, spec, wanted)

    def _move(
        self, driver: NodeDriver, lb: LoadBalancer, spec: LoadBalancerSpec, wanted: list[str]
    ) -> None:
        """Span ``wanted`` instead of ``lb.subnets``, keeping the ELB (and so its DNS name, the
        cluster's API address): the new subnets first, then the old ones off (an ELB always
        needs one)."""
        by_name = self._subnet_ids(driver, spec.tags[TAG_CLUSTER])
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise PermanentError(f"load balancer {lb.name}: no subnet {', '.join(missing)}")
        base = {"LoadBalancerName": lb.name}
        add = [by_name[n] for n in wanted if n not in lb.subnets]
        drop = [by_name.get(n, n) for n in lb.subnets if n not in wanted]
        for action, ids in (
            ("AttachLoadBalancerToSubnets", add),
            ("DetachLoadBalancerFromSubnets", drop),
        ):
            if ids:
                members = {f"Subnets.member.{n}": i for n, i in enumerate(ids, start=1)}
                self._elb_call({"Action": action, **base, **members})

    def change_members(
        self, driver: NodeDriver, lb: LoadBalancer, *, add: Sequence[str], remove: Sequence[str]
    ) -> None:
        for action, ids in (
            ("RegisterInstancesWithLoadBalancer", add),
            ("DeregisterInstancesFromLoadBalancer", remove),
        ):
            if not ids:
                continue
            params = {"Action": action, "LoadBalancerName": lb.name}
            for n, instance_id in enumerate(ids, start=1):
                params[f"Instances.member.{n}.InstanceId"] = instance_id
            self._elb_call(params)

    def delete_load_balancer(self, driver: NodeDriver, lb: LoadBalancer) -> bool:
        names = {str(text_of(e, "LoadBalancerName", ELB_NS)) for e in self._describe_elbs()}
        existed = lb.name in names
        if existed:
            self._elb_call({"Action": "DeleteLoadBalancer", "LoadBalancerName": lb.name})
        vpc_id = lb.extra.get("vpc_id")
        if vpc_id:
            cluster = lb.tags[TAG_CLUSTER]
            for group_id, source in self._lb_groups(driver, cluster, str(vpc_id)).items():
                if source == lb_source(lb.name):
                    self._revoke_references(driver, group_id, str(vpc_id))
                    ec2_of(driver).ex_delete_security_group_by_id(group_id)
        return existed


def _first(element: Element, xpath: str) -> Element | None:
    found = findall(element=element, xpath=xpath, namespace=ELB_NS)
    return found[0] if found else None


def _target(check: HealthCheck) -> str:
    if check.protocol == "tcp":
        return f"TCP:{check.port}"
    return f"{check.protocol.upper()}:{check.port}{check.path or '/'}"


def _parse_target(
    target: str, *, interval: int, timeout: int, healthy: int, unhealthy: int
) -> HealthCheck:
    protocol, _, rest = target.partition(":")
    port, slash, path = rest.partition("/")
    return HealthCheck(
        protocol=protocol.lower(),
        port=int(port),
        path=f"/{path}" if slash else "",
        interval=interval,
        timeout=timeout,
        healthy_threshold=healthy,
        unhealthy_threshold=unhealthy,
    )
