"""`healer lab`: the daemon and its whole world in one process, with no setup.

Interactive by default (a live timeline; failures injected by typing commands), or one scenario
run to completion with a JSON report (``--scenario NAME --report FILE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import structlog

from healer.app.daemon import Daemon
from healer.app.tuning import Tuning
from healer.cloud.machines import Provider
from healer.cloud.registry import load_provider
from healer.config import ClusterConfig, HealerConfig, load_config
from healer.errors import ConfigError, StateError
from healer.lab.harness import LabHarness, LabTimings
from healer.lab.scenario_kit import Context, preserve_state
from healer.lab.scenarios import SCENARIOS, STARTS_ITS_OWN_DAEMON, run_scenario
from healer.lab.timeline import configure_timeline
from healer.model import TAG_CLUSTER
from healer.provisioning.pools import ensure_pools
from healer.provisioning.userdata import render_user_data
from healer.store.sqlite import DB_NAME, Store
from healer.store.statedir import LOCK_FILE, StateDirLock, claim

log = structlog.get_logger("healer.lab")

DEFAULT_LAB_STATE = Path("lab-state")
LAB_TUNING = Tuning(recheck_interval=1.0, join_poll_interval=0.25, watch_timeout=30.0)

HELP = """\
lab commands (type and press Enter):
  nodes                        list lab machines and whether their node is Ready
  crash NODE | hang NODE       the machine dies | hangs (cloud says running)
  reboot NODE                  a planned reboot that comes back
  bad-upgrade NODE             an upgrade whose reboot never comes back
  partition FRACTION           cut that fraction of the workers pool off (e.g. 0.6)
  heal                         end every partition
  outage SECONDS               the lab cloud's API fails for that long
  clock-jump SECONDS           step the daemon's wall clock (e.g. 3600 or -3600), as NTP would
  quit
"""


async def run_lab(
    *,
    config_path: Path,
    state_dir: Path | None,
    scenario: str | None,
    report: Path | None,
    kubeconfig: Path | None,
    dry_run: bool = False,
    reset: bool = False,
) -> int:
    if scenario is not None and scenario not in SCENARIOS:
        print(
            f"healer lab: unknown scenario {scenario!r}; choose from: {', '.join(SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"healer lab: {exc}", file=sys.stderr)
        return 2
    temp: tempfile.TemporaryDirectory[str] | None = None
    if state_dir is None:
        if scenario is not None:
            temp = tempfile.TemporaryDirectory(prefix="healer-lab-")
            state_dir = Path(temp.name)
        else:
            state_dir = DEFAULT_LAB_STATE
    if reset and temp is None:
        try:
            # Never from under a running lab or daemon: that one holds the lock.
            if (state_dir / LOCK_FILE).exists():
                StateDirLock.acquire(state_dir).release()
            print(reset_state(state_dir), flush=True)
        except (OSError, ResetRefused, StateError) as exc:
            print(f"healer lab: --reset: {exc}", file=sys.stderr)
            return 2
    # One daemon per state directory (healer.store.statedir), the lab's included.
    try:
        lock = claim(state_dir)
    except StateError as exc:
        print(f"healer lab: {exc}", file=sys.stderr)
        return 2
    configure_timeline()
    lock.settle()
    try:
        return await _run(
            config, state_dir, scenario, report, kubeconfig, dry_run, saved=temp is None
        )
    finally:
        lock.release()
        if temp is not None:
            temp.cleanup()


async def _run(
    config: HealerConfig,
    state_dir: Path,
    scenario: str | None,
    report: Path | None,
    kubeconfig: Path | None,
    dry_run: bool,
    *,
    saved: bool,
) -> int:
    """``saved``: the state directory is the user's (kept between runs), not a temporary one."""
    started = False
    try:
        async with running_lab(
            config, state_dir, scenario=scenario, kubeconfig=kubeconfig, dry_run=dry_run
        ) as (harness, control, cluster):
            started = True
            if scenario is None:
                await _interactive(harness, control)
                print(
                    f"lab state kept in {state_dir}/: the next `healer lab` goes on from it, "
                    "`healer lab --reset` starts over",
                    flush=True,
                )
                return 0
            return await _scenario(harness, control, cluster, scenario, report, state_dir)
    except Exception as exc:
        if started:
            raise
        if not isinstance(exc, TimeoutError):
            log.exception("lab.start_failed")
        print(_cannot_start(exc, state_dir if saved else None), file=sys.stderr)
        return 1


