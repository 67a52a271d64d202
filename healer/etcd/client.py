"""The etcd v3 adapter: the only module that imports an etcd client library.

``aetcd`` (PyPI, asyncio, etcd v3 over gRPC) brings the generated etcd v3 stubs; its ``Client``
opens insecure channels only, while every kubeadm etcd requires a client certificate. So healer
uses aetcd's stubs (``aetcd.rpc``: Cluster.MemberList/MemberAdd/MemberRemove,
Maintenance.Status) on its own ``grpc.aio`` channels with TLS. Everything it returns is a pure
record of :mod:`healer.planner.etcd_quorum`.

Which address reaches which member is an :class:`Endpoints` object's business: the configured
endpoints and the member list's client URLs (``direct``), or loopback listeners tunnelled
through the Kubernetes API to each etcd static pod (``portforward``, wired by
:mod:`healer.app`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import grpc  # type: ignore[import-untyped]
import structlog
from aetcd import rpc  # type: ignore[import-untyped]

from healer.errors import TemporaryError
from healer.planner.etcd_quorum import EtcdMember, EtcdView

log = structlog.get_logger("healer.etcd")

# gRPC codes that mean "this endpoint cannot answer now": try the next one.
_UNAVAILABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
}


class EtcdUnavailable(TemporaryError):
    """No etcd member answered (or none that may be asked): the step is retried."""


@dataclass(frozen=True)
class EtcdTls:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:  # the key stays out of reprs and logs
        return "EtcdTls(...)"


class Endpoints(Protocol):
    """Where the members answer, as ``scheme://host:port`` client URLs."""

    async def seeds(self) -> list[str]:
        """Endpoints to ask for the member list, in order."""
        ...

    async def for_member(self, member: EtcdMember) -> str | None:
        """The endpoint that reaches ``member`` itself, or None (not started, no way there)."""
        ...

    async def close(self) -> None:
        """Release what the endpoints hold (listeners, tunnels)."""
        ...


class DirectEndpoints:
    """``etcd.mode: direct``: the configured endpoints, then the members' own client URLs."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        self._configured = list(endpoints)
        self._learned: list[str] = []

    async def seeds(self) -> list[str]:
        return list(dict.fromkeys([*self._configured, *self._learned]))

    async def for_member(self, member: EtcdMember) -> str | None:
        return member.client_urls[0] if member.client_urls else None

    async def close(self) -> None:
        return None

    def learn(self, members: Sequence[EtcdMember]) -> None:
        """Remember the members' client URLs: a replaced member is found without a config
        change (an etcd client's endpoint auto-sync)."""
        self._learned = [m.client_urls[0] for m in members if m.client_urls]


def _target(url: str) -> str:
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"etcd endpoint {url!r} is not scheme://host:port")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port}"


