"""Node labels and annotations around a planned reboot (kured's ``--pre-reboot-node-labels`` and
``--post-reboot-node-labels``): ``reboots.preRebootNodeLabels`` / ``preRebootNodeAnnotations``
are set when the node is cordoned for its reboot, ``postRebootNodeLabels`` /
``postRebootNodeAnnotations`` when it is uncordoned after it. At the post step, a pre key the
post set does not name is removed, so a ``rebooting: "true"`` does not outlive the reboot.

The reboot workflow (:mod:`healer.workflow`) calls :func:`mark_reboot` at its cordon and
uncordon steps; the patch is one JSON merge patch of ``metadata``, idempotent, so a step re-run
after a crash writes the same thing again.
"""

from __future__ import annotations

from typing import Literal, Protocol

from healer.config import RebootPolicy
from healer.kube.records import Json

Stage = Literal["pre", "post"]


class NodeMetadata(Protocol):
    """What :func:`mark_reboot` needs (:class:`healer.kube.client.KubeClient` has it; a test's
    fake can too)."""

    async def patch_node_metadata(self, what: str, name: str, metadata: Json) -> bool: ...


def reboot_marks(policy: RebootPolicy, stage: Stage) -> Json | None:
    """The ``metadata`` merge patch of ``stage``; None when the policy sets nothing for it."""
    pre_l, pre_a = policy.pre_reboot_node_labels, policy.pre_reboot_node_annotations
    if stage == "pre":
        labels: dict[str, str | None] = dict(pre_l)
        annotations: dict[str, str | None] = dict(pre_a)
    else:
        post_l, post_a = policy.post_reboot_node_labels, policy.post_reboot_node_annotations
        labels = {**{k: None for k in pre_l if k not in post_l}, **post_l}
        annotations = {**{k: None for k in pre_a if k not in post_a}, **post_a}
    meta: Json = {}
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    return meta or None


async def mark_reboot(api: NodeMetadata, node: str, policy: RebootPolicy, stage: Stage) -> bool:
    """Write the ``stage`` labels and annotations of ``policy`` on ``node``. True when written
    or nothing to write; False if the node no longer exists. Kube errors propagate (a step
    retries them)."""
    patch = reboot_marks(policy, stage)
    if patch is None:
        return True
    return await api.patch_node_metadata(f'{stage}-reboot labels on node "{node}"', node, patch)
