"""A simulated kubelet (plus the machine's node agent) for the lab.

It owns playing one machine as the cluster sees it: registering its Node, renewing its Lease
(owned by the Node, so the garbage collector deletes it with the Node), posting Ready=True,
running the pods bound to it (a Pending pod is reported Running and Ready; a pod being deleted
is confirmed gone, as a kubelet does once its containers stopped), and publishing the node agent's messages (heartbeat, reboot, upgrade). It
talks to the API only through :class:`healer.kube.client.KubeClient`'s public methods, so the same
kubelet can drive the fake API server or a real one.

Failure scenarios are controls on a running kubelet: :meth:`crash` (the machine dies for good),
:meth:`partition` / :meth:`heal` (the machine runs but nothing it says gets out), :meth:`reboot`
(announced downtime, optionally an upgrade that never comes back), and :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from healer.clock import Clock, sleep_until_set
from healer.errors import HealerError
from healer.kube.client import KubeClient
from healer.kube.records import Json

log = structlog.get_logger(__name__)

Publish = Callable[[str, dict[str, Any]], Awaitable[None]]

READY_REASON = "KubeletReady"
READY_MESSAGE = "kubelet is posting ready status"


class KubeletState(enum.StrEnum):
    RUNNING = "running"
    PARTITIONED = "partitioned"
    REBOOTING = "rebooting"
    CRASHED = "crashed"
    STOPPED = "stopped"


class SimulatedKubelet:
    def __init__(
        self,
        *,
        client: KubeClient,
        node: str,
        labels: dict[str, str],
        clock: Clock,
        renew_interval: float = 1.0,
        publish: Publish | None = None,
        lease_duration: int = 40,
        status_report_interval: float | None = None,
    ) -> None:
        self.node = node
        self.labels = dict(labels)
        self._client = client
        self._clock = clock
        self._renew_interval = renew_interval
        self._publish_fn = publish
        self._lease_duration = lease_duration
        # An unchanged Ready is posted again only this often (None: every round).
        self._status_report_interval = status_report_interval
        self._lease: Json | None = None  # the lease as last written, renewed from
        self._registered = False
        self._crashed = False
        self._partitioned = False
        self._stopped = False
        self._rebooting = False
        self._upgrading = False
        self._back_at: float | None = None  # when a reboot ends; None while down for good
        self._wake = asyncio.Event()
        self._log = log.bind(node=node)

    @property
    def state(self) -> KubeletState:
        if self._stopped:
            return KubeletState.STOPPED
        if self._crashed:
            return KubeletState.CRASHED
        if self._rebooting:
            return KubeletState.REBOOTING
        if self._partitioned:
            return KubeletState.PARTITIONED
        return KubeletState.RUNNING

    @property
    def registered(self) -> bool:
        return self._registered

    # -------------------------------------------------------------- controls

    def crash(self) -> None:
        """The machine dies: nothing more is ever said, and :meth:`run` never returns (it only
        ends when cancelled), as a dead machine's processes do not exit cleanly."""
        self._crashed = True
        self._log.info("kubelet.crashed")
        self._wake.set()

    def partition(self) -> None:
        """Cut the machine off: it keeps running but reaches neither the API nor the broker."""
        self._partitioned = True
        self._log.info("kubelet.partitioned")
        self._wake.set()

    def heal(self) -> None:
        self._partitioned = False
        self._log.info("kubelet.healed")
        self._wake.set()

    async def reboot(self, downtime: float | None, *, upgrade: bool = False) -> None:
        """Announce a reboot (and first an upgrade, if ``upgrade``), then go silent for
        ``downtime`` seconds of clock time and come back: register, Ready=True, and publish
        ``booted``. ``downtime=None`` never comes back: a bad upgrade."""
        if upgrade:
            await self._publish("upgrade", {"v": 1, "event": "started"})
        await self._publish("reboot", {"v": 1, "event": "started"})
        self._rebooting = True
        self._upgrading = upgrade
        self._back_at = None if downtime is None else self._clock.now() + downtime
        self._log.info("kubelet.reboot_started", downtime=downtime, upgrade=upgrade)
        self._wake.set()

    def stop(self) -> None:
        """Clean shutdown: :meth:`run` returns at its next step."""
        self._stopped = True
        self._wake.set()

    # -------------------------------------------------------------- the loop

    async def run(self) -> None:
        self._log.info("kubelet.started", renew_interval=self._renew_interval)
        while not self._stopped:
            if self._crashed:
                await asyncio.Event().wait()  # dead: wait to be cancelled, never return
            if self._rebooting and self._back_at is not None and self._clock.now() >= self._back_at:
                await self._boot()
            if not self._rebooting and not self._partitioned:
                await self._tick()
            await self._sleep()
        self._log.info("kubelet.stopped")

    async def _boot(self) -> None:
        self._rebooting = False
        self._back_at = None
        # A booting kubelet registers again: the node may have been deleted while it was down.
        self._registered = False
        await self._tick()
        await self._publish("reboot", {"v": 1, "event": "booted"})
        if self._upgrading:
            self._upgrading = False
            await self._publish("upgrade", {"v": 1, "event": "finished"})
        self._log.info("kubelet.booted")

    async def _tick(self) -> None:
        """One round of a live kubelet: register if needed, renew the lease, post Ready, and
        send the agent heartbeat. API failures are logged and retried next round."""
        try:
            if not self._registered:
                created = await self._client.register_node(self.node, self.labels)
                self._registered = True
                self._log.info("kubelet.registered", adopted=not created)
            self._lease = await self._client.renew_lease(
                self.node, self.node, self._lease_duration, last=self._lease
            )
            if not await self._client.set_node_ready(
                self.node,
                "True",
                READY_REASON,
                READY_MESSAGE,
                report_every=self._status_report_interval,
            ):
                # A real kubelet only registers at start-up; its node was deleted under it.
                self._log.warning("kubelet.node_missing")
            else:
                await self._sync_pods()
        except HealerError as exc:
            self._lease = None
            self._log.warning("kubelet.api_error", error=str(exc), error_type=type(exc).__name__)
        await self._publish("heartbeat", {"v": 1})

    async def _sync_pods(self) -> None:
        """Run what is bound to this node: start Pending pods, finish deleted ones."""
        for pod in await self._client.pods_on_node(self.node):
            if pod.deleting:
                # Containers stopped: the kubelet's final delete (grace 0) removes the object.
                await self._client.delete_pod(pod.namespace, pod.name, 0)
                self._log.info("kubelet.pod_stopped", pod=f"{pod.namespace}/{pod.name}")
            elif pod.phase == "Pending":
                await self._client.set_pod_running(pod.namespace, pod.name)
                self._log.info("kubelet.pod_started", pod=f"{pod.namespace}/{pod.name}")

    async def _publish(self, channel: str, payload: dict[str, Any]) -> None:
        if self._publish_fn is None or self._partitioned or self._crashed:
            return
        try:
            await self._publish_fn(channel, payload)
        except Exception as exc:  # the agent keeps going when the broker is down; say so
            self._log.warning("kubelet.publish_failed", channel=channel, error=str(exc))

    async def _sleep(self) -> None:
        """Sleep one renew interval on the clock, or less when a control wakes us."""
        deadline = self._clock.now() + self._renew_interval
        if self._rebooting and self._back_at is not None:
            deadline = min(deadline, self._back_at)
        if self._wake.is_set():
            self._wake.clear()
            return
        await sleep_until_set(self._clock, deadline, self._wake)
        self._wake.clear()