async def _scenario(
    harness: LabHarness,
    control: LabDaemon,
    cluster: ClusterConfig,
    scenario: str,
    report: Path | None,
    state_dir: Path,
) -> int:
    preserved = preserve_state(state_dir) if scenario in STARTS_ITS_OWN_DAEMON else None
    ctx = Context(
        harness=harness,
        store=Store.open(state_dir),
        cluster=cluster,
        control=control,
        preserved_state=preserved,
    )
    try:
        result = await run_scenario(scenario, ctx)
    finally:
        ctx.store.close()
    text = json.dumps(result, indent=2, default=str)
    if report is not None:
        report.write_text(text + "\n")
        log.info("lab.report_written", path=str(report), ok=result["ok"])
    _summary(result)
    return 0 if result["ok"] else 1


@contextlib.asynccontextmanager
async def running_lab(
    config: HealerConfig,
    state_dir: Path,
    *,
    scenario: str | None = None,
    kubeconfig: Path | None = None,
    dry_run: bool = False,
    timings: LabTimings | None = None,
) -> AsyncIterator[tuple[LabHarness, LabDaemon, ClusterConfig]]:
    """The lab world and its daemon started on ``state_dir`` (fresh or saved) with every running
    machine's node Ready; all stopped again on leaving, as quitting the lab does."""
    cluster = config.clusters[0]
    harness = LabHarness(
        state_dir=state_dir,
        cluster=cluster.name,
        pool_roles={p.name: p.role for p in cluster.pools},
        timings=timings or LabTimings(),
        kubeconfig=kubeconfig,
    )
    provider: Provider | None = None
    control: LabDaemon | None = None
    try:
        await harness.start()
        config = harness.daemon_config(config)
        cluster = config.clusters[0]
        provider = load_provider(
            cluster.provider.plugin,
            cluster=cluster.name,
            options=cluster.provider.options,
            credentials=cluster.provider.credentials,
            state_dir=state_dir,
        )
        control = LabDaemon(config, state_dir=state_dir, dry_run=dry_run)
        await start_cluster(harness, control, cluster, provider, scenario=scenario)
        yield harness, control, cluster
    finally:
        if control is not None:
            await control.stop()
        if provider is not None:
            await provider.close()
        await harness.stop()


async def start_cluster(
    harness: LabHarness,
    control: LabDaemon,
    cluster: ClusterConfig,
    provider: Provider,
    *,
    scenario: str | None = None,
) -> None:
    """Create the pools on a fresh lab cloud, start the daemon and wait for the running machines'
    nodes to be Ready.

    A saved lab state is the daemon's to heal, as a cluster after a restart of healer is: a
    machine that crashed or was destroyed before the lab quit is not waited for, and no pool is
    topped up here (a remediation left half-way creates its own replacement when it resumes;
    anything else short is drift repair's).
    """
    saved = [m for m in harness.cloud.machines() if m["tags"].get(TAG_CLUSTER) == cluster.name]
    created = [] if saved else await ensure_pools(cluster, provider, user_data=render_user_data)
    running = harness.running_machines()
    log.info(
        "lab.cluster_ready_wait",
        machines=len(running),
        created=len(created),
        saved=len(saved),
        not_running=",".join(m["name"] for m in saved if m["state"] != "running"),
        state_dir=str(harness.state_dir),
    )
    if scenario not in STARTS_ITS_OWN_DAEMON:
        await control.start()
    await harness.wait_ready(len(running), timeout=60.0)
    log.info("lab.cluster_ready", nodes=len(running))


class ResetRefused(Exception):
    """``--reset`` on a directory that does not look like a lab state directory."""


# What the lab and its daemon keep in a state directory; one of them marks a lab state.
LAB_STATE_MARKS = ("lab-cloud.sqlite", "lab-kubeconfig.yaml", DB_NAME)


def reset_state(state_dir: Path) -> str:
    """Delete ``state_dir`` (a lab state directory) and say what went.

    Refused for a directory holding none of the lab's files, so a mistyped ``--state-dir`` never
    deletes anything else."""
    if not state_dir.exists():
        return f"healer lab: --reset: {state_dir} does not exist; nothing to delete"
    entries = sorted(p.name for p in state_dir.iterdir())
    if entries and not any(mark in entries for mark in LAB_STATE_MARKS):
        raise ResetRefused(
            f"{state_dir} holds none of the lab's files ({', '.join(LAB_STATE_MARKS)}); "
            "not deleting it"
        )
    shutil.rmtree(state_dir)
    listed = ", ".join(entries) if entries else "nothing (it was empty)"
    return f"healer lab: --reset: deleted {state_dir}: {listed}"


