"""EC2 infrastructure through libcloud: a VPC, a subnet, security groups and a classic ELB.

What gets built for a cluster (names from :mod:`healer.provisioning.infra`):

- the network is a VPC (``CreateVpc``) with, when a public LB or public addresses need one, an
  internet gateway attached and a default route in the VPC's main route table;
- the subnet is one subnet in one availability zone; ``MapPublicIpOnLaunch`` stays false unless
  ``network.publicIps`` is set, so machines have private addresses only;
- the firewall is one security group for the machines. A source ``lb:<name>`` becomes a rule naming
  the load balancer's own security group (``<name>-lb``, which admits the API clients on the LB
  port), so 6443 is open to the ELB and nothing else;
- the load balancer is a classic ELB (libcloud's ``ElasticLBDriver``; libcloud has no NLB driver)
  in the subnet, with a TCP listener (TLS passes through to the apiserver, client certificates
  included), a health check (``ConfigureHealthCheck``) and the control-plane instances registered.

Every resource is tagged when it is created (``TagSpecification`` on the create call, ``Tags`` on
``CreateLoadBalancer``), so nothing healer makes is ever visible untagged. Requests libcloud has no
method for, or sends in a form only some EC2 endpoints accept (``ex_create_tags`` numbers its
lists from 0), are sent through the same libcloud connection (signing, retries, XML parsing and
error mapping are libcloud's), built here with 1-based lists as the EC2 API documents them.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from xml.etree.ElementTree import Element

from libcloud.compute.base import NodeDriver
from libcloud.compute.drivers.ec2 import NAMESPACE, EC2NetworkSubnet, EC2SecurityGroup
from libcloud.loadbalancer.base import Driver as LBDriver
from libcloud.loadbalancer.drivers.elb import HOST as ELB_HOST
from libcloud.loadbalancer.drivers.elb import NS as ELB_NS
from libcloud.loadbalancer.drivers.elb import ROOT as ELB_ROOT
from libcloud.loadbalancer.drivers.elb import ElasticLBDriver
from libcloud.utils import xml as _xml

from healer.cloud.machines import MachineRequest, tags_match
from healer.cloud.resources import (
    EC2,
    GROUP_SOURCE,
    LB_SOURCE,
    TAG_RESOURCE,
    Capabilities,
    Firewall,
    FirewallSpec,
    HealthCheck,
    LoadBalancer,
    LoadBalancerSpec,
    Network,
    NetworkSpec,
    Permission,
    Subnet,
    SubnetSpec,
    lb_source,
)
from healer.errors import PermanentError
from healer.model import TAG_CLUSTER, TAG_MANAGED
from providers.infra_driver import InfraBackend, Placement

TAG_LB = "healer.io/load-balancer"  # on an LB's security group: which LB it belongs to
LB_FIREWALL = "load-balancer-firewall"  # TAG_RESOURCE of an LB's security group


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


# libcloud's XML helpers are untyped; these names give them the types they have.
findall: Callable[..., list[Element]] = _xml.findall
findtext: Callable[..., str | None] = _xml.findtext
fixxpath: Callable[..., str] = _xml.fixxpath
_Subnet: Callable[..., Any] = EC2NetworkSubnet


def _ec2(driver: NodeDriver) -> Any:
    # The EC2 driver's ex_* methods are not on the NodeDriver base class.
    return driver


def _text(element: Element, xpath: str, namespace: str = NAMESPACE) -> str | None:
    return findtext(element=element, xpath=xpath, namespace=namespace)


class Ec2InfraBackend(InfraBackend):
    capabilities: Capabilities = EC2

    def __init__(self, make_elb: Callable[[], ElasticLBDriver]) -> None:
        self._make_elb = make_elb
        # libcloud connections are not safe to share between threads: one ELB driver per worker.
        self._local = threading.local()
        self._made: list[ElasticLBDriver] = []
        self._made_lock = threading.Lock()

    # -- raw calls -----------------------------------------------------------------------------

    def _call(self, driver: NodeDriver, params: Mapping[str, Any]) -> Element:
        ec2 = _ec2(driver)
        return ec2.connection.request(ec2.path, params=dict(params)).object  # type: ignore[no-any-return]

    def _elb(self) -> ElasticLBDriver:
        elb = getattr(self._local, "elb", None)
        if elb is None:
            elb = self._make_elb()
            self._local.elb = elb
            with self._made_lock:
                self._made.append(elb)
        return elb

    def close(self) -> None:
        with self._made_lock:
            made, self._made = self._made, []
        for elb in made:
            # libcloud has no close(); its HTTP connection holds a requests Session.
            session = getattr(getattr(elb.connection, "connection", None), "session", None)
            if session is not None:
                session.close()

    def _elb_call(self, params: Mapping[str, Any]) -> Element:
        return self._elb().connection.request(ELB_ROOT, params=dict(params)).object  # type: ignore[no-untyped-call,no-any-return]

    @staticmethod
    def _tag_spec(resource_type: str, name: str, tags: Mapping[str, str]) -> dict[str, str]:
        params = {"TagSpecification.1.ResourceType": resource_type}
        for n, (key, value) in enumerate({"Name": name, **tags}.items(), start=1):
            params[f"TagSpecification.1.Tag.{n}.Key"] = key
            params[f"TagSpecification.1.Tag.{n}.Value"] = value
        return params

    @staticmethod
    def _tag_filters(driver: NodeDriver, tags: Mapping[str, str]) -> dict[str, str]:
        return _ec2(driver)._build_filters({f"tag:{k}": v for k, v in tags.items()})  # type: ignore[no-any-return]

    # -- networks ------------------------------------------------------------------------------

    def list_networks(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[Network]:
        ec2 = _ec2(driver)
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
        ec2 = _ec2(driver)
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
        ec2 = _ec2(driver)
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
        ec2.ex_attach_internet_gateway(gateway, _Ref(network.id))
        tables = ec2.ex_list_route_tables(
            filters={"vpc-id": network.id, "association.main": "true"}
        )
        if not tables:
            raise PermanentError(f"VPC {network.id} has no main route table")
        ec2.ex_create_route(tables[0], "0.0.0.0/0", internet_gateway=gateway)

    def delete_network(self, driver: NodeDriver, network: Network) -> bool:
        ec2 = _ec2(driver)
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
            ec2.ex_detach_internet_gateway(gateway, _Ref(network.id))
            ec2.ex_delete_internet_gateway(gateway)
        # A failure raises; the answer's <return> element is not sent by every EC2 endpoint.
        ec2.ex_delete_network(_Ref(network.id))
        return True

    # -- subnets -------------------------------------------------------------------------------

    def list_subnets(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[Subnet]:
        ec2 = _ec2(driver)
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
                    public_ips=_text(element, "mapPublicIpOnLaunch") == "true",
                )
            )
        return out

    def create_subnet(self, driver: NodeDriver, spec: SubnetSpec, network: Network) -> Subnet:
        if not spec.location:
            raise PermanentError(
                f"subnet {spec.name}: EC2 subnets live in one availability zone; set "
                "network.location (e.g. us-east-1a)"
            )
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
        subnet_id = str(_text(answer, "subnet/subnetId"))
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
        ec2 = _ec2(driver)
        if not [s for s in self.list_subnets(driver, subnet.tags) if s.id == subnet.id]:
            return False
        ec2.ex_delete_subnet(_Ref(subnet.id))
        return True

    # -- firewalls (security groups) ------------------------------------------------------------

    def _groups(
        self, driver: NodeDriver, tags: Mapping[str, str], *, vpc_id: str | None = None
    ) -> list[EC2SecurityGroup]:
        filters: dict[str, Any] = {f"tag:{k}": v for k, v in tags.items()}
        if vpc_id is not None:
            filters["vpc-id"] = vpc_id
        groups = _ec2(driver).ex_get_security_groups(filters=filters)
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
                    permissions=frozenset(_permissions(group, lb_maps[cluster, vpc_id])),
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
        return Firewall(
            id=group_id,
            name=spec.name,
            network_id=network.id,
            permissions=frozenset(),
            tags=dict(spec.tags),
        )

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
        group_id = _text(answer, "groupId")
        if not group_id:
            raise PermanentError(f"EC2 answered CreateSecurityGroup({name}) without a group id")
        return group_id

    def change_permissions(
        self,
        driver: NodeDriver,
        firewall: Firewall,
        spec: FirewallSpec,
        *,
        add: frozenset[Permission],
        remove: frozenset[Permission],
    ) -> None:
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
                    **_ip_permissions(remove, groups, {}),
                },
            )
        if add:
            self._call(
                driver,
                {
                    "Action": "AuthorizeSecurityGroupIngress",
                    "GroupId": firewall.id,
                    **_ip_permissions(add, groups, descriptions),
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
        for other in _ec2(driver).ex_get_security_groups(filters={"vpc-id": vpc_id}):
            perms = [
                p
                for p in _permissions(other, {group_id: f"{GROUP_SOURCE}{group_id}"})
                if p.source == f"{GROUP_SOURCE}{group_id}"
            ]
            if perms:
                self._call(
                    driver,
                    {
                        "Action": "RevokeSecurityGroupIngress",
                        "GroupId": other.id,
                        **_ip_permissions(perms, {}, {}),
                    },
                )

    def delete_firewall(self, driver: NodeDriver, firewall: Firewall) -> bool:
        if not self._groups(driver, firewall.tags, vpc_id=firewall.network_id):
            return False
        _ec2(driver).ex_delete_security_group_by_id(firewall.id)
        return True

    # -- load balancers (classic ELB) -----------------------------------------------------------

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
            marker = _text(answer, "DescribeLoadBalancersResult/NextMarker", ELB_NS)
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
                name = str(_text(desc, "LoadBalancerName", ELB_NS))
                out[name] = {
                    str(_text(t, "Key", ELB_NS)): str(_text(t, "Value", ELB_NS) or "")
                    for t in findall(element=desc, xpath="Tags/member", namespace=ELB_NS)
                }
        return out

    def list_load_balancers(
        self, driver: NodeDriver, tags: Mapping[str, str]
    ) -> list[LoadBalancer]:
        elbs = self._describe_elbs()
        if not elbs:
            return []
        all_tags = self._elb_tags([str(_text(e, "LoadBalancerName", ELB_NS)) for e in elbs])
        out = []
        for element in elbs:
            name = str(_text(element, "LoadBalancerName", ELB_NS))
            elb_tags = all_tags.get(name, {})
            if not tags_match(elb_tags, tags):
                continue
            out.append(self._to_lb(driver, element, elb_tags))
        return out

    def _to_lb(self, driver: NodeDriver, element: Element, tags: Mapping[str, str]) -> LoadBalancer:
        name = str(_text(element, "LoadBalancerName", ELB_NS))
        listener = _first(element, "ListenerDescriptions/member/Listener")
        port = int(_text(listener, "LoadBalancerPort", ELB_NS) or 0) if listener is not None else 0
        target = int(_text(listener, "InstancePort", ELB_NS) or 0) if listener is not None else 0
        health = None
        hc = _first(element, "HealthCheck")
        if hc is not None and _text(hc, "Target", ELB_NS):
            health = _parse_target(
                str(_text(hc, "Target", ELB_NS)),
                interval=int(_text(hc, "Interval", ELB_NS) or 0),
                timeout=int(_text(hc, "Timeout", ELB_NS) or 0),
                healthy=int(_text(hc, "HealthyThreshold", ELB_NS) or 0),
                unhealthy=int(_text(hc, "UnhealthyThreshold", ELB_NS) or 0),
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
            for group in _ec2(driver).ex_get_security_groups(group_ids=group_ids):
                if (group.extra.get("tags") or {}).get(TAG_LB) != name:
                    continue
                allowed |= {
                    p.source
                    for p in _permissions(group, {})
                    if p.protocol == "tcp" and p.from_port == port and p.to_port == port
                }
        return LoadBalancer(
            id=name,
            name=name,
            address=_text(element, "DNSName", ELB_NS),
            port=port,
            target_port=target,
            health_check=health,
            allowed_sources=tuple(sorted(allowed)),
            internal=_text(element, "Scheme", ELB_NS) == "internal",
            members=tuple(members),
            tags=dict(tags),
            extra={
                "security_groups": group_ids,
                "subnets": subnets,
                "vpc_id": _text(element, "VPCId", ELB_NS),
            },
        )

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
            "Subnets.member.1": subnet.id,
            "SecurityGroups.member.1": group_id,
        }
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
        (group,) = _ec2(driver).ex_get_security_groups(group_ids=[group_id])
        have = frozenset(_permissions(group, {}))
        want = frozenset(Permission("tcp", spec.port, spec.port, s) for s in spec.allowed_sources)
        if have - want:
            self._call(
                driver,
                {
                    "Action": "RevokeSecurityGroupIngress",
                    "GroupId": group_id,
                    **_ip_permissions(have - want, {}, {}),
                },
            )
        if want - have:
            self._call(
                driver,
                {
                    "Action": "AuthorizeSecurityGroupIngress",
                    "GroupId": group_id,
                    **_ip_permissions(
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
        names = {str(_text(e, "LoadBalancerName", ELB_NS)) for e in self._describe_elbs()}
        existed = lb.name in names
        if existed:
            self._elb_call({"Action": "DeleteLoadBalancer", "LoadBalancerName": lb.name})
        vpc_id = lb.extra.get("vpc_id")
        if vpc_id:
            cluster = lb.tags[TAG_CLUSTER]
            for group_id, source in self._lb_groups(driver, cluster, str(vpc_id)).items():
                if source == lb_source(lb.name):
                    self._revoke_references(driver, group_id, str(vpc_id))
                    _ec2(driver).ex_delete_security_group_by_id(group_id)
        return existed

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


class _Ref:
    """The one attribute libcloud's ex_* methods read from a VPC object."""

    def __init__(self, rid: str) -> None:
        self.id = rid


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


def _permissions(group: EC2SecurityGroup, groups: Mapping[str, str]) -> list[Permission]:
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


def _ip_permissions(
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
