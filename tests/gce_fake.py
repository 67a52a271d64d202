"""A fake Compute Engine API for tests, behind requests-mock: libcloud's real GCE driver talks to it.

It answers from a small in-memory store seeded with libcloud's own recorded GCE responses
(``libcloud/test/compute/fixtures/gce``: the zone, region, machine type and disk type of
``us-central1-a``, copied under the names of three zones of one region), and keeps what the
driver and healer's raw requests create (networks, subnetworks, firewalls, health checks, target
pools, backend services, instance groups and their members, routers with Cloud NAT, forwarding
rules, instances) the way the API does: an insert answers with a
finished operation, a get of a missing resource is a 404 ``notFound``, aggregated lists group by
zone or region, and deleting a network that still has subnetworks (or a subnetwork with
instances) is refused with ``resourceInUseByAnotherResource``.

Authentication is a service account whose RSA key is generated here (with cryptography); the
OAuth token endpoint is mocked too. Every request the driver sends is recorded (method, path,
JSON body) so tests can assert on what reached "GCE".
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import libcloud
import requests_mock
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from healer.config import SecretRef
from providers.libcloud_generic import LibcloudProvider

PROJECT = "healer-test"
ZONE = "us-central1-a"
ZONES = (ZONE, "us-central1-b", "us-central1-c")
REGION = "us-central1"
API = "https://www.googleapis.com/compute/v1/projects/"
BASE = f"{API}{PROJECT}/"
TOKEN_URL = "https://accounts.google.com/o/oauth2/token"
SA_EMAIL = f"healer@{PROJECT}.iam.gserviceaccount.com"
ACCESS_TOKEN = "ya29.healer-test-token-value"
FIXTURES = Path(libcloud.__file__).parent / "test" / "compute" / "fixtures" / "gce"
_URL = re.compile(r"https://www\.googleapis\.com/compute/v1/projects/.*")
_KINDS = {
    "networks": "compute#network",
    "subnetworks": "compute#subnetwork",
    "firewalls": "compute#firewall",
    "httpHealthChecks": "compute#httpHealthCheck",
    "targetPools": "compute#targetPool",
    "forwardingRules": "compute#forwardingRule",
    "healthChecks": "compute#healthCheck",
    "backendServices": "compute#backendService",
    "instanceGroups": "compute#instanceGroup",
    "routers": "compute#router",
    "instances": "compute#instance",
    "images": "compute#image",
}


def _fixture(name: str) -> dict[str, Any]:
    text = (FIXTURES / name).read_text().replace("project_name", PROJECT)
    return json.loads(text)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class GceCall:
    method: str
    path: str  # relative to the project ("global/firewalls", "zones/us-central1-a/instances")
    body: Any


class GceFake:
    def __init__(
        self,
        *,
        region: str = REGION,
        zones: tuple[str, ...] = ZONES,
        machine_types: tuple[str, ...] = ("n1-standard-1",),
    ) -> None:
        self.store: dict[str, dict[str, Any]] = {}
        self.calls: list[GceCall] = []
        self._ids = itertools.count(1000)
        self._ips = itertools.count(10)
        # The recorded region, zone, machine type and disk type of us-central1(-a), renamed.
        recorded = _fixture("regions_us-central1.json")
        recorded.update(
            name=region,
            selfLink=f"{BASE}regions/{region}",
            zones=[f"{BASE}zones/{z}" for z in zones],
        )
        self.store[f"regions/{region}"] = recorded
        for n, name in enumerate(zones):
            zone = _fixture("zones_us-central1-a.json")
            zone.pop("maintenanceWindows", None)
            zone.update(
                name=name,
                id=str(2000 + n),
                selfLink=f"{BASE}zones/{name}",
                region=f"{BASE}regions/{region}",
            )
            self.store[f"zones/{name}"] = zone
            for kind in machine_types:
                machine_type = _fixture("zones_us-central1-a_machineTypes_n1-standard-1.json")
                machine_type.update(
                    name=kind, zone=name, selfLink=f"{BASE}zones/{name}/machineTypes/{kind}"
                )
                self.store[f"zones/{name}/machineTypes/{kind}"] = machine_type
            disk_type = _fixture("zones_us-central1-a_diskTypes_pd_standard.json")
            disk_type["selfLink"] = f"{BASE}zones/{name}/diskTypes/pd-standard"
            disk_type["zone"] = f"{BASE}zones/{name}"
            self.store[f"zones/{name}/diskTypes/pd-standard"] = disk_type
        image = _fixture("global_images.json")["items"][0]
        image.update(name="debian-12", id="7000", selfLink=f"{BASE}global/images/debian-12")
        self.store["global/images/debian-12"] = image
        # libcloud looks the default network up when it creates a firewall by network name.
        self._insert("global/networks", {"name": "default", "autoCreateSubnetworks": True})

    # -- requests-mock ---------------------------------------------------------------------------

    def install(self, mocker: requests_mock.Mocker) -> None:
        mocker.post(
            TOKEN_URL,
            json={"access_token": ACCESS_TOKEN, "expires_in": 3600, "token_type": "Bearer"},
        )
        mocker.register_uri(requests_mock.ANY, _URL, json=self._answer)

    def _answer(self, request: Any, context: Any) -> Any:
        parts = urlsplit(request.url)
        rest = parts.path.split("/compute/v1/projects/", 1)[1]
        project, _, path = rest.partition("/")
        body = json.loads(request.body) if request.body else None
        self.calls.append(GceCall(request.method, path, body))
        if project != PROJECT:
            # Public image projects (debian-cloud, ...): healer's tests use their own image.
            return {"kind": "compute#imageList", "items": []}
        try:
            status, answer = self._route(request.method, path.rstrip("/"), body)
        except _ApiError as exc:
            status, answer = exc.status, exc.body()
        context.status_code = status
        return answer

    # -- store -----------------------------------------------------------------------------------

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        segs = path.split("/")
        if method == "GET":
            if segs[0] == "aggregated":
                return 200, self._aggregated(segs[1])
            if path in self.store:
                return 200, self.store[path]
            if path in ("zones", "regions"):
                return 200, {"items": self._collection(path)}
            if _is_collection(segs):
                return 200, {"items": self._collection(path)}
            raise _ApiError(404, "notFound", f"The resource '{path}' was not found")
        if method == "POST":
            if _is_collection(segs):
                return 200, self._insert(path, body)
            return 200, self._action(path, body)
        if method in ("PUT", "PATCH"):
            current = self._get(path)
            keep = {k: current[k] for k in ("id", "selfLink", "kind", "creationTimestamp")}
            updated = {**current, **body} if method == "PATCH" else {**body}
            updated.update(keep)
            if "region" in current:
                updated["region"] = current["region"]
            self.store[path] = updated
            return 200, self._operation("update", path)
        if method == "DELETE":
            self._get(path)
            self._check_unused(path)
            del self.store[path]
            for group in self.items("instanceGroups"):  # GCE drops a deleted instance from them
                group["instances"] = [i for i in group["instances"] if i != f"{BASE}{path}"]
            return 200, self._operation("delete", path)
        raise _ApiError(400, "badRequest", f"{method} not supported by the fake")

    def _get(self, path: str) -> dict[str, Any]:
        if path not in self.store:
            raise _ApiError(404, "notFound", f"The resource '{path}' was not found")
        return self.store[path]

    def _collection(self, path: str) -> list[dict[str, Any]]:
        prefix = path + "/"
        return [
            v for k, v in self.store.items() if k.startswith(prefix) and "/" not in k[len(prefix) :]
        ]

    def _aggregated(self, kind: str) -> dict[str, Any]:
        items: dict[str, dict[str, list[Any]]] = {}
        for key, value in self.store.items():
            segs = key.split("/")
            if len(segs) == 4 and segs[2] == kind:
                items.setdefault(f"{segs[0]}/{segs[1]}", {kind: []})[kind].append(value)
        return {"items": items}

    def _link(self, value: str | None, collection: str) -> str | None:
        if value is None or value.startswith("https://"):
            return value
        return f"{BASE}{collection}/{value}"

    def _insert(self, collection: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["name"]
        path = f"{collection}/{name}"
        if path in self.store:
            raise _ApiError(409, "alreadyExists", f"The resource '{path}' already exists")
        kind = collection.split("/")[-1]
        resource = copy.deepcopy(body)
        resource.update(
            id=str(next(self._ids)),
            kind=_KINDS.get(kind, f"compute#{kind}"),
            selfLink=f"{BASE}{path}",
            creationTimestamp="2026-01-01T00:00:00.000-00:00",
        )
        segs = collection.split("/")
        if segs[0] == "regions":
            resource["region"] = f"{BASE}regions/{segs[1]}"
        if kind == "subnetworks":
            net = ipaddress.ip_network(resource["ipCidrRange"])
            resource["gatewayAddress"] = str(next(net.hosts()))
            resource["fingerprint"] = "fp-1"
            resource["network"] = self._link(resource["network"], "global/networks")
            self._get(resource["network"].removeprefix(BASE))
        if kind == "firewalls":
            self._get(resource["network"].removeprefix(BASE))
        if kind == "targetPools":
            resource["instances"] = [i for i in resource.get("instances") or []]
            resource["healthChecks"] = list(resource.get("healthChecks") or [])
        if kind == "forwardingRules":
            if resource.get("loadBalancingScheme") == "INTERNAL":
                subnet = self._get(resource["subnetwork"].removeprefix(BASE))
                hosts = list(ipaddress.ip_network(subnet["ipCidrRange"]).hosts())
                resource["IPAddress"] = str(hosts[250])
            else:
                resource["IPAddress"] = f"198.51.100.{next(self._ips)}"
            self._get((resource.get("target") or resource["backendService"]).removeprefix(BASE))
        if kind == "backendServices":
            resource["fingerprint"] = "bs-fp-1"
            for url in resource.get("healthChecks") or []:
                self._get(url.removeprefix(BASE))
        if kind == "instanceGroups":
            resource["instances"] = []
        if kind == "routers":
            self._get(resource["network"].removeprefix(BASE))
            for nat in resource.get("nats") or []:
                for sub in nat.get("subnetworks") or []:
                    self._get(sub["name"].removeprefix(BASE))
        if kind == "instances":
            resource = self._instance(resource, segs[1])
        self.store[path] = resource
        return self._operation("insert", path)

    def _instance(self, body: dict[str, Any], zone: str) -> dict[str, Any]:
        nics = []
        for nic in body.get("networkInterfaces") or []:
            subnet = nic.get("subnetwork")
            if subnet:
                cidr = self._get(subnet.removeprefix(BASE))["ipCidrRange"]
                hosts = list(itertools.islice(ipaddress.ip_network(cidr).hosts(), 2, 200))
                address = str(hosts[next(self._ips) % len(hosts)])
            else:
                address = f"10.240.0.{next(self._ips)}"
            configs = [
                {**c, "natIP": f"203.0.113.{next(self._ips)}"}
                for c in nic.get("accessConfigs") or []
            ]
            nics.append({**nic, "networkIP": address, "accessConfigs": configs, "name": "nic0"})
        # The boot disk the driver asked to be made from an image (initializeParams).
        boot = (body.get("disks") or [{}])[0].get("initializeParams") or {}
        disk_path = f"zones/{zone}/disks/{body['name']}"
        self.store[disk_path] = {
            "kind": "compute#disk",
            "id": str(next(self._ids)),
            "name": body["name"],
            "sizeGb": str(boot.get("diskSizeGb") or 10),
            "sourceImage": boot.get("sourceImage"),
            "type": boot.get("diskType"),
            "status": "READY",
            "zone": f"{BASE}zones/{zone}",
            "selfLink": f"{BASE}{disk_path}",
        }
        body.update(
            status="RUNNING",
            zone=f"{BASE}zones/{zone}",
            networkInterfaces=nics,
            disks=[
                {
                    "boot": True,
                    "deviceName": body["name"],
                    "index": 0,
                    "kind": "compute#attachedDisk",
                    "mode": "READ_WRITE",
                    "type": "PERSISTENT",
                    "autoDelete": True,
                    "source": f"{BASE}{disk_path}",
                }
            ],
            scheduling={"automaticRestart": True, "onHostMaintenance": "MIGRATE"},
            tags={**(body.get("tags") or {}), "fingerprint": "tags-fp-1"},
            metadata={**(body.get("metadata") or {}), "fingerprint": "md-fp-1"},
        )
        return body

    def _action(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        target, _, verb = path.rpartition("/")
        resource = self._get(target)
        if verb == "listInstances":  # instance groups: answers with the list, not an operation
            return {"items": [{"instance": i, "status": "RUNNING"} for i in resource["instances"]]}
        if verb in ("addInstances", "removeInstances"):
            zone = target.split("/")[1]
            urls = [i["instance"] for i in body["instances"]]
            for url in urls:
                instance = self._get(url.removeprefix(BASE))
                if not instance["zone"].endswith(f"/zones/{zone}"):
                    raise _ApiError(400, "invalid", f"{url} is not in zone {zone}")
            if verb == "addInstances":
                resource["instances"] += [u for u in urls if u not in resource["instances"]]
            else:
                resource["instances"] = [i for i in resource["instances"] if i not in urls]
            return self._operation(verb, target)
        if verb == "addInstance":
            for item in body["instances"]:
                self._get(item["instance"].removeprefix(BASE))
                if item["instance"] not in resource["instances"]:
                    resource["instances"].append(item["instance"])
        elif verb == "removeInstance":
            gone = {i["instance"] for i in body["instances"]}
            resource["instances"] = [i for i in resource["instances"] if i not in gone]
        else:
            raise _ApiError(400, "badRequest", f"action {verb} not supported by the fake")
        return self._operation(verb, target)

    def _check_unused(self, path: str) -> None:
        link = f"{BASE}{path}"
        users = []
        for key, value in self.store.items():
            refs = [value.get("network"), value.get("target"), value.get("backendService")]
            refs += [b.get("group") for b in value.get("backends") or []]
            refs += [s.get("name") for n in value.get("nats") or [] for s in n["subnetworks"]]
            refs += [n.get("subnetwork") for n in value.get("networkInterfaces") or []]
            refs += list(value.get("healthChecks") or [])
            if link in refs:
                users.append(key)
        if users:
            raise _ApiError(
                400,
                "resourceInUseByAnotherResource",
                f"The resource '{path}' is already being used by '{users[0]}'",
            )

    def _operation(self, verb: str, path: str) -> dict[str, Any]:
        segs = path.split("/")
        scope = "global" if segs[0] == "global" else f"{segs[0]}/{segs[1]}"
        name = f"operation-{next(self._ids)}"
        op = {
            "kind": "compute#operation",
            "id": name,
            "name": name,
            "operationType": verb,
            "status": "DONE",
            "progress": 100,
            "targetLink": f"{BASE}{path}",
            "selfLink": f"{BASE}{scope}/operations/{name}",
        }
        if segs[0] == "zones":
            op["zone"] = f"{BASE}zones/{segs[1]}"
        if segs[0] == "regions":
            op["region"] = f"{BASE}regions/{segs[1]}"
        self.store[f"{scope}/operations/{name}"] = op
        return op

    # -- what tests read --------------------------------------------------------------------------

    def posted(self, collection_suffix: str) -> list[Any]:
        """Bodies POSTed to collections ending in ``collection_suffix`` (e.g. ``/firewalls``)."""
        return [
            c.body
            for c in self.calls
            if c.method == "POST" and ("/" + c.path).endswith(collection_suffix)
        ]

    def items(self, kind: str) -> list[dict[str, Any]]:
        return [v for k, v in self.store.items() if k.split("/")[-2:-1] == [kind]]


def _is_collection(segs: list[str]) -> bool:
    return len(segs) == (2 if segs[0] == "global" else 3)


class _ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.status,
                "message": self.message,
                "errors": [{"reason": self.reason, "message": self.message, "domain": "global"}],
            }
        }


def service_account_key() -> str:
    """A fresh RSA private key in PEM, as in a service account's JSON key file."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def gce_provider(*, cluster: str, state_dir: Path, private_key: str) -> LibcloudProvider:
    """The generic plugin over libcloud's GCE driver, authenticating as a service account whose
    key is in a file (as an operator would configure it)."""
    (state_dir / "gce-sa-email").write_text(SA_EMAIL + "\n")
    (state_dir / "gce-sa-key.pem").write_text(private_key)
    return LibcloudProvider(
        cluster=cluster,
        options={
            "driver": "gce",
            "args": {
                "project": PROJECT,
                "datacenter": ZONE,
                "auth_type": "SA",
                "credential_file": str(state_dir / "gce-token-cache"),
            },
        },
        credentials={
            "key": SecretRef(file=state_dir / "gce-sa-email"),
            "secret": SecretRef(file=state_dir / "gce-sa-key.pem"),
        },
        state_dir=state_dir,
    )