def _cannot_start(exc: BaseException, state_dir: Path | None) -> str:
    """Why the lab did not start and, for a saved state, how to start from a clean one."""
    why = f"healer lab: the lab did not start: {type(exc).__name__}: {exc}"
    if state_dir is None:
        return why
    return (
        f"{why}\n"
        f"  The lab state saved in {state_dir}/ may be what stops it. To start from a clean one:\n"
        f"    healer lab --reset --state-dir {state_dir}   (or: make clean, then make lab)"
    )


class LabDaemon:
    """The daemon the lab runs in its own process, which scenarios may stop and start again."""

    def __init__(self, config: HealerConfig, *, state_dir: Path, dry_run: bool) -> None:
        self._config = config
        self._state_dir = state_dir
        self._dry_run = dry_run
        self.daemon: Daemon | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.task is not None and not self.task.done():
            return
        self.daemon = Daemon(
            self._config, state_dir=self._state_dir, tuning=LAB_TUNING, dry_run=self._dry_run
        )
        self.task = asyncio.create_task(self.daemon.run(), name="daemon")
        log.info("lab.daemon_started", state_dir=str(self._state_dir))

    async def stop(self) -> None:
        task, self.task, self.daemon = self.task, None, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        log.info("lab.daemon_stopped")


def _summary(result: dict) -> None:  # type: ignore[type-arg]
    print(
        f"\nscenario {result['scenario']}: {'OK' if result['ok'] else 'NOT OK'} "
        f"in {result['duration_s']}s"
    )
    for name, value in result["expectations"].items():
        print(f"  {'yes' if value else 'NO ':<4} {name}")
    inv = result["invariants"]
    print(
        f"  machines {inv['machines_in_cloud']}/{inv['nodes_expected']}, "
        f"orphaned {len(inv['orphaned_machines'])}, double deletions {len(inv['double_deletions'])}"
    )
    for r in result["remediations"]:
        print(f"  remediation {r['node']} -> {r['replacement']}: {r['result']}")
    for r in result.get("refusals", []):
        print(f"  refused {r['node'] or 'cluster-wide'}: {r['reason']}")


async def _interactive(harness: LabHarness, control: LabDaemon) -> None:
    print(HELP, flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (ValueError, OSError):
        reader.feed_eof()
    stdin_open = True
    while control.task is not None and not control.task.done():
        if not stdin_open:
            await asyncio.wait({control.task})
            break
        line = await reader.readline()
        if not line:
            stdin_open = False  # no terminal: keep running until a signal stops us
            continue
        if not await _command(harness, line.decode().split(), control=control):
            break


async def _command(
    harness: LabHarness, words: list[str], *, control: LabDaemon | None = None
) -> bool:
    if not words:
        return True
    cmd, args = words[0], words[1:]
    try:
        if cmd in ("quit", "exit"):
            return False
        if cmd == "nodes":
            ready = await harness.ready_nodes()
            for m in harness.cloud.machines():
                print(
                    f"  {m['name']:<32} {m['state']:<10} {'Ready' if m['name'] in ready else '-'}"
                )
        elif cmd in ("crash", "hang", "reboot", "bad-upgrade") and args:
            node = args[0]
            if cmd == "crash":
                harness.crash(node)
            elif cmd == "hang":
                harness.hang(node)
            elif cmd == "bad-upgrade":
                await harness.bad_upgrade(node)
            else:
                await harness.reboot(node, downtime=harness.timings.reboot_downtime)
            log.info("lab.injected", node=args[0], failure=cmd)
        elif cmd == "partition" and args:
            pool = harness.pool_nodes("workers")
            cut = pool[: math.ceil(len(pool) * float(args[0]))]
            harness.partition(cut)
            log.info("lab.injected", failure="partition", nodes=",".join(cut))
        elif cmd == "heal":
            harness.heal(list(harness.kubelets))
        elif cmd == "outage" and args:
            harness.provider_outage(float(args[0]))
            log.info("lab.injected", failure="provider-outage", until=time.time() + float(args[0]))
        elif cmd == "clock-jump" and args:
            daemon = control.daemon if control is not None else None
            if daemon is None:
                raise ValueError("the daemon is not running")
            # The daemon's wall clock only (healer/clock.py): the lab world keeps its time.
            daemon.clock.step(float(args[0]))  # type: ignore[attr-defined]
            log.info(
                "lab.injected",
                failure="clock-jump",
                seconds=float(args[0]),
                wall_minus_timeline=round(daemon.clock.wall() - daemon.clock.now(), 1),
            )
        else:
            print(HELP)
    except (KeyError, ValueError) as exc:
        print(f"  cannot do that: {exc}")
    return True
