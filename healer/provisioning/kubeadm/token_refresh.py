"""The join token kept valid in the cluster (``kube-system/bootstrap-token-<id>``), so that a
replacement machine can join at any time and not only within the token's TTL after ``kubeadm
init``. The only kubeadm module that talks to the cluster."""

from __future__ import annotations

from pathlib import Path

import structlog

from healer.config import ClusterConfig
from healer.kube.client import KubeClient
from healer.kube.records import format_time, parse_time
from healer.provisioning.keystore import ClusterState
from healer.provisioning.kubeadm.tokens import BOOTSTRAP_TOKEN_GROUP, ensure_secrets

log = structlog.get_logger("healer.provisioning")

BOOTSTRAP_TOKEN_NAMESPACE = "kube-system"


async def refresh_bootstrap_token(
    cluster: ClusterConfig, kube: KubeClient, state_dir: Path, *, now: float
) -> str | None:
    """Keep the cluster's join token valid in the cluster, so that a replacement machine can
    join at any time and not only within the token's TTL after ``kubeadm init``.

    The token's Secret (``kube-system/bootstrap-token-<id>``, the format kubeadm writes) is
    re-written with a fresh expiration once less than half its TTL remains, or created if it
    is missing. Returns a line describing the change, or None."""
    k8s = cluster.kubernetes
    if k8s is None:
        return None
    secrets_ = ensure_secrets(ClusterState(state_dir, cluster.name), k8s)
    token_id, token_secret = secrets_.bootstrap_token.reveal().split(".", 1)
    name = f"bootstrap-token-{token_id}"
    current = await kube.get_secret(BOOTSTRAP_TOKEN_NAMESPACE, name)
    if current is not None and current.data.get("token-secret") == token_secret.encode():
        raw = current.data.get("expiration", b"").decode()
        expires = parse_time(raw)
        if not raw or (expires is not None and expires - now > k8s.bootstrap_token_ttl / 2):
            return None  # no expiry at all, or still valid for long enough
    until = format_time(now + k8s.bootstrap_token_ttl)
    await kube.put_secret(
        BOOTSTRAP_TOKEN_NAMESPACE,
        name,
        type_="bootstrap.kubernetes.io/token",
        data={
            "token-id": token_id.encode(),
            "token-secret": token_secret.encode(),
            "expiration": until.encode(),
            "usage-bootstrap-authentication": b"true",
            "usage-bootstrap-signing": b"true",
            "auth-extra-groups": BOOTSTRAP_TOKEN_GROUP.encode(),
            "description": b"healer: machines join with this token",
        },
        resource_version=current.resource_version if current is not None else None,
    )
    log.info(
        "kubeadm.bootstrap_token_refreshed", cluster=cluster.name, token_id=token_id, until=until
    )
    return f"bootstrap token {token_id}: valid until {until}"
