"""The fault suite's world: the lab (fake API server, lab cloud, simulated kubelets) in the test
process, the daemon as a real `healer run` subprocess on it, and bounded waits between them.

Everything listens on 127.0.0.1 only, every wait has a deadline, and every daemon a test starts
is killed when its world closes, whatever the test did. ``scale(short, full)`` picks a test's
size: the short one in `make test`, the full one in `make faults` (``HEALER_FAULTS_FULL=1`` or
``pytest --faults-full``); see docs/faults.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from healer.cloud.registry import load_provider
from healer.config import ClusterConfig, load_config
from healer.lab.harness import LabHarness, LabTimings
from healer.lab.report import invariants
from healer.model import Role
from healer.provisioning.pools import ensure_pools
from healer.provisioning.userdata import render_user_data
from healer.store.sqlite import Store
from tests.helpers import fast_lab_config, start_healer_run
from tests.plugins.kube import Predicate, wait_for
from tests.plugins.mqtt import free_port

T = TypeVar("T")

FULL_ENV = "HEALER_FAULTS_FULL"
SEED_ENV = "HEALER_FAULTS_SEED"
_full = os.environ.get(FULL_ENV, "") == "1"

ROLES = {"control-plane": Role.CONTROL_PLANE, "workers": Role.WORKER}
SIZES = {"control-plane": 1, "workers": 3}
# Second-scale lab timings, as tests/test_crash_resume.py uses: a crash is seen in ~2 s.
TIMINGS = LabTimings(lease_grace=1.0, monitor_period=0.1, renew_interval=0.25, boot_delay=0.3)
STOP_BUDGET = 10.0  # SIGTERM -> exit, well inside the unit's TimeoutStopSec
LOOPBACK = "127.0.0.1"


def full_run() -> bool:
    """True in the full run (`make faults`), False in the short one (`make test`)."""
    return _full


def set_full_run(value: bool) -> None:
    """The conftest's switch for ``--faults-full``."""
    global _full
    _full = value


def scale(short: T, full: T) -> T:
    """``short`` in `make test`, ``full`` in `make faults`."""
    return full if _full else short


async def until(
    predicate: Predicate,
    timeout: float,
    what: str,
    *,
    tail: Callable[[], str] | None = None,
    every: float = 0.05,
) -> None:
    """Wait until ``predicate()`` (sync or async) is true; AssertionError after ``timeout`` s,
    naming ``what`` and adding ``tail()`` (a daemon's log, say)."""
    try:
        await wait_for(predicate, timeout=timeout, interval=every)
    except TimeoutError:
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for {what}\n{tail() if tail else ''}"
        ) from None


class Daemon:
    """One `healer run` subprocess. Its log file may be shared with earlier runs of the same
    world (appended); :meth:`events` reads only this run's lines."""

    def __init__(
        self, proc: asyncio.subprocess.Process, log: Path, offset: int, failpoints: str | None
    ) -> None:
        self.proc = proc
        self.log = log
        self.failpoints = failpoints  # the HEALER_FAILPOINTS it was given
        self._offset = offset

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def tail(self, chars: int = 4000) -> str:
        if not self.log.exists():
            return ""
        with self.log.open("rb") as f:
            f.seek(self._offset)
            return f.read().decode(errors="replace")[-chars:]

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """This run's JSON log lines (all, or those whose ``event`` is ``name``)."""
        if not self.log.exists():
            return []
        with self.log.open("rb") as f:
            f.seek(self._offset)
            text = f.read().decode(errors="replace")
        out = []
        for line in text.splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by SIGKILL
            if name is None or entry.get("event") == name:
                out.append(entry)
        return out

    def logged(self, name: str) -> bool:
        return bool(self.events(name))

    def answered_requests(self) -> list[str]:
        """The ids of the reboot requests this run handled (``reboot.answered``), repeats kept:
        the daemon's record of each agent message that carries an id of its own."""
        return [str(e.get("request")) for e in self.events("reboot.answered")]

    async def ready(self, timeout: float = 30.0) -> None:
        """Wait for ``daemon.ready`` (the cluster listed, the state loaded)."""

        def ready() -> bool:
            if not self.running:
                raise AssertionError(f"daemon exited with {self.proc.returncode}\n{self.tail()}")
            return self.logged("daemon.ready")

        await until(ready, timeout, "daemon.ready", tail=self.tail)

    async def wait(self, timeout: float) -> int:
        """The exit code (negative: the signal), or AssertionError after ``timeout`` s."""
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"daemon {self.pid} still running after {timeout:.0f}s\n{self.tail()}"
            ) from None

    async def kill(self) -> int:
        """SIGKILL, as a power cut: no cleanup."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        return await self.wait(10.0)

    async def stop(self, budget: float = STOP_BUDGET) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds taken). Killed, and AssertionError, past ``budget``."""
        started = time.monotonic()
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            rc = await asyncio.wait_for(self.proc.wait(), budget)
        except TimeoutError:
            await self.kill()
            raise AssertionError(
                f"daemon {self.pid} ignored SIGTERM for {budget:.0f}s\n{self.tail()}"
            ) from None
        return rc, time.monotonic() - started


