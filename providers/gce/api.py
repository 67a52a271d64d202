"""What every part of healer's GCE backend shares: healer's tags in a resource's description
(GCE networks, firewalls, routers, health checks and backend services have no labels), and the
driver as the object its ``ex_*`` methods and signed connection are on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from libcloud.common.google import ResourceNotFoundError
from libcloud.compute.base import NodeDriver

from healer.cloud.machines import tags_match

_MARK = "healer:"


def describe(tags: Mapping[str, str], **more: Any) -> str:
    """A description carrying healer's tags (and ``more``) as JSON."""
    return _MARK + json.dumps({"tags": dict(tags), **more}, sort_keys=True)


def meta_of(description: str | None) -> dict[str, Any] | None:
    """The JSON healer wrote into a description; ``None`` for anyone else's resource."""
    if not description or not description.startswith(_MARK):
        return None
    try:
        data = json.loads(description[len(_MARK) :])
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("tags"), dict) else None


def described(items: Iterable[Any], tags: Mapping[str, str]) -> list[tuple[Any, dict[str, Any]]]:
    """The resources among ``items`` healer described (see :func:`describe`) with ``tags``,
    each with what its description holds."""
    out = []
    for item in items:
        meta = meta_of(item.extra.get("description"))
        if meta is not None and tags_match(meta["tags"], tags):
            out.append((item, meta))
    return out


def gce_of(driver: NodeDriver) -> Any:
    # The GCE driver's ex_* methods are not on the NodeDriver base class.
    return driver


_PROJECT_PATH = re.compile(r"/projects/[^/]+(/.*)$")


def path_of(url: str) -> str:
    """A resource URL as a path for the driver's connection (relative to the project)."""
    match = _PROJECT_PATH.search(url)
    return match.group(1) if match else url


def basename(url: str | None) -> str:
    return (url or "").rstrip("/").rsplit("/", 1)[-1]


def link(driver: NodeDriver, path: str) -> str:
    """The full URL of ``path`` (``regions/r/subnetworks/s``) in the driver's project."""
    conn = gce_of(driver).connection
    return f"https://{conn.host}{conn.request_path}/{path.lstrip('/')}"


def get(driver: NodeDriver, url_or_path: str) -> dict[str, Any] | None:
    """The resource, or ``None`` when GCE says it is not there."""
    try:
        answer = gce_of(driver).connection.request(path_of(url_or_path), method="GET").object
    except ResourceNotFoundError:
        return None
    return answer if isinstance(answer, dict) else None


def call(driver: NodeDriver, path: str, method: str, body: Any = None) -> Any:
    """A change through the driver's connection, waiting for the operation it starts."""
    return gce_of(driver).connection.async_request(path, method=method, data=body).object


def aggregated(driver: NodeDriver, kind: str) -> list[dict[str, Any]]:
    """Every ``kind`` (``routers``, ``forwardingRules``) in every region or zone."""
    answer = gce_of(driver).connection.request_aggregated_items(kind)
    return [item for scope in answer["items"].values() for item in scope.get(kind, [])]
