"""The kubelet's side of a node: register it, post its Ready condition, renew its lease (the
lab's simulated kubelets use these)."""

from __future__ import annotations

import copy

from healer.errors import TemporaryError
from healer.kube.nodes import NodeApi
from healer.kube.records import (
    NODE_LEASE_NAMESPACE,
    Json,
    format_micro_time,
    format_time,
    parse_time,
)


class KubeletApi(NodeApi):
    """What a kubelet writes about its own node."""

    async def register_node(self, name: str, labels: dict[str, str]) -> bool:
        """Create the Node as a kubelet does. If it already exists, adopt it (making sure the
        given labels are set) and return False."""
        what = f'register node "{name}"'
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": dict(labels)},
            "spec": {},
        }
        answer = await self._call(what, self._core.create_node, body)
        if answer.status == 409:
            if labels and not await self.set_node_labels(name, dict(labels)):
                # Deleted between our create and the patch: try once more from scratch.
                return await self.register_node(name, labels)
            return False
        self._expect(what, answer)
        return True

    async def set_node_ready(
        self,
        name: str,
        status: str,
        reason: str,
        message: str,
        *,
        report_every: float | None = None,
    ) -> bool:
        """Post the Ready condition as a kubelet does. The heartbeat time is always now; the
        transition time only moves when the status changes. False if the node does not exist.

        With ``report_every`` (seconds) an unchanged condition is posted only once its heartbeat
        is that old, as a kubelet with a node lease does (``nodeStatusReportFrequency``, 5 min
        by default): the lease is what says it is alive. A condition that differs from what the
        API holds (another writer set it Unknown, say) is always posted."""
        current = await self._get_node_json(name)
        if current is None:
            return False
        previous = next(
            (
                c
                for c in (current.get("status") or {}).get("conditions") or []
                if c.get("type") == "Ready"
            ),
            None,
        )
        wall = self._clock.wall()
        if (
            report_every is not None
            and previous is not None
            and (previous.get("status"), previous.get("reason"), previous.get("message"))
            == (status, reason, message)
        ):
            beat = parse_time(previous.get("lastHeartbeatTime"))
            if beat is not None and 0 <= wall - beat < report_every:
                return True
        now = format_time(wall)  # read by other hosts
        transition = (
            previous["lastTransitionTime"]
            if previous is not None
            and previous.get("status") == status
            and previous.get("lastTransitionTime")
            else now
        )
        patch = {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": status,
                        "reason": reason,
                        "message": message,
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": transition,
                    }
                ]
            }
        }
        what = f'set Ready={status} on node "{name}"'
        # A dict body goes out as a strategic merge patch: conditions merge by type, so the
        # other conditions are left alone.
        answer = await self._call(what, self._core.patch_node_status, name, patch)
        if answer.status == 404:
            return False
        self._expect(what, answer)
        return True

    async def set_pod_running(self, namespace: str, name: str) -> bool:
        """Report a pod's containers started, as its kubelet does: phase Running, Ready and
        ContainersReady True. False if the pod is gone."""
        now = format_time(self._clock.wall())
        conditions = [
            {"type": kind, "status": "True", "lastTransitionTime": now}
            for kind in ("Initialized", "ContainersReady", "Ready", "PodScheduled")
        ]
        patch = {"status": {"phase": "Running", "startTime": now, "conditions": conditions}}
        what = f'set pod "{namespace}/{name}" Running'
        answer = await self._call(
            what, self._core.patch_namespaced_pod_status, name, namespace, patch
        )
        if answer.status == 404:
            return False
        self._expect(what, answer)
        return True

    async def renew_lease(
        self, name: str, holder: str, duration_seconds: int, *, last: Json | None = None
    ) -> Json:
        """Create or renew ``kube-node-lease/<name>`` with renewTime now, and return the lease
        as written. Updates carry the resourceVersion read, so a concurrent writer makes us
        re-read rather than overwrite.

        ``last`` is the lease this returned the time before: the update starts from it instead
        of reading the lease again, as the kubelet's lease controller renews from the lease it
        last wrote; a conflict or a deleted lease falls back to reading it.

        As the kubelet's ``SetNodeOwnerFunc`` does, a lease without an owner gets the Node as
        its owner (looked up for its uid on every renewal until it exists), so the garbage
        collector deletes the lease with its Node."""
        what = f'renew lease "{NODE_LEASE_NAMESPACE}/{name}"'
        for _ in range(3):
            renew = format_micro_time(self._clock.wall())  # read by other hosts
            current: Json | None
            if last is not None:
                current, last = copy.deepcopy(last), None  # once: after a conflict, read it
            else:
                read = await self._call(
                    what, self._coordination.read_namespaced_lease, name, NODE_LEASE_NAMESPACE
                )
                current = None if read.status == 404 else self._expect(what, read)
            if current is None:
                body: Json = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": name, "namespace": NODE_LEASE_NAMESPACE},
                    "spec": {
                        "holderIdentity": holder,
                        "leaseDurationSeconds": duration_seconds,
                        "acquireTime": renew,
                        "renewTime": renew,
                    },
                }
                await self._own_by_node(body, name)
                answer = await self._call(
                    what, self._coordination.create_namespaced_lease, NODE_LEASE_NAMESPACE, body
                )
            else:
                body = current
                spec = body.setdefault("spec", {})
                spec.update(
                    holderIdentity=holder, leaseDurationSeconds=duration_seconds, renewTime=renew
                )
                await self._own_by_node(body, name)
                answer = await self._call(
                    what,
                    self._coordination.replace_namespaced_lease,
                    name,
                    NODE_LEASE_NAMESPACE,
                    body,
                )
            if answer.status in (404, 409):
                continue  # raced with another writer or a delete: read again
            written: Json = self._expect(what, answer)
            return written
        raise TemporaryError(f"{what}: kept conflicting with concurrent writers")

    async def _own_by_node(self, lease: Json, node: str) -> None:
        """Make the Node the owner of a lease that has none (a Node not there yet: next time)."""
        meta = lease.setdefault("metadata", {})
        if meta.get("ownerReferences"):
            return
        current = await self._get_node_json(node)
        if current is None:
            return
        meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": node, "uid": current["metadata"]["uid"]}
        ]
