"""The lab cloud's networks, subnets, firewalls and load balancers: rows in the lab's SQLite file.

They behave as a cloud's would where healer can tell: names are unique per kind, a network with
subnets, a subnet with machines and a firewall in use cannot be deleted (HTTP 400, as EC2's
``DependencyViolation``), every call fails during an injected outage, and a load balancer stops
listing a machine once it is terminated (as an ELB deregisters terminated instances). Nothing is
enforced on any packet: the lab only records what a cloud would be asked to build.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

from libcloud.compute.base import NodeDriver
from libcloud.compute.types import NodeState

from healer.cloud.machines import MachineRequest, tags_match
from healer.cloud.resources import (
    LAB,
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
)
from providers.infra_driver import InfraBackend, Placement
from providers.lab.driver import LabNodeDriver, _http_error

R = TypeVar("R", Network, Subnet, Firewall, LoadBalancer)

_PREFIX = {"network": "net", "subnet": "subnet", "firewall": "fw", "load-balancer": "lb"}


def _lab(driver: NodeDriver) -> LabNodeDriver:
    if not isinstance(driver, LabNodeDriver):
        raise TypeError(f"the lab infrastructure needs a LabNodeDriver, not {type(driver)}")
    return driver


class LabInfraBackend(InfraBackend):
    capabilities: Capabilities = LAB

    # -- rows ----------------------------------------------------------------------------------

    def _rows(self, driver: NodeDriver, kind: str, tags: Mapping[str, str]) -> list[sqlite3.Row]:
        with _lab(driver).api_transaction(write=False) as conn:
            rows = conn.execute(
                "SELECT * FROM infra WHERE kind = ? AND deleted_at IS NULL ORDER BY seq", (kind,)
            ).fetchall()
        return [r for r in rows if tags_match(json.loads(r["tags"]), tags)]

    def _insert(
        self,
        driver: NodeDriver,
        kind: str,
        name: str,
        tags: Mapping[str, str],
        spec: dict[str, Any],
    ) -> str:
        lab = _lab(driver)
        now = lab._clock()
        with lab.api_transaction(write=True) as conn:
            taken = conn.execute(
                "SELECT id FROM infra WHERE kind = ? AND name = ? AND deleted_at IS NULL",
                (kind, name),
            ).fetchone()
            if taken is not None:
                raise _http_error(400, f"lab cloud: a {kind} named {name!r} exists ({taken[0]})")
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM infra").fetchone()[0]
            rid = f"{_PREFIX[kind]}-{seq:05d}"
            conn.execute(
                "INSERT INTO infra (seq, id, kind, name, tags, spec, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (seq, rid, kind, name, json.dumps(dict(tags), sort_keys=True), "{}", now, now),
            )
            conn.execute(
                "UPDATE infra SET spec = ? WHERE id = ?",
                (json.dumps(spec | {"id": rid}, sort_keys=True), rid),
            )
        return rid

    def _update(self, driver: NodeDriver, rid: str, changes: Mapping[str, Any]) -> None:
        lab = _lab(driver)
        with lab.api_transaction(write=True) as conn:
            row = conn.execute(
                "SELECT spec FROM infra WHERE id = ? AND deleted_at IS NULL", (rid,)
            ).fetchone()
            if row is None:
                raise _http_error(404, f"lab cloud: no resource {rid!r}")
            spec = json.loads(row["spec"]) | dict(changes)
            conn.execute(
                "UPDATE infra SET spec = ?, updated_at = ? WHERE id = ?",
                (json.dumps(spec, sort_keys=True), lab._clock(), rid),
            )

    def _delete(self, driver: NodeDriver, rid: str, in_use: str | None = None) -> bool:
        lab = _lab(driver)
        with lab.api_transaction(write=True) as conn:
            row = conn.execute(
                "SELECT kind, spec FROM infra WHERE id = ? AND deleted_at IS NULL", (rid,)
            ).fetchone()
            if row is None:
                return False
            users = self._users(conn, rid, row["kind"])
            if users:
                raise _http_error(
                    400,
                    f"lab cloud: DependencyViolation: {row['kind']} {rid} is in use by "
                    f"{', '.join(users)}",
                )
            conn.execute(
                "UPDATE infra SET deleted_at = ?, updated_at = ? WHERE id = ?",
                (lab._clock(), lab._clock(), rid),
            )
        return True

    @staticmethod
    def _users(conn: sqlite3.Connection, rid: str, kind: str) -> list[str]:
        live = NodeState.TERMINATED.value
        if kind == "network":
            rows = conn.execute(
                "SELECT id, spec FROM infra WHERE kind != 'network' AND deleted_at IS NULL"
            ).fetchall()
            return [r["id"] for r in rows if json.loads(r["spec"]).get("network_id") == rid]
        if kind == "subnet":
            machines = conn.execute(
                "SELECT id FROM nodes_v WHERE subnet_id = ? AND state != ?", (rid, live)
            ).fetchall()
            lbs = conn.execute(
                "SELECT id, spec FROM infra WHERE kind = 'load-balancer' AND deleted_at IS NULL"
            ).fetchall()
            return [m["id"] for m in machines] + [
                r["id"] for r in lbs if json.loads(r["spec"]).get("subnet_id") == rid
            ]
        if kind == "firewall":
            machines = conn.execute(
                "SELECT id, firewall_ids FROM nodes_v WHERE firewall_ids IS NOT NULL AND state != ?",
                (live,),
            ).fetchall()
            return [m["id"] for m in machines if rid in json.loads(m["firewall_ids"])]
        return []

    # -- networks ------------------------------------------------------------------------------

    def list_networks(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[Network]:
        out = []
        for row in self._rows(driver, "network", tags):
            spec = json.loads(row["spec"])
            out.append(
                Network(
                    id=row["id"],
                    name=row["name"],
                    cidr=spec["cidr"],
                    tags=json.loads(row["tags"]),
                    internet_gateway=spec["internet_gateway"],
                )
            )
        return out

    def create_network(self, driver: NodeDriver, spec: NetworkSpec) -> Network:
        cidr = str(ipaddress.ip_network(spec.cidr))
        self._insert(
            driver,
            "network",
            spec.name,
            spec.tags,
            {"cidr": cidr, "internet_gateway": spec.internet_gateway},
        )
        return self._one(self.list_networks(driver, spec.tags), spec.name)

    def add_internet_gateway(self, driver: NodeDriver, network: Network) -> None:
        self._update(driver, network.id, {"internet_gateway": True})

    def delete_network(self, driver: NodeDriver, network: Network) -> bool:
        return self._delete(driver, network.id)

    # -- subnets -------------------------------------------------------------------------------

    def list_subnets(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[Subnet]:
        out = []
        for row in self._rows(driver, "subnet", tags):
            spec = json.loads(row["spec"])
            out.append(
                Subnet(
                    id=row["id"],
                    name=row["name"],
                    network_id=spec["network_id"],
                    cidr=spec["cidr"],
                    location=spec["location"],
                    tags=json.loads(row["tags"]),
                    public_ips=spec["public_ips"],
                )
            )
        return out

    def create_subnet(self, driver: NodeDriver, spec: SubnetSpec, network: Network) -> Subnet:
        cidr = ipaddress.ip_network(spec.cidr)
        if not cidr.subnet_of(ipaddress.ip_network(network.cidr)):  # type: ignore[arg-type]
            raise _http_error(
                400, f"lab cloud: subnet {spec.cidr} is not inside network {network.cidr}"
            )
        location = spec.location or "lab-a"
        if location not in {loc.id for loc in driver.list_locations()}:
            raise _http_error(400, f"lab cloud: unknown location {location!r}")
        self._insert(
            driver,
            "subnet",
            spec.name,
            spec.tags,
            {
                "network_id": network.id,
                "cidr": str(cidr),
                "location": location,
                "public_ips": spec.public_ips,
            },
        )
        return self._one(self.list_subnets(driver, spec.tags), spec.name)

    def set_subnet_public_ips(self, driver: NodeDriver, subnet: Subnet, public: bool) -> None:
        self._update(driver, subnet.id, {"public_ips": public})

    def delete_subnet(self, driver: NodeDriver, subnet: Subnet) -> bool:
        return self._delete(driver, subnet.id)

    # -- firewalls -----------------------------------------------------------------------------

    def list_firewalls(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[Firewall]:
        out = []
        for row in self._rows(driver, "firewall", tags):
            spec = json.loads(row["spec"])
            out.append(
                Firewall(
                    id=row["id"],
                    name=row["name"],
                    network_id=spec["network_id"],
                    permissions=frozenset(Permission(**p) for p in spec["permissions"]),
                    tags=json.loads(row["tags"]),
                )
            )
        return out

    def create_firewall(self, driver: NodeDriver, spec: FirewallSpec, network: Network) -> Firewall:
        self._insert(
            driver,
            "firewall",
            spec.name,
            spec.tags,
            {"network_id": network.id, "permissions": []},
        )
        return self._one(self.list_firewalls(driver, spec.tags), spec.name)

    def change_permissions(
        self,
        driver: NodeDriver,
        firewall: Firewall,
        spec: FirewallSpec,
        *,
        add: frozenset[Permission],
        remove: frozenset[Permission],
    ) -> None:
        # An "lb:<name>" source is recorded as given: the load balancer may be built after the
        # firewall that admits it.
        current = self._one(self.list_firewalls(driver, firewall.tags), firewall.name)
        perms = (current.permissions - remove) | add
        self._update(driver, firewall.id, {"permissions": [asdict(p) for p in sorted(perms)]})

    def delete_firewall(self, driver: NodeDriver, firewall: Firewall) -> bool:
        return self._delete(driver, firewall.id)

    # -- load balancers ------------------------------------------------------------------------

    def list_load_balancers(
        self, driver: NodeDriver, tags: Mapping[str, str]
    ) -> list[LoadBalancer]:
        rows = self._rows(driver, "load-balancer", tags)
        if not rows:
            return []
        with _lab(driver).api_transaction(write=False) as conn:
            live = {
                r["id"]
                for r in conn.execute(
                    "SELECT id FROM nodes WHERE state != ?", (NodeState.TERMINATED.value,)
                )
            }
        out = []
        for row in rows:
            spec = json.loads(row["spec"])
            out.append(
                LoadBalancer(
                    id=row["id"],
                    name=row["name"],
                    address=spec["address"],
                    port=spec["port"],
                    target_port=spec["target_port"],
                    health_check=HealthCheck(**spec["health_check"]),
                    allowed_sources=tuple(sorted(spec["allowed_sources"])),
                    internal=spec["internal"],
                    members=tuple(sorted(m for m in spec["members"] if m in live)),
                    tags=json.loads(row["tags"]),
                    extra={"subnet_id": spec["subnet_id"]},
                )
            )
        return out

    def create_load_balancer(
        self, driver: NodeDriver, spec: LoadBalancerSpec, network: Network, subnet: Subnet
    ) -> LoadBalancer:
        if subnet.network_id != network.id:
            raise _http_error(400, f"lab cloud: subnet {subnet.id} is not in {network.id}")
        hosts = ipaddress.ip_network(subnet.cidr).hosts()
        private = str(next(hosts))  # the first reserved host address
        rid = self._insert(
            driver,
            "load-balancer",
            spec.name,
            spec.tags,
            {
                "network_id": network.id,
                "subnet_id": subnet.id,
                "address": private,
                "port": spec.port,
                "target_port": spec.target_port,
                "internal": spec.internal,
                "health_check": asdict(spec.health_check),
                "allowed_sources": sorted(spec.allowed_sources),
                "members": [],
            },
        )
        if not spec.internal:
            seq = int(rid.rsplit("-", 1)[1])
            # 198.51.100.0/24 (TEST-NET-2): documentation addresses, never routed.
            self._update(driver, rid, {"address": f"198.51.100.{seq % 254 + 1}"})
        return self._one(self.list_load_balancers(driver, spec.tags), spec.name)

    def update_load_balancer(
        self, driver: NodeDriver, lb: LoadBalancer, spec: LoadBalancerSpec
    ) -> None:
        self._update(
            driver,
            lb.id,
            {
                "health_check": asdict(spec.health_check),
                "allowed_sources": sorted(spec.allowed_sources),
            },
        )

    def change_members(
        self, driver: NodeDriver, lb: LoadBalancer, *, add: Sequence[str], remove: Sequence[str]
    ) -> None:
        lab = _lab(driver)
        with lab.api_transaction(write=True) as conn:
            row = conn.execute(
                "SELECT spec FROM infra WHERE id = ? AND deleted_at IS NULL", (lb.id,)
            ).fetchone()
            if row is None:
                raise _http_error(404, f"lab cloud: no load balancer {lb.id!r}")
            spec = json.loads(row["spec"])
            for node_id in add:
                node = conn.execute(
                    "SELECT subnet_id, state FROM nodes_v WHERE id = ?", (node_id,)
                ).fetchone()
                if node is None or node["state"] == NodeState.TERMINATED.value:
                    raise _http_error(400, f"lab cloud: no live machine {node_id!r}")
                if node["subnet_id"] != spec["subnet_id"]:
                    raise _http_error(
                        400,
                        f"lab cloud: machine {node_id} is not in the load balancer's subnet "
                        f"{spec['subnet_id']}",
                    )
            members = (set(spec["members"]) - set(remove)) | set(add)
            spec["members"] = sorted(members)
            conn.execute(
                "UPDATE infra SET spec = ?, updated_at = ? WHERE id = ?",
                (json.dumps(spec, sort_keys=True), lab._clock(), lb.id),
            )

    def delete_load_balancer(self, driver: NodeDriver, lb: LoadBalancer) -> bool:
        return self._delete(driver, lb.id)

    # -- machines ------------------------------------------------------------------------------

    def placement_kwargs(
        self, driver: NodeDriver, placement: Placement, request: MachineRequest
    ) -> dict[str, Any]:
        return {
            "ex_subnet_id": placement.subnet.id,
            "ex_firewall_ids": sorted(f.id for f in placement.firewalls),
            "ex_public_ip": placement.subnet.public_ips,
        }

    @staticmethod
    def _one(items: Sequence[R], name: str) -> R:
        found = [i for i in items if i.name == name]
        if len(found) != 1:
            raise _http_error(500, f"lab cloud: expected one resource named {name!r}")
        return found[0]
