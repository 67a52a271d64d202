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

from healer.cloud import resources as res
from healer.cloud.diff import Diff
from healer.cloud.machines import MachineRequest, tags_match
from providers.lab import CAPABILITIES
from providers.lab.driver import LabNodeDriver, _http_error
from providers.reconciler import InfraBackend, Placement

R = TypeVar("R", res.Network, res.Subnet, res.Firewall, res.LoadBalancer)

_PREFIX = {"network": "net", "subnet": "subnet", "firewall": "fw", "load-balancer": "lb"}


def _lab(driver: NodeDriver) -> LabNodeDriver:
    if not isinstance(driver, LabNodeDriver):
        raise TypeError(f"the lab infrastructure needs a LabNodeDriver, not {type(driver)}")
    return driver


class LabInfraBackend(InfraBackend):
    capabilities: res.Capabilities = CAPABILITIES

    # -- rows (every kind of resource is one row of the infra table) ----------------------------------------------------------------------------------

    def _rows(self, driver: NodeDriver, kind: str, tags: Mapping[str, str]) -> list[sqlite3.Row]:
        with _lab(driver).api_transaction(write=False) as conn:
            rows = conn.execute(
                "SELECT * FROM infra WHERE kind = ? AND deleted_at IS NULL ORDER BY seq", (kind,)
            ).fetchall()
        return [r for r in rows if tags_match(json.loads(r["tags"]), tags)]

    def _records(
        self, driver: NodeDriver, kind: str, tags: Mapping[str, str]
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Each row as (its id, name and tags; the fields of its kind)."""
        return [
            (
                {"id": r["id"], "name": r["name"], "tags": json.loads(r["tags"])},
                json.loads(r["spec"]),
            )
            for r in self._rows(driver, kind, tags)
        ]

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

    @staticmethod
    def _live_row(conn: sqlite3.Connection, rid: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = conn.execute(
            "SELECT kind, spec FROM infra WHERE id = ? AND deleted_at IS NULL", (rid,)
        ).fetchone()
        return row

    def _update(self, driver: NodeDriver, rid: str, changes: Mapping[str, Any]) -> None:
        lab = _lab(driver)
        with lab.api_transaction(write=True) as conn:
            row = self._live_row(conn, rid)
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
            row = self._live_row(conn, rid)
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

    def _delete_resource(
        self,
        driver: NodeDriver,
        resource: res.Network | res.Subnet | res.Firewall | res.LoadBalancer,
        /,
    ) -> bool:
        return self._delete(driver, resource.id)

    delete_network = delete_subnet = delete_firewall = delete_load_balancer = _delete_resource

    # -- networks ------------------------------------------------------------------------------

    def list_networks(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[res.Network]:
        return [
            res.Network(**own, cidr=spec["cidr"], internet_gateway=spec["internet_gateway"])
            for own, spec in self._records(driver, "network", tags)
        ]

    def create_network(self, driver: NodeDriver, spec: res.NetworkSpec) -> res.Network:
        cidr = str(ipaddress.ip_network(spec.cidr))
        self._insert(
            driver,
            "network",
            spec.name,
            spec.tags,
            {"cidr": cidr, "internet_gateway": spec.internet_gateway},
        )
        return self._one(self.list_networks(driver, spec.tags), spec.name)

    def add_internet_gateway(self, driver: NodeDriver, network: res.Network) -> None:
        self._update(driver, network.id, {"internet_gateway": True})

    # -- subnets -------------------------------------------------------------------------------

    def list_subnets(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[res.Subnet]:
        return [
            res.Subnet(
                **own,
                **{k: spec[k] for k in ("network_id", "cidr", "location", "public_ips")},
            )
            for own, spec in self._records(driver, "subnet", tags)
        ]

    def create_subnet(
        self, driver: NodeDriver, spec: res.SubnetSpec, network: res.Network
    ) -> res.Subnet:
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

    def set_subnet_public_ips(self, driver: NodeDriver, subnet: res.Subnet, public: bool) -> None:
        self._update(driver, subnet.id, {"public_ips": public})

    # -- firewalls -----------------------------------------------------------------------------

    def list_firewalls(self, driver: NodeDriver, tags: Mapping[str, str]) -> list[res.Firewall]:
        return [
            res.Firewall(
                **own,
                network_id=spec["network_id"],
                permissions=frozenset(res.Permission(**p) for p in spec["permissions"]),
            )
            for own, spec in self._records(driver, "firewall", tags)
        ]

    def create_firewall(
        self, driver: NodeDriver, spec: res.FirewallSpec, network: res.Network
    ) -> res.Firewall:
        self._insert(
            driver,
            "firewall",
            spec.name,
            spec.tags,
            {"network_id": network.id, "permissions": []},
        )
        return self._one(self.list_firewalls(driver, spec.tags), spec.name)

    def change_permissions(
        self, driver: NodeDriver, firewall: res.Firewall, spec: res.FirewallSpec, diff: Diff
    ) -> None:
        add, remove = diff.add, diff.remove
        # An "lb:<name>" source is recorded as given: the load balancer may be built after the
        # firewall that admits it.
        current = self._one(self.list_firewalls(driver, firewall.tags), firewall.name)
        perms = (current.permissions - remove) | add
        self._update(driver, firewall.id, {"permissions": [asdict(p) for p in sorted(perms)]})

    # -- load balancers ------------------------------------------------------------------------

    def list_load_balancers(
        self, driver: NodeDriver, tags: Mapping[str, str]
    ) -> list[res.LoadBalancer]:
        records = self._records(driver, "load-balancer", tags)
        if not records:
            return []
        with _lab(driver).api_transaction(write=False) as conn:
            live = {
                r["id"]
                for r in conn.execute(
                    "SELECT id FROM nodes WHERE state != ?", (NodeState.TERMINATED.value,)
                )
            }
        return [
            res.LoadBalancer(
                **own,
                address=spec["address"],
                port=spec["port"],
                target_port=spec["target_port"],
                health_check=res.HealthCheck(**spec["health_check"]),
                allowed_sources=tuple(sorted(spec["allowed_sources"])),
                internal=spec["internal"],
                members=tuple(sorted(m for m in spec["members"] if m in live)),
                extra={"subnet_id": spec["subnet_id"]},
            )
            for own, spec in records
        ]

    def create_load_balancer(
        self,
        driver: NodeDriver,
        spec: res.LoadBalancerSpec,
        network: res.Network,
        subnet: res.Subnet,
    ) -> res.LoadBalancer:
        if subnet.network_id != network.id:
            raise _http_error(400, f"lab cloud: subnet {subnet.id} is not in {network.id}")
        hosts = ipaddress.ip_network(subnet.cidr).hosts()
        private = str(next(hosts))  # the first reserved host address
        # An LB spans the subnets of every zone (spec.subnets), as an ELB is enabled per zone.
        owned = {k: v for k, v in subnet.tags.items() if k != res.TAG_TIER}
        by_name = {s.name: s.id for s in self.list_subnets(driver, owned)}
        spans = [subnet.id, *(by_name[n] for n in spec.subnets if n in by_name)]
        rid = self._insert(
            driver,
            "load-balancer",
            spec.name,
            spec.tags,
            {
                "network_id": network.id,
                "subnet_id": subnet.id,
                "subnet_ids": sorted(set(spans)),
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
        self, driver: NodeDriver, lb: res.LoadBalancer, spec: res.LoadBalancerSpec
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
        self, driver: NodeDriver, lb: res.LoadBalancer, *, add: Sequence[str], remove: Sequence[str]
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
                spans = spec.get("subnet_ids", [spec["subnet_id"]])
                if node["subnet_id"] not in spans:
                    raise _http_error(
                        400,
                        f"lab cloud: machine {node_id} is not in the load balancer's subnets "
                        f"{', '.join(spans)}",
                    )
            members = (set(spec["members"]) - set(remove)) | set(add)
            spec["members"] = sorted(members)
            conn.execute(
                "UPDATE infra SET spec = ?, updated_at = ? WHERE id = ?",
                (json.dumps(spec, sort_keys=True), lab._clock(), lb.id),
            )

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


def make_backend(key: str, secret: str | None, keywords: Mapping[str, Any]) -> LabInfraBackend:
    """The backend of the registry row; it needs nothing but the provider's own driver."""
    return LabInfraBackend()
