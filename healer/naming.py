"""Machine names and ownership tags: one scheme for first machines and replacements.

A machine's name is also its Kubernetes Node name, so it must be a DNS-1123 label (<= 63 chars).
The tags let healer find its own machines again after a crash and refuse to touch anyone else's.
"""

from __future__ import annotations

import secrets

from healer.model import TAG_CLUSTER, TAG_MANAGED, TAG_POOL, TAG_WORKFLOW

_SUFFIX_LEN = 8


def machine_name(cluster: str, pool: str, token: str | None = None) -> str:
    """``lab-workers-3f9a1c2e``; ``token`` (a workflow id) makes the name deterministic."""
    suffix = (token or secrets.token_hex(_SUFFIX_LEN // 2))[:_SUFFIX_LEN].lower()
    prefix = f"{cluster}-{pool}"[: 63 - _SUFFIX_LEN - 1].rstrip("-")
    return f"{prefix}-{suffix}"


def ownership_tags(cluster: str, pool: str, workflow: str | None = None) -> dict[str, str]:
    tags = {TAG_MANAGED: "true", TAG_CLUSTER: cluster, TAG_POOL: pool}
    if workflow is not None:
        tags[TAG_WORKFLOW] = workflow
    return tags


def owned_by(tags: dict[str, str] | object, cluster: str) -> bool:
    get = getattr(tags, "get", None)
    return bool(get) and get(TAG_MANAGED) == "true" and get(TAG_CLUSTER) == cluster  # type: ignore[misc]
