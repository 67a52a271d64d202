"""`healer lab`: the daemon and its whole world in one process, with no setup.

Interactive by default (a live timeline; failures injected by typing commands), or one scenario
run to completion with a JSON report (``--scenario NAME --report FILE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import structlog

from healer.app.daemon import Daemon
from healer.app.tuning import Tuning
from healer.cloud.machines import Provider
from healer.cloud.registry import load_provider
from healer.config import ClusterConfig, HealerConfig, load_config
from healer.errors import ConfigError, StateError
from healer.lab import commands
from healer.lab.console import Console
from healer.lab.harness import LabHarness, LabTimings
from healer.lab.node_monitor import NodeMonitor
from healer.lab.report import with_iso_times
from healer.lab.scenario_kit import Context, preserve_state
from healer.lab.scenarios import SCENARIOS, STARTS_ITS_OWN_DAEMON, run_scenario
from healer.lab.timeline import configure_timeline, iso_utc
from healer.model import TAG_CLUSTER
from healer.provisioning.pools import ensure_pools
from healer.provisioning.userdata import render_user_data
from healer.store.recorder import Recorder
from healer.store.sqlite import BREAKER_BAD_UPGRADE, BREAKER_KINDS, DB_NAME, Store
from healer.store.statedir import LOCK_FILE, StateDirLock, claim
from healer.workflow.etcd_steps import EtcdOps

log = structlog.get_logger("healer.lab")

DEFAULT_LAB_STATE = Path("lab-state")
# A scenario run without --state-dir keeps its state here (fresh each run), for `healer history`.
SCENARIO_STATES = "scenarios"
HISTORY_FILE = ".lab-history"
LAB_TUNING = Tuning(recheck_interval=1.0, join_poll_interval=0.25, watch_timeout=30.0)

HELP = commands.help_text()


async def run_lab(
    *,
    config_path: Path,
    state_dir: Path | None,
    scenario: str | None,
    report: Path | None,
    kubeconfig: Path | None,
    dry_run: bool = False,
    reset: bool = False,
    node_monitor: NodeMonitor | None = None,
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
    if report is not None:
        # Before the scenario runs, not after it (when the report would be lost).
        problem = report_path_problem(report)
        if problem is not None:
            print(f"healer lab: --report {report}: {problem}", file=sys.stderr)
            return 2
    # A scenario without --state-dir runs on a fresh directory of its own, kept afterwards so
    # `healer history --state-dir lab-state/scenarios/NAME` can show what it did.
    own = state_dir is None and scenario is not None
    if state_dir is None:
        state_dir = scenario_state_dir(scenario) if scenario is not None else DEFAULT_LAB_STATE
    if reset or own:
        try:
            # Never from under a running lab or daemon: that one holds the lock.
            if (state_dir / LOCK_FILE).exists():
                StateDirLock.acquire(state_dir).release()
            said = reset_state(state_dir)
            if not own:
                print(said, flush=True)
        except (OSError, ResetRefused, StateError) as exc:
            print(f"healer lab: --reset: {exc}", file=sys.stderr)
            return 2
    # One daemon per state directory (healer.store.statedir), the lab's included.
    try:
        lock = claim(state_dir)
    except StateError as exc:
        print(f"healer lab: {exc}", file=sys.stderr)
        return 2
    console = Console(history=state_dir / HISTORY_FILE) if scenario is None else None
    configure_timeline(write=None if console is None else console.print)
    lock.settle()
    try:
        return await _run(
            config, state_dir, scenario, report, kubeconfig, dry_run, console, node_monitor
        )
    finally:
        lock.release()


def scenario_state_dir(scenario: str) -> Path:
    return DEFAULT_LAB_STATE / SCENARIO_STATES / scenario


def report_path_problem(report: Path) -> str | None:
    """Why the report could not be written to ``report`` (None: it can)."""
    if report.is_dir():
        return "is a directory"
    parent = report.parent
    if not parent.is_dir():
        return f"directory {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {parent} is not writable"
    if report.exists() and not os.access(report, os.W_OK):
        return "is not writable"
    return None


async def _run(
    config: HealerConfig,
    state_dir: Path,
    scenario: str | None,
    report: Path | None,
    kubeconfig: Path | None,
    dry_run: bool,
    console: Console | None,
    node_monitor: NodeMonitor | None = None,
) -> int:
    started = False
    try:
        async with running_lab(
            config,
            state_dir,
            scenario=scenario,
            kubeconfig=kubeconfig,
            dry_run=dry_run,
            node_monitor=node_monitor,
        ) as (harness, control, cluster):
            started = True
            if console is not None or scenario is None:
                await _interactive(harness, control, console or Console(history=None))
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
        print(_cannot_start(exc, state_dir), file=sys.stderr)
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
    result = with_iso_times(result)
    text = json.dumps(result, indent=2, default=str)
    if report is not None:
        try:
            report.write_text(text + "\n")
            log.info("lab.report_written", path=str(report), ok=result["ok"])
        except OSError as exc:  # checked before the run; the directory may have gone since
            print(f"healer lab: --report {report}: cannot write it: {exc}", file=sys.stderr)
            print(text)
    _summary(result)
    print(f"  state kept in {state_dir}/; to see what healer did:")
    print(f"    healer history --state-dir {shlex.quote(str(state_dir))}")
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
    node_monitor: NodeMonitor | None = None,
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
        node_monitor=node_monitor,
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
        control = LabDaemon(
            config, state_dir=state_dir, dry_run=dry_run, etcd=harness.etcd_for_daemon()
        )
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
    if saved:
        # The cluster's Nodes outlive a restart of healer (they are in etcd); the lab's API
        # server keeps them in memory only, and gets them back as the kubelets register again.
        # The daemon starts once they have: started first, it would see every Node deleted and
        # then back, and write that into the audit log.
        await harness.wait_ready(len(running), timeout=60.0)
    if scenario not in STARTS_ITS_OWN_DAEMON:
        await control.start()
    await harness.wait_ready(len(running), timeout=60.0)
    log.info("lab.cluster_ready", nodes=len(running))


class ResetRefused(Exception):
    """``--reset`` on a directory that does not look like a lab state directory."""


# What the lab and its daemon keep in a state directory; one of them marks a lab state (the lock
# alone: a lab stopped before it made anything else).
LAB_STATE_MARKS = ("lab-cloud.sqlite", "lab-kubeconfig.yaml", DB_NAME, LOCK_FILE)


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

    def __init__(
        self,
        config: HealerConfig,
        *,
        state_dir: Path,
        dry_run: bool,
        etcd: Mapping[str, EtcdOps] | None = None,
    ) -> None:
        self._etcd = etcd
        self._config = config
        self._state_dir = state_dir
        self._dry_run = dry_run
        self.daemon: Daemon | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.task is not None and not self.task.done():
            return
        self.daemon = Daemon(
            self._config,
            state_dir=self._state_dir,
            tuning=LAB_TUNING,
            dry_run=self._dry_run,
            etcd=self._etcd,
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


async def _interactive(harness: LabHarness, control: LabDaemon, console: Console) -> None:
    console.complete = lambda line: commands.completions(line, nodes=_node_names(harness))
    await console.start()
    console.print(HELP)
    for line in carried_over(harness.state_dir):
        console.print(line)
    try:
        while control.task is not None and not control.task.done():
            reading = asyncio.ensure_future(console.read())
            await asyncio.wait({reading, control.task}, return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():  # the daemon ended
                reading.cancel()
                break
            typed = reading.result()
            if typed is None:
                if console.interactive:  # Ctrl-D at the prompt
                    break
                await asyncio.wait({control.task})  # a pipe ran dry: on until a signal
                break
            words = typed.partition("#")[0].split()
            if not await _command(harness, words, control=control, say=console.print):
                break
    finally:
        console.close()


def _node_names(harness: LabHarness) -> list[str]:
    return sorted(m["name"] for m in harness.cloud.machines())


def carried_over(state_dir: Path) -> list[str]:
    """A notice of the pauses and open breakers a saved lab state carries over (none: [])."""
    if not (state_dir / DB_NAME).exists():
        return []
    store = Store.open(state_dir)
    try:
        lines = [
            f"  paused {scope} since {iso_utc(at)}" + (f": {note}" if note else "")
            for scope, (at, note) in store.pauses().items()
        ]
        for kind in BREAKER_KINDS:
            name = "bad-upgrade breaker" if kind == BREAKER_BAD_UPGRADE else "breaker"
            lines += [
                f"  {name} OPEN for cluster {cluster} since {iso_utc(at)}: {reason}"
                for cluster, (reason, at) in store.breakers(kind=kind).items()
            ]
    finally:
        store.close()
    if not lines:
        return []
    return [
        "NOTICE: carried over from the last lab session (healer remediates nothing they hold):",
        *lines,
        "  `reset` ends them, `breaker reset` only the breakers; `healer lab --reset` starts over",
    ]


async def _command(
    harness: LabHarness,
    words: list[str],
    *,
    control: LabDaemon | None = None,
    say: Callable[[str], None] = print,
) -> bool:
    """Carry out one typed command; False for quit. A mistake is answered, never raised."""
    nodes = _node_names(harness) if harness is not None else []
    try:
        command = commands.parse(words, nodes=nodes)
        if command is None:
            return True
        if command.name == "quit":
            return False
        await _carry_out(harness, command, control, say)
    except commands.CommandError as exc:
        say(f"  {exc}")
    except (KeyError, ValueError, StateError) as exc:
        say(f"  cannot do that: {exc}")
    return True


async def _carry_out(
    harness: LabHarness,
    command: commands.Command,
    control: LabDaemon | None,
    say: Callable[[str], None],
) -> None:
    name, node, number = command.name, command.node, command.number
    if name == "help":
        say(HELP)
    elif name == "nodes":
        ready = await harness.ready_nodes()
        for m in harness.cloud.machines():
            say(f"  {m['name']:<32} {m['state']:<10} {'Ready' if m['name'] in ready else '-'}")
    elif node is not None:
        if name != "crash" and node not in harness.kubelets:
            state = harness.machine_state(node)
            raise commands.CommandError(f"{name}: {node} runs no kubelet (its machine is {state})")
        if name == "crash":
            harness.crash(node)
        elif name == "hang":
            harness.hang(node)
        elif name == "bad-upgrade":
            await harness.bad_upgrade(node)
        else:
            await harness.reboot(node, downtime=harness.timings.reboot_downtime)
        log.info("lab.injected", node=node, failure=name)
    elif name == "partition" and number is not None:
        cut = commands.partition_cut(number, harness.pool_nodes(commands.PARTITION_POOL))
        harness.partition(cut)
        log.info("lab.injected", failure="partition", nodes=",".join(cut))
    elif name == "heal":
        harness.heal(list(harness.kubelets))
    elif name == "outage" and number is not None:
        harness.provider_outage(number)
        log.info("lab.injected", failure="provider-outage", until=time.time() + number)
    elif name == "clock-jump" and number is not None:
        daemon = control.daemon if control is not None else None
        if daemon is None:
            raise ValueError("the daemon is not running")
        # The daemon's wall clock only (healer/clock.py): the lab world keeps its time.
        daemon.clock.step(number)  # type: ignore[attr-defined]
        log.info(
            "lab.injected",
            failure="clock-jump",
            seconds=number,
            wall_minus_timeline=round(daemon.clock.wall() - daemon.clock.now(), 1),
        )
    elif name in ("reset", "breaker"):
        for line in reset_controls(harness.state_dir, breakers_only=name == "breaker"):
            say(f"  {line}")


def reset_controls(state_dir: Path, *, breakers_only: bool) -> list[str]:
    """Close every open breaker and, unless ``breakers_only``, end every pause, as
    `healer breaker reset` and `healer resume` do (audited as an operator's)."""
    from healer.clock import RealClock
    from healer.jobs.manual import reset_breakers

    store = Store.open(state_dir)
    try:
        now = RealClock.resume(state_dir).now()  # the daemon's timeline, as the CLI records
        done = [
            f"breaker reset for {cluster}"
            + (" (bad-upgrade breaker)" if kind == BREAKER_BAD_UPGRADE else "")
            for cluster, kind in reset_breakers(store, cluster=None, kinds=BREAKER_KINDS, at=now)
        ]
        if not breakers_only:
            for scope in list(store.pauses()):
                if store.set_paused(scope, False, at=now):
                    Recorder(store).record(
                        "operator.resumed",
                        at=now,
                        cluster=scope.partition(":")[2].partition("/")[0] or "*",
                        reason="Operator",
                        message=f"resumed {scope} (lab reset)",
                        log_line=False,
                    )
                    done.append(f"resumed {scope}")
    finally:
        store.close()
    what = "breaker was open" if breakers_only else "breaker was open and nothing was paused"
    return done or [f"no {what}"]