async def spawn_daemon(
    config: Path,
    state: Path,
    log: Path,
    *,
    failpoints: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Daemon:
    """Start `healer run -c CONFIG --state-dir STATE`, output appended to ``log``.

    ``failpoints`` is a HEALER_FAILPOINTS spec (healer/failpoints.py), e.g.
    ``"workflow.drain.after=kill"``. No systemd variables leak in from the test's environment.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    more = dict(env or {})
    if failpoints:
        more["HEALER_FAILPOINTS"] = failpoints
    proc = await start_healer_run(config, state, log, env=more)
    return Daemon(proc, log, offset, failpoints)


def fault_config(
    kubeconfig: Path,
    *,
    sizes: Mapping[str, int] | None = None,
    remediation: Mapping[str, Any] | None = None,
    top: Mapping[str, Any] | None = None,
    **cluster_changes: Any,
) -> dict[str, Any]:
    """The daemon's config for a fault test: tests/helpers.py's fast lab config with the pools
    of ``sizes``, ``remediation`` merged into its remediation section, ``top`` merged into the
    top level (``mqtt``, ``webhook``, ``metrics``...). A listener left unset is put on a free
    loopback port, never the default 0.0.0.0."""
    sizes = sizes or SIZES
    pools = [
        {"name": name, "size": size}
        | ({"role": "control-plane"} if ROLES.get(name) is Role.CONTROL_PLANE else {})
        for name, size in sizes.items()
    ]
    data = fast_lab_config(kubeconfig, pools=pools, **cluster_changes)
    cluster = data["clusters"][0]
    cluster["remediation"] = {**cluster["remediation"], **(remediation or {})}
    for key, value in (top or {}).items():
        data[key] = value
    webhook = data.get("webhook")
    if isinstance(webhook, dict):
        webhook.setdefault("listen", f"{LOOPBACK}:{free_port()}")
    metrics = data.get("metrics")
    if isinstance(metrics, dict):
        metrics.setdefault("listen", f"{LOOPBACK}:{free_port()}")
    return data


@dataclass
class World:
    """The lab world of one test and the daemons started on it."""

    harness: LabHarness
    state: Path
    config_path: Path
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.state / "daemon.log"

    def write_config(self, data: Mapping[str, Any]) -> Path:
        self.config_path.write_text(yaml.safe_dump(dict(data)))
        return self.config_path

    def cluster(self) -> ClusterConfig:
        return load_config(self.config_path).clusters[0]

    def store(self) -> Store:
        """The daemon's state database, opened read-write by the test (close it)."""
        return Store.open(self.state)

    async def daemon(
        self,
        *,
        failpoints: str | None = None,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
    ) -> Daemon:
        """Start `healer run` on this world (killed when the world closes)."""
        proc = await spawn_daemon(
            self.config_path, self.state, log or self.log, failpoints=failpoints, env=env
        )
        self.daemons.append(proc)
        return proc

    async def invariants(self, store: Store) -> dict[str, Any]:
        """The lab's invariants (healer/lab/report.py): no orphaned machine, no machine
        destroyed twice, the cloud holding what the pools ask for."""
        return invariants(
            cluster=self.cluster(),
            machines=self.harness.cloud.machines(include_terminated=True),
            destroy_log=self.harness.cloud.destroy_log(),
            ready_nodes=await self.harness.ready_nodes(),
            store=store,
        )

    async def kill_all(self) -> None:
        for daemon in self.daemons:
            if daemon.running:
                await daemon.kill()


@contextlib.asynccontextmanager
async def lab_world(
    state: Path,
    *,
    sizes: Mapping[str, int] | None = None,
    timings: LabTimings = TIMINGS,
    with_broker: bool = False,
    config: Callable[[Path], Mapping[str, Any]] | None = None,
) -> AsyncIterator[World]:
    """The lab's API server, cloud and kubelets in this process, its pools provisioned and Ready,
    and the daemon's config written (``config(kubeconfig)``, default :func:`fault_config`).
    The daemons started on it are killed on the way out."""
    sizes = dict(sizes or SIZES)
    harness = LabHarness(
        state_dir=state,
        pool_roles={name: ROLES.get(name, Role.WORKER) for name in sizes},
        timings=timings,
        with_broker=with_broker,
    )
    await harness.start()
    world: World | None = None
    try:
        data = (config or (lambda kc: fault_config(kc, sizes=sizes)))(harness.kubeconfig)
        world = World(harness=harness, state=state, config_path=state / "healer.yaml")
        world.write_config(data)
        provider = load_provider("lab", cluster="lab", options={}, credentials={}, state_dir=state)
        await ensure_pools(world.cluster(), provider, user_data=render_user_data)
        await provider.close()
        await harness.wait_ready(sum(sizes.values()))
        yield world
    finally:
        if world is not None:
            await world.kill_all()
        await harness.stop()


async def restart_apiserver(harness: LabHarness, down: float) -> None:
    """Stop the lab's API server (its watches end, connections are refused) and start it again
    on the same port after ``down`` seconds, its objects kept, as an apiserver restart over
    etcd keeps them."""
    api = harness.api
    assert api is not None, "the world runs against an external API server"
    port = int(api.url.rsplit(":", 1)[1])
    await api.stop()
    await asyncio.sleep(down)
    await api.start(LOOPBACK, port)
