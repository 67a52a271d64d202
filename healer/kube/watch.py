"""List + watch of nodes and node leases: what the kube-watch source reads.

Watches are streamed line by line from the raw response (see :mod:`healer.kube`); every 410 is
reported as :class:`WatchExpired` for the caller to decide.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import aiohttp

from healer.errors import KubeUnavailable, TemporaryError
from healer.kube.connection import Answer, Connection, _decode, _retry_after
from healer.kube.records import (
    NODE_LEASE_NAMESPACE,
    Json,
    LeaseInfo,
    NodeInfo,
    WatchEvent,
    lease_from_json,
    node_from_json,
)

# Slack on top of the server-side watch timeout before the client gives up on a silent stream.
_WATCH_READ_SLACK = 30.0


class WatchExpired(TemporaryError):
    """The resourceVersion a watch asked for is older than the server's history (410 Gone).

    Not a :class:`KubeUnavailable`: the API is fine, the caller's cursor is stale. The remedy is
    to list again and watch from the new resourceVersion, immediately and without backoff.
    """


class ListWatch(Connection):
    """List and watch nodes and node leases."""

    async def _watch(
        self,
        what: str,
        method: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        resource_version: str,
        timeout_seconds: int,
        parse: Callable[[Json], NodeInfo | LeaseInfo],
    ) -> AsyncGenerator[WatchEvent, None]:
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self._request_timeout,
            sock_read=timeout_seconds + _WATCH_READ_SLACK,
        )
        try:
            response = await method(
                *args,
                watch=True,
                resource_version=resource_version,
                timeout_seconds=timeout_seconds,
                allow_watch_bookmarks=True,
                _preload_content=False,
                _request_timeout=timeout,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise KubeUnavailable(
                f"{what}: cannot reach the Kubernetes API at {self.host}: "
                f"{exc or type(exc).__name__}"
            ) from exc
        clean_end = False
        try:
            if response.status != 200:
                answer = Answer(
                    response.status, _decode(await response.read()), _retry_after(response.headers)
                )
                if answer.status == 410:
                    raise WatchExpired(
                        f"{what} from resourceVersion {resource_version}: {answer.message}"
                    )
                self._fail(what, answer)
            while True:
                try:
                    line = await response.content.readline()
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    raise KubeUnavailable(
                        f"{what}: the watch stream from {self.host} broke: "
                        f"{exc or type(exc).__name__}"
                    ) from exc
                if not line:
                    clean_end = True
                    return  # the server ended the watch (timeoutSeconds): resume from the last RV
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                    kind, obj = str(event["type"]), event["object"]
                except (ValueError, KeyError, TypeError) as exc:
                    raise KubeUnavailable(f"{what}: malformed watch event {line[:200]!r}") from exc
                if kind == "ERROR":
                    code = int(obj.get("code", 0)) if isinstance(obj, dict) else 0
                    answer = Answer(code, obj, None)
                    if code == 410:
                        raise WatchExpired(
                            f"{what} from resourceVersion {resource_version}: {answer.message}"
                        )
                    self._fail(what, answer)
                rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
                if kind == "BOOKMARK":
                    yield WatchEvent(type=kind, obj=None, resource_version=rv)
                else:
                    yield WatchEvent(type=kind, obj=parse(obj), resource_version=rv)
        finally:
            # An unfinished stream cannot go back to the connection pool.
            if clean_end:
                response.release()
            else:
                response.close()

    async def list_nodes(self) -> tuple[list[NodeInfo], str]:
        body = self._expect("list nodes", await self._call("list nodes", self._core.list_node))
        now = self._clock.now()
        nodes = [node_from_json(item, now=now) for item in body.get("items") or []]
        return nodes, str(body["metadata"]["resourceVersion"])

    def watch_nodes(
        self, resource_version: str, timeout_seconds: int = 60
    ) -> AsyncGenerator[WatchEvent, None]:
        """Stream node events after ``resource_version`` until the server ends the watch.

        Raises :class:`WatchExpired` when the version is too old, :class:`KubeUnavailable` when
        the stream cannot be opened or breaks. Close it with ``contextlib.aclosing`` when
        stopping early."""
        return self._watch(
            "watch nodes",
            self._core.list_node,
            (),
            resource_version,
            timeout_seconds,
            lambda obj: node_from_json(obj, now=self._clock.now()),
        )

    async def list_leases(self) -> tuple[list[LeaseInfo], str]:
        what = f"list leases in {NODE_LEASE_NAMESPACE}"
        answer = await self._call(
            what, self._coordination.list_namespaced_lease, NODE_LEASE_NAMESPACE
        )
        body = self._expect(what, answer)
        leases = [lease_from_json(item) for item in body.get("items") or []]
        return leases, str(body["metadata"]["resourceVersion"])

    def watch_leases(
        self, resource_version: str, timeout_seconds: int = 60
    ) -> AsyncGenerator[WatchEvent, None]:
        """Like :meth:`watch_nodes`, for the node leases in ``kube-node-lease``."""
        return self._watch(
            f"watch leases in {NODE_LEASE_NAMESPACE}",
            self._coordination.list_namespaced_lease,
            (NODE_LEASE_NAMESPACE,),
            resource_version,
            timeout_seconds,
            lease_from_json,
        )