class EtcdClient:
    """One cluster's etcd: the member list with each member's health, and membership changes."""

    def __init__(
        self, *, cluster: str, endpoints: Endpoints, tls: EtcdTls | None, timeout: float = 5.0
    ) -> None:
        self.cluster = cluster
        self._endpoints = endpoints
        self._tls = tls
        self._timeout = timeout
        self._channels: dict[str, Any] = {}

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            with contextlib.suppress(Exception):
                await channel.close()
        await self._endpoints.close()

    def _channel(self, url: str) -> Any:
        channel = self._channels.get(url)
        if channel is None:
            target = _target(url)
            if url.startswith("https://"):
                if self._tls is None:
                    raise EtcdUnavailable(f"{url} needs TLS but no client certificate is set")
                creds = grpc.ssl_channel_credentials(
                    root_certificates=self._tls.ca_pem,
                    private_key=self._tls.key_pem,
                    certificate_chain=self._tls.cert_pem,
                )
                channel = grpc.aio.secure_channel(target, creds)
            else:
                channel = grpc.aio.insecure_channel(target)
            self._channels[url] = channel
        return channel

    async def _members_from(self, url: str) -> tuple[list[Any], int]:
        """(raw members, id of the member that answered) as ``url`` answers a linearizable
        member list (it needs quorum: a member cut off from the others cannot answer)."""
        stub = rpc.ClusterStub(self._channel(url))
        resp = await stub.MemberList(
            rpc.MemberListRequest(linearizable=True), timeout=self._timeout
        )
        return list(resp.members), int(resp.header.member_id)

    async def _status(self, url: str) -> int:
        """The leader's id as the member at ``url`` sees it (raises when it cannot answer)."""
        stub = rpc.MaintenanceStub(self._channel(url))
        resp = await stub.Status(rpc.StatusRequest(), timeout=self._timeout)
        if list(resp.errors):
            raise EtcdUnavailable(f"{url}: {'; '.join(resp.errors)}")
        return int(resp.leader)

    async def _list(self) -> tuple[list[Any], str]:
        errors: list[str] = []
        for url in await self._endpoints.seeds():
            try:
                members, _ = await self._members_from(url)
                return members, url
            except grpc.aio.AioRpcError as exc:
                errors.append(f"{url}: {exc.code().name} {exc.details()}")
            except (OSError, ValueError, EtcdUnavailable) as exc:
                errors.append(f"{url}: {exc}")
        raise EtcdUnavailable(
            "no etcd member answered a member list: " + ("; ".join(errors) or "no endpoints")
        )

    async def view(self) -> EtcdView:
        """The membership with each member's health; a view with ``error`` when no member
        answers (never raises for that: the guard decides what an unreachable etcd means)."""
        try:
            raw, _ = await self._list()
        except EtcdUnavailable as exc:
            return EtcdView(error=str(exc))
        unhealthy = [
            EtcdMember(
                id=int(m.ID),
                name=str(m.name),
                peer_urls=tuple(m.peerURLs),
                client_urls=tuple(m.clientURLs),
                healthy=False,
                is_learner=bool(m.isLearner),
            )
            for m in raw
        ]
        if isinstance(self._endpoints, DirectEndpoints):
            self._endpoints.learn(unhealthy)

        async def probe(member: EtcdMember) -> tuple[EtcdMember, int | None]:
            url = await self._endpoints.for_member(member)
            if url is None:
                return member, None
            try:
                leader = await self._status(url)
            except (grpc.aio.AioRpcError, OSError, ValueError, EtcdUnavailable):
                return member, None
            return EtcdMember(**{**member.__dict__, "healthy": True}), leader

        probed = await asyncio.gather(*(probe(m) for m in unhealthy))
        leaders = [leader for _, leader in probed if leader]
        return EtcdView(
            members=tuple(m for m, _ in probed),
            leader=max(set(leaders), key=leaders.count) if leaders else None,
        )

    async def _via_healthy(self, view: EtcdView, *, besides: int | None) -> list[str]:
        urls = []
        for m in view.members:
            if m.healthy and m.id != besides:
                url = await self._endpoints.for_member(m)
                if url is not None:
                    urls.append(url)
        if not urls:
            raise EtcdUnavailable(f"no healthy etcd member to ask ({view.describe()})")
        return urls

    async def remove_member(self, view: EtcdView, member_id: int) -> bool:
        """Remove ``member_id`` through a healthy member other than itself. False when it was
        already gone (a repeat after a crash)."""
        last: Exception | None = None
        for url in await self._via_healthy(view, besides=member_id):
            stub = rpc.ClusterStub(self._channel(url))
            try:
                await stub.MemberRemove(
                    rpc.MemberRemoveRequest(ID=member_id), timeout=self._timeout
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return False
                if exc.code() in _UNAVAILABLE:
                    last = exc
                    continue
                raise EtcdUnavailable(
                    f"{url} refused to remove member {member_id:x}: "
                    f"{exc.code().name} {exc.details()}"
                ) from None
            log.info("etcd.member_removed", cluster=self.cluster, member=f"{member_id:x}", via=url)
            return True
        raise EtcdUnavailable(f"no healthy etcd member removed {member_id:x}: {last}")

    async def add_member(self, view: EtcdView, peer_urls: Sequence[str]) -> EtcdMember:
        """Add a member (what ``kubeadm join --control-plane`` does) through a healthy one; it
        must then start with ``--initial-cluster-state existing``."""
        last: Exception | None = None
        for url in await self._via_healthy(view, besides=None):
            stub = rpc.ClusterStub(self._channel(url))
            try:
                resp = await stub.MemberAdd(
                    rpc.MemberAddRequest(peerURLs=list(peer_urls)), timeout=self._timeout
                )
            except grpc.aio.AioRpcError as exc:
                last = exc
                continue
            m = resp.member
            log.info("etcd.member_added", cluster=self.cluster, member=f"{m.ID:x}", via=url)
            return EtcdMember(int(m.ID), str(m.name), tuple(m.peerURLs), (), False)
        raise EtcdUnavailable(f"no healthy etcd member added {list(peer_urls)}: {last}")
