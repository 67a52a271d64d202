"""The EC2 dialect: tags as ``ex_metadata``, server-side filters, EC2's "not found" codes.

Serves every EC2-compatible libcloud driver (every ``BaseEC2NodeDriver``).
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from typing import Any

from libcloud.common.exceptions import BaseHTTPError
from libcloud.compute.base import Node, NodeDriver, NodeImage

from healer.cloud.machines import MachineState
from healer.errors import PermanentError
from providers.dialects import Dialect, http_status, normalise_state

EC2_USER_DATA_LIMIT = 16384  # bytes, before base64
# Every instance: IMDSv2 only (a session token from a PUT, which SSRF through a GET cannot get)
# and a hop limit of 1, so the token's PUT answer never reaches a container behind the node's
# network namespace: pods cannot read the instance's metadata, user data or role credentials.
METADATA_OPTIONS = {
    "MetadataOptions.HttpTokens": "required",
    "MetadataOptions.HttpPutResponseHopLimit": "1",
    "MetadataOptions.HttpEndpoint": "enabled",
}


class Ec2Dialect(Dialect):
    """EC2 and EC2-compatible drivers (every ``BaseEC2NodeDriver``).

    Tags go in as ``ex_metadata`` (sent as a ``TagSpecification`` on ``RunInstances``, so a
    machine is never visible untagged) and lookups are filtered on the server: listing a whole
    account to find one name would not scale.
    """

    name = "ec2"
    options = frozenset({"image_owner"})
    # Listed as "live" for lookups; "shutting-down" is a termination in progress.
    _LIVE = ["pending", "running", "stopping", "stopped"]
    _NOT_FOUND = ("InvalidInstanceID.NotFound", "InvalidAMIID.NotFound", "InvalidAMIID.Malformed")

    def __init__(self, *, image_owner: str = "self") -> None:
        # Names of AMIs are not unique across accounts; anyone can publish "debian-12". A name
        # is therefore only looked up among images of one owner ("self" unless configured).
        self.image_owner = image_owner

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Dialect:
        return cls(image_owner=str(options.get("image_owner", "self")))

    def create_kwargs(self, *, tags: Mapping[str, str], user_data: str) -> dict[str, Any]:
        # libcloud base64-encodes ex_userdata itself. EC2 takes at most 16 KiB of user data;
        # cloud-init recognises gzip by its magic bytes, so larger documents go gzipped.
        data: str | bytes | None = user_data or None
        if user_data and len(user_data.encode()) > EC2_USER_DATA_LIMIT:
            data = gzip.compress(user_data.encode(), mtime=0)
            if len(data) > EC2_USER_DATA_LIMIT:
                raise PermanentError(
                    f"user data is {len(data)} bytes even gzipped; EC2 accepts {EC2_USER_DATA_LIMIT}"
                )
        return {"ex_metadata": dict(tags), "ex_userdata": data}

    def create_node(self, driver: NodeDriver, **kwargs: Any) -> Node:
        """``RunInstances`` with :data:`METADATA_OPTIONS`: libcloud's EC2 driver has no argument
        for them, so they are added to that one request on the way out. A driver serves one call
        at a time (the plugin's pool), so the wrapped ``request`` is seen by this call only."""
        connection: Any = driver.connection
        own = "request" in vars(connection)
        original = connection.request

        def request(action: str, params: dict[str, Any] | None = None, *a: Any, **kw: Any) -> Any:
            if params is not None and params.get("Action") == "RunInstances":
                params = {**params, **METADATA_OPTIONS}
            return original(action, params, *a, **kw)

        connection.request = request
        try:
            return driver.create_node(**kwargs)
        finally:
            if own:
                connection.request = original
            else:
                del connection.request

    def state_of(self, node: Node) -> MachineState:
        # libcloud maps "shutting-down" to UNKNOWN; for healer it is already gone, and treating
        # it as live would let a retried destroy terminate it a second time.
        status = (node.extra or {}).get("status")
        if status == "shutting-down":
            return MachineState.TERMINATED
        if status == "stopping":
            return MachineState.STOPPED
        return normalise_state(node.state)

    def list_nodes(
        self, driver: NodeDriver, *, name: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[Node]:
        filters: dict[str, Any] = {"instance-state-name": list(self._LIVE)}
        if name is not None:
            filters["tag:Name"] = name
        for key, value in (tags or {}).items():
            filters[f"tag:{key}"] = value
        return list(driver.list_nodes(ex_filters=filters))

    def get_node(self, driver: NodeDriver, node_id: str) -> Node | None:
        try:
            found = driver.list_nodes(ex_node_ids=[node_id])
        except BaseHTTPError as exc:
            if self.is_not_found(exc):
                return None
            raise
        return found[0] if found else None

    def find_images(self, driver: NodeDriver, ref: str) -> list[NodeImage] | None:
        ec2: Any = driver  # the EC2 driver's list_images takes ex_ filters the base lacks
        try:
            if ref.startswith("ami-"):
                return list(ec2.list_images(ex_image_ids=[ref]))
            return list(ec2.list_images(ex_owner=self.image_owner, ex_filters={"name": ref}))
        except BaseHTTPError as exc:
            if self.is_not_found(exc):
                return []
            raise

    def is_not_found(self, exc: BaseException) -> bool:
        # EC2 answers 400 with an error code, not 404.
        message = str(getattr(exc, "message", "") or exc)
        return http_status(exc) == 400 and any(code in message for code in self._NOT_FOUND)
