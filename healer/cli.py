"""The `healer` command: run | validate | lab | status | history | pause | resume | breaker | remediate
| plan | apply | destroy.

Commands that inspect or steer a running daemon work on the state database it shares
(``--state-dir`` or HEALER_STATE_DIR), so they need no socket and work while it is down too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from healer.config import HealerConfig, load_config
from healer.errors import ConfigError

DEFAULT_CONFIG = "/etc/healer/healer.yaml"
DEFAULT_STATE_DIR = "/var/lib/healer"
EXIT_USAGE = 2


def _ts(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def state_dir_for(args: argparse.Namespace, config: HealerConfig | None = None) -> Path:
    if getattr(args, "state_dir", None):
        return Path(args.state_dir)
    if os.environ.get("HEALER_STATE_DIR"):
        return Path(os.environ["HEALER_STATE_DIR"])
    if config is not None and config.state_dir is not None:
        return config.state_dir
    return Path(DEFAULT_STATE_DIR)


def _config_path(args: argparse.Namespace) -> str:
    return args.config or os.environ.get("HEALER_CONFIG") or DEFAULT_CONFIG


def _as_state_owner(state_dir: Path) -> None:
    """Run as root, become the owner of the state directory before touching the database.

    SQLite creates its -wal and -shm files as whoever opens the database first; a root-owned
    one in /var/lib/healer would lock the daemon (User=healer) out of its own state. Dropping
    to the directory's owner is what `sudo -u healer healer ...` does, done for the operator.
    """
    if os.geteuid() != 0 or not state_dir.is_dir():
        return
    st = state_dir.stat()
    if st.st_uid == 0:
        return
    os.setgroups([])
    os.setgid(st.st_gid)
    os.setuid(st.st_uid)


def _open_store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from healer.store.sqlite import DB_NAME, Store

    state_dir = state_dir_for(args)
    _as_state_owner(state_dir)
    if not (state_dir / DB_NAME).exists():
        raise ConfigError(
            f"no healer state in {state_dir} (looked for {DB_NAME}); pass --state-dir or set "
            "HEALER_STATE_DIR to the daemon's state directory"
        )
    return Store.open(state_dir)


# -- commands ---------------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    from healer.cloud.registry import available_plugins

    path = _config_path(args)
    config = load_config(path)
    plugins = available_plugins()
    problems = [
        f"{path}: clusters[{i}].provider.plugin: unknown plugin {c.provider.plugin!r} "
        f"(available: {', '.join(plugins) or 'none'})"
        for i, c in enumerate(config.clusters)
        if c.provider.plugin not in plugins
    ]
    # What `healer apply` would need from each provider and cannot get (docs/provisioning.md).
    problems += [f"{path}: {p}" for p in _infra_problems(config)]
    # Files and secrets the machines' configuration refers to (docs/security.md).
    from healer.provisioning.userdata import check_references

    problems += [p for c in config.clusters for p in check_references(c, where=f"{path}: ")]
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    print(f"{path}: OK")
    for c in config.clusters:
        pools = ", ".join(f"{p.name} ({p.role}, {p.size})" for p in c.pools)
        print(f"  cluster {c.name}: provider {c.provider.plugin}; pools: {pools}")
        for line in _infra_report(c):
            print(f"    {line}")
    # Valid but probably unwanted (unarbitrated reboots, ...): said, not refused.
    from healer.config.warnings import config_warnings

    for warning in config_warnings(config):
        print(f"{path}: warning: {warning}", file=sys.stderr)
    return 0


def _infra_problems(config: HealerConfig) -> list[str]:
    from healer.cloud.resources import capabilities_for
    from healer.provisioning.infra import desired_state

    return [
        problem
        for c in config.clusters
        for problem in desired_state(
            c, capabilities_for(c.provider.plugin, c.provider.options)
        ).problems
    ]


def _infra_report(cluster: Any) -> list[str]:
    from healer.cloud.resources import capabilities_for
    from healer.provisioning.infra import capability_report

    caps = capabilities_for(cluster.provider.plugin, cluster.provider.options)
    return capability_report(cluster, caps)


def cmd_plan(args: argparse.Namespace) -> int:
    from healer.provisioning.commands import run_plan

    path = _config_path(args)
    return run_plan(args, config_path=path, state_dir=_provisioning_state_dir(args, path))


def cmd_apply(args: argparse.Namespace) -> int:
    from healer.provisioning.commands import run_apply

    path = _config_path(args)
    return run_apply(args, config_path=path, state_dir=_provisioning_state_dir(args, path))


def cmd_destroy(args: argparse.Namespace) -> int:
    from healer.provisioning.commands import run_destroy

    path = _config_path(args)
    return run_destroy(args, config_path=path, state_dir=_provisioning_state_dir(args, path))


def _provisioning_state_dir(args: argparse.Namespace, path: str) -> Path:
    # The config's stateDir counts too; a config error surfaces in the command itself.
    try:
        config: HealerConfig | None = load_config(path)
    except ConfigError:
        config = None
    return state_dir_for(args, config)


def cmd_run(args: argparse.Namespace) -> int:
    from healer.app import Daemon
    from healer.jobs.systemd import Notifier
    from healer.telemetry.logs import configure

    path = Path(_config_path(args))
    config = load_config(path)
    configure(config.log_format)
    import structlog

    from healer.config.warnings import config_warnings

    for warning in config_warnings(config):
        structlog.get_logger("healer.cli").warning("config.warning", detail=warning)
    # Under systemd (Type=notify) this reports READY/STATUS/WATCHDOG/STOPPING; elsewhere no-op.
    notifier = Notifier.from_env()
    daemon = Daemon(
        config,
        state_dir=state_dir_for(args, config),
        dry_run=args.dry_run,
        notifier=notifier,
        config_path=path,
    )
    return _run_until_signalled(daemon.run(), on_stop=notifier.stopping, on_reload=daemon.reload)


def _run_until_signalled(
    coro: Any,
    *,
    on_stop: Callable[[], object] | None = None,
    on_reload: Callable[[], Awaitable[object]] | None = None,
) -> int:
    """Run ``coro`` until SIGTERM/SIGINT (cancelled: workflows checkpoint and resume at the next
    start); SIGHUP calls ``on_reload`` (ExecReload= in the unit sends it)."""
    import structlog

    log = structlog.get_logger("healer.cli")

    async def main() -> None:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[object]] = set()

        def stop(sig: signal.Signals) -> None:
            log.info("daemon.stopping", signal=sig.name)
            if on_stop is not None:
                on_stop()
            task.cancel()

        def reload() -> None:
            assert on_reload is not None
            log.info("config.reload_requested", signal="SIGHUP")
            job: asyncio.Task[object] = loop.create_task(on_reload())  # type: ignore[arg-type]
            reloads.add(job)
            job.add_done_callback(reloads.discard)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop, sig)
        if on_reload is not None:
            loop.add_signal_handler(signal.SIGHUP, reload)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.info("daemon.stopped")

    asyncio.run(main())
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    from healer.lab.main import run_lab

    config_path = args.config or str(Path(__file__).resolve().parent.parent / "config" / "lab.yaml")
    return asyncio.run(
        run_lab(
            config_path=Path(config_path),
            state_dir=Path(args.state_dir) if args.state_dir else None,
            scenario=args.scenario,
            report=Path(args.report) if args.report else None,
            kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
            dry_run=args.dry_run,
        )
    )


def cmd_history(args: argparse.Namespace) -> int:
    store = _open_store(args)
    entries = store.audit_log(cluster=args.cluster, node=args.node, limit=args.limit)
    workflows = store.workflows(cluster=args.cluster, node=args.node) if args.node else []
    if args.json:
        out = {
            "audit": [e.__dict__ for e in entries],
            "workflows": [
                wf.__dict__ | {"role": str(wf.role), "steps": store.steps(wf.id)}
                for wf in workflows
            ],
        }
        print(json.dumps(out, indent=2, default=str))
        return 0
    if not entries:
        print("no history" + (f" for node {args.node}" if args.node else ""))
        return 0
    shown: set[str] = set()  # each piece of evidence once, under the first entry it explains
    for e in entries:
        where = f"{e.cluster}/{e.node}" if e.node else e.cluster
        print(f"{_ts(e.at)}  {e.event:<28} {where:<32} {e.reason}: {e.message}")
        if args.node:
            for item in _evidence_lines(e.evidence):
                if item not in shown:
                    shown.add(item)
                    print(f"{'':26}  evidence: {item}")
    for wf in workflows:
        print(
            f"\nworkflow {wf.id} ({wf.state}): {wf.node} -> {wf.replacement_name}, reason {wf.reason}"
        )
        for s in store.steps(wf.id):
            print(f"  {_ts(s['at'])}  {s['step']:<16} {s['status']:<10} {_short(s['detail'])}")
    return 0


def _short(detail: Any, limit: int = 120) -> str:
    text = json.dumps(detail, default=str) if detail else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _evidence_lines(evidence: Any) -> list[str]:
    if not isinstance(evidence, dict):
        return []
    lines = []
    trigger = evidence.get("trigger")
    if isinstance(trigger, dict):
        lines.append(f"triggered by {_describe(trigger)}")
    for item in evidence.get("recent", [])[-6:]:
        if isinstance(item, dict):
            lines.append(_describe(item))
    if "verdict" in evidence:
        lines.append(f"verdict: {evidence['verdict']}")
    return lines


def _describe(ev: dict[str, Any]) -> str:
    what = ev.get("condition") or ev.get("kind")
    return f"{_ts(ev.get('at'))} {ev.get('source', '?')}: {what}"


def _timeline(state_dir: Path) -> float:
    """Now on the daemon's timeline (healer/clock.py), which is what it stores times on: the
    wall clock may have stepped since."""
    from healer.clock import RealClock

    return RealClock.resume(state_dir).now()


def _daemon_info(store: Any) -> dict[str, Any]:
    """The running daemon as its last status round left it in the state database."""
    info = store.get_meta("daemon")
    if not isinstance(info, dict):
        return {"running": False, "detail": "no daemon has run on this state directory"}
    age = _timeline(Path(store.path).parent) - float(info.get("updated_at", 0.0))
    # Three missed status rounds: stopped or stuck, whatever the pid says.
    fresh = age <= 3 * float(info.get("status_interval", 10.0)) + 5.0
    alive = True
    try:
        os.kill(int(info.get("pid", 0)), 0)
    except ProcessLookupError:
        alive = False
    except (PermissionError, ValueError, OverflowError):
        pass  # another user's process (or no pid): the freshness decides
    return info | {"running": fresh and alive, "seconds_since_update": round(age, 1)}


def _pools(args: argparse.Namespace, nodes: list[Any]) -> list[dict[str, Any]]:
    """Pools with their desired size (from the config, when one is readable) and node health."""
    desired: dict[tuple[str, str], int] = {}
    explicit = bool(args.config or os.environ.get("HEALER_CONFIG"))
    path = _config_path(args)
    if explicit or Path(path).exists():
        try:
            config = load_config(path)
        except ConfigError as exc:
            if explicit:
                raise
            # The default file is optional here: say why the sizes are missing, and go on.
            print(f"note: configured pool sizes not shown: {exc}", file=sys.stderr)
        else:
            for c in config.clusters:
                if args.cluster in (None, c.name):
                    for pool in c.pools:
                        desired[(c.name, pool.name)] = pool.size
    out: dict[tuple[str, str], dict[str, Any]] = {
        key: {"cluster": key[0], "pool": key[1], "size": size, "nodes": 0, "health": {}}
        for key, size in desired.items()
    }
    for n in nodes:
        o = n.observation
        key = (o.cluster, o.pool or "-")
        row = out.setdefault(
            key, {"cluster": key[0], "pool": key[1], "size": None, "nodes": 0, "health": {}}
        )
        row["nodes"] += 1
        row["health"][str(n.health)] = row["health"].get(str(n.health), 0) + 1
    return [out[k] for k in sorted(out)]


def cmd_status(args: argparse.Namespace) -> int:
    from healer.store.sqlite import BREAKER_BAD_UPGRADE
    from healer.workflow.capacity import capacity_lines, capacity_report

    store = _open_store(args)
    nodes = store.nodes(args.cluster)
    running = store.workflows(cluster=args.cluster, state="running")
    pauses = store.pauses()
    breakers = store.breakers()
    bad_upgrade = store.breakers(kind=BREAKER_BAD_UPGRADE)
    daemon = _daemon_info(store)
    pools = _pools(args, nodes)
    capacity = capacity_report(store, pools, cluster=args.cluster)
    blocking = _blocking_alerts(args)
    if args.json:
        print(
            json.dumps(
                {
                    "daemon": daemon,
                    "pools": pools,
                    "nodes": [
                        {
                            "cluster": n.observation.cluster,
                            "node": n.observation.node,
                            "pool": n.observation.pool,
                            "role": str(n.observation.role),
                            "health": str(n.health),
                            "reason": n.reason,
                            "message": n.message,
                        }
                        for n in nodes
                    ],
                    "workflows": [
                        {
                            "id": w.id,
                            "cluster": w.cluster,
                            "pool": w.pool,
                            "node": w.node,
                            "replacement": w.replacement_name,
                            "step": w.step,
                            "started_at": w.started_at,
                        }
                        for w in running
                    ],
                    "pauses": sorted(pauses),
                    "breakers": {c: r for c, (r, _) in breakers.items()},
                    "bad_upgrade_breakers": {c: r for c, (r, _) in bad_upgrade.items()},
                    "blocking_alerts": blocking,
                    "capacity": capacity,
                },
                indent=2,
            )
        )
        return 0
    if daemon["running"]:
        print(f"daemon: running (pid {daemon['pid']}): {daemon['status']}")
    elif "updated_at" in daemon:
        print(f"daemon: NOT RUNNING (last seen {_ts(daemon['updated_at'])}: {daemon['status']})")
    else:
        print(f"daemon: NOT RUNNING ({daemon['detail']})")
    if pools:
        print(f"\n{'CLUSTER':<10} {'POOL':<16} {'SIZE':>4} {'NODES':>5}  HEALTH")
        for row in pools:
            health = ", ".join(f"{v} {k}" for k, v in sorted(row["health"].items())) or "-"
            size = "-" if row["size"] is None else str(row["size"])
            print(f"{row['cluster']:<10} {row['pool']:<16} {size:>4} {row['nodes']:>5}  {health}")
        print()
    for line in capacity_lines(capacity):
        print(line)
    if capacity:
        print()
    print(f"{'CLUSTER':<10} {'NODE':<32} {'POOL':<16} {'HEALTH':<10} REASON")
    for n in nodes:
        o = n.observation
        print(f"{o.cluster:<10} {o.node:<32} {o.pool or '-':<16} {n.health!s:<10} {n.reason}")
    print(f"\nworkflows in flight: {len(running)}")
    for w in running:
        print(f"  {w.id}  {w.cluster}/{w.node} -> {w.replacement_name}  step {w.step}")
    print("paused: " + (", ".join(sorted(pauses)) or "no"))
    print(
        "breaker: " + (", ".join(f"{c} OPEN ({r})" for c, (r, _) in breakers.items()) or "closed")
    )
    print(
        "bad-upgrade breaker: "
        + (", ".join(f"{c} OPEN ({r})" for c, (r, _) in bad_upgrade.items()) or "closed")
    )
    print(
        "blocking alerts: "
        + ("; ".join(f"{c}: {', '.join(names)}" for c, names in blocking.items()) or "none")
    )
    return 0


def _blocking_alerts(args: argparse.Namespace) -> dict[str, list[str]]:
    """Blocking alerts firing now, per cluster (they pause remediation and reboots there)."""
    from healer.planner.alert_blocks import FILE_NAME, AlertBlocks

    blocks = AlertBlocks(path=state_dir_for(args) / FILE_NAME)
    now = _timeline(state_dir_for(args))
    clusters = sorted({b.cluster for b in blocks.blocks(args.cluster)})
    return {c: list(names) for c in clusters if (names := blocks.active(c, now))}


def cmd_pause(args: argparse.Namespace, paused: bool = True) -> int:
    from healer.store.sqlite import Store, pause_scope

    if args.pool and not args.cluster:
        raise ConfigError("--pool needs --cluster")
    state_dir = state_dir_for(args)
    _as_state_owner(state_dir)
    store = Store.open(state_dir)
    scope = pause_scope(args.cluster, args.pool)
    now = _timeline(state_dir)
    changed = store.set_paused(scope, paused, at=now, note=getattr(args, "note", "") or "")
    store.audit(
        at=now,
        cluster=args.cluster or "*",
        pool=args.pool,
        event="operator.paused" if paused else "operator.resumed",
        reason="Operator",
        message=f"{'paused' if paused else 'resumed'} {scope}",
    )
    verb = "paused" if paused else "resumed"
    print(f"{verb} {scope}" if changed else f"{scope} was already {verb}")
    return 0


def cmd_breaker(args: argparse.Namespace) -> int:
    from healer.store.sqlite import BREAKER_BAD_UPGRADE, BREAKER_KINDS, Store

    _as_state_owner(state_dir_for(args))
    store = Store.open(state_dir_for(args))
    kinds = BREAKER_KINDS if args.kind == "all" else (args.kind,)
    label = {k: ("bad-upgrade breaker" if k == BREAKER_BAD_UPGRADE else "breaker") for k in kinds}
    shown_as = {
        k: ("bad-upgrade breaker OPEN" if k == BREAKER_BAD_UPGRADE else "OPEN") for k in kinds
    }
    if args.action != "reset":
        shown = 0
        for kind in kinds:
            for c, (reason, at) in store.breakers(kind=kind).items():
                if args.cluster in (None, c):
                    print(f"{c}: {shown_as[kind]} since {_ts(at)}: {reason}")
                    shown += 1
        if not shown:
            print("no breaker is open")
        return 0
    from healer.jobs.manual import reset_breakers

    reset = [
        f"{name} ({label[kind]})" if kind == BREAKER_BAD_UPGRADE else name
        for name, kind in reset_breakers(
            store, cluster=args.cluster, kinds=kinds, at=_timeline(state_dir_for(args))
        )
    ]
    print(f"breaker reset for: {', '.join(reset)}" if reset else "no breaker was open")
    return 0


EXIT_REFUSED = 1
EXIT_NO_ANSWER = 3
EXIT_STOPPED = 4  # the remediation started and then stopped or failed (e.g. DrainBlockedByPdb)
EXIT_NOT_CONFIRMED = 5  # a node that is not unhealthy, and no confirmation (prompt or --yes)


def _confirm(question: str) -> bool:
    """Ask on the terminal; False when there is none (stdin is not a tty) or the answer is no."""
    if not sys.stdin.isatty():
        return False
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _node_health(store: Any, cluster: str, node: str) -> tuple[str, str] | None:
    """(health, reason) as the daemon last recorded it, or None for a node it never saw."""
    for n in store.nodes(cluster):
        if n.observation.node == node:
            return str(n.health), n.reason
    return None


def cmd_remediate(args: argparse.Namespace) -> int:
    from healer.clock import RealClock
    from healer.jobs.manual import describe, follow_workflow, request_remediation
    from healer.planner.planner import CONFIRMATION_REQUIRED

    store = _open_store(args)
    cluster = args.cluster
    if cluster is None:
        clusters = sorted({n.observation.cluster for n in store.nodes()})
        if len(clusters) != 1:
            raise ConfigError(
                "--cluster is needed"
                + (f": healer knows nodes of {', '.join(clusters)}" if clusters else "")
            )
        cluster = clusters[0]
    what = f"{cluster}/{args.node}"
    pdbs = (
        "PodDisruptionBudgets are overridden after drainTimeout (--force)"
        if args.force
        else "its drain respects PodDisruptionBudgets"
    )

    def confirmed_now(state: str) -> bool:
        """The operator's yes for a node that is not unhealthy; explains a no on stderr."""
        if args.yes:
            return True
        question = f"{what} is {state}. Replace it anyway ({pdbs}; its machine is destroyed)?"
        if _confirm(question):
            return True
        why = "not confirmed" if sys.stdin.isatty() else "no terminal to ask on: pass --yes"
        message = (
            f"not remediating {what}: it is {state}, and replacing it needs a confirmation "
            f"({why}); nothing was done"
        )
        print(f"healer: {message}", file=sys.stderr)
        if args.json:
            refused = {"result": "refused", "reason": CONFIRMATION_REQUIRED, "message": message}
            print(json.dumps(refused | {"cluster": cluster, "node": args.node}, indent=2))
        return False

    confirmed = bool(args.yes)
    known = _node_health(store, cluster, args.node)
    if known is not None and known[0] != "unhealthy" and not confirmed:
        if not confirmed_now(f"{known[0]} ({known[1]}), not unhealthy"):
            return EXIT_NOT_CONFIRMED
        confirmed = True
    if not args.json:
        how = " with --force (the guards are skipped)" if args.force else " through the guards"
        print(f"asking the running daemon to remediate {what}{how}...", flush=True)

    timeline = RealClock.resume(state_dir_for(args))

    def ask() -> dict[str, Any]:
        return request_remediation(
            store,
            cluster=cluster,
            node=args.node,
            force=args.force,
            confirmed=confirmed,
            timeout=args.timeout,
            now=timeline.now,  # the request's time is compared with the daemon's now
        )

    answer = ask()
    if answer.get("reason") == CONFIRMATION_REQUIRED and not confirmed:
        # The daemon's verdict, fresher than the database's: it is not unhealthy after all.
        if not confirmed_now("not unhealthy by the daemon's current verdict"):
            return EXIT_NOT_CONFIRMED
        confirmed = True
        answer = ask()
    outcome: dict[str, Any] | None = None
    if answer["result"] == "started" and not args.no_wait:
        if not args.json:
            print(describe(answer), flush=True)
            print(f"waiting for the drain of {what} ({pdbs})...", flush=True)
        drain_within = float(answer.get("drain_within") or 300.0)
        # Plus room for the steps' retries and the daemon's pace.
        outcome = follow_workflow(
            store, answer["workflow"], timeout=drain_within + max(args.timeout, 30.0)
        )
    if args.json:
        out = answer | {"cluster": cluster, "node": args.node}
        if outcome is not None:
            out["outcome"] = outcome
        print(json.dumps(out, indent=2))
    elif outcome is None:
        print(describe(answer))
        if answer["result"] == "started":
            print(f"follow it with: healer history {args.node} --cluster {cluster}")
    else:
        result = outcome["result"]
        if result == "failed":
            reason = outcome.get("reason") or "error"
            # A drain stopped by a budget destroyed nothing: say "stopped", not "failed".
            result = f"{'stopped' if reason.startswith('Drain') else 'failed'} ({reason})"
        print(f"{result}: {outcome['message']}")
        print(f"see: healer history {args.node} --cluster {cluster}")
    if answer["result"] == "started":
        if outcome is not None and outcome["result"] in ("failed", "error"):
            return EXIT_STOPPED
        if outcome is not None and outcome["result"] == "following":
            return EXIT_NO_ANSWER
        return 0
    if answer.get("reason") == CONFIRMATION_REQUIRED:
        return EXIT_NOT_CONFIRMED
    return EXIT_NO_ANSWER if answer["result"] == "timeout" else EXIT_REFUSED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="healer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, *, config: bool = True) -> None:
        if config:
            p.add_argument("-c", "--config", help=f"config file (HEALER_CONFIG; {DEFAULT_CONFIG})")
        p.add_argument(
            "--state-dir", help=f"state directory (HEALER_STATE_DIR; {DEFAULT_STATE_DIR})"
        )

    p = sub.add_parser("run", help="run the daemon")
    common(p)
    p.add_argument("--dry-run", action="store_true", help="detect and plan; change nothing")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a config file; non-zero exit on problems")
    common(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("lab", help="run the self-contained lab (no cloud, no broker needed)")
    common(p)
    p.add_argument(
        "--scenario",
        help="run one scenario and exit: crash, hang, reboot, bad-upgrade, partition, "
        "provider-outage; day-one safety: adopt, adopt-zero-byte, adopt-foreign, lost-state, "
        "forged-ready, forged-ready-crash, corroborate, create-fails, partitioned-node, "
        "zone-outage, bad-upgrade-wave, breaker-reset, clock-jump (docs/lab.md)",
    )
    p.add_argument("--report", help="write the scenario's JSON report here")
    p.add_argument("--kubeconfig", help="drive the simulated kubelets against this API server")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=cmd_lab)

    p = sub.add_parser("history", help="the audit log, optionally for one node with evidence")
    common(p, config=False)
    p.add_argument("node", nargs="?")
    p.add_argument("--cluster")
    p.add_argument("--limit", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser(
        "status", help="the daemon, pools, nodes, workflows in flight, pauses, breaker"
    )
    common(p)
    p.add_argument("--cluster")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    for name, paused in (("pause", True), ("resume", False)):
        p = sub.add_parser(name, help=f"{name} remediation (everywhere, a cluster or a pool)")
        common(p, config=False)
        p.add_argument("--cluster")
        p.add_argument("--pool")
        if paused:
            p.add_argument("--note", default="")
        p.set_defaults(func=lambda a, paused=paused: cmd_pause(a, paused))

    p = sub.add_parser(
        "remediate",
        help="ask the running daemon to replace NODE now (through the guards unless --force)",
    )
    common(p, config=False)
    p.add_argument("node")
    p.add_argument("--cluster", help="needed when healer knows more than one cluster")
    p.add_argument(
        "--force",
        action="store_true",
        help="skip the guards (breaker, pause, limits) and override PodDisruptionBudgets after "
        "drainTimeout; the node must still be in a managed pool",
    )
    p.add_argument(
        "--yes",
        action="store_true",
        help="confirm the replacement of a node that is not unhealthy without a prompt "
        "(needed without a terminal)",
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="return once the workflow started instead of waiting for its drain",
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the daemon (default 30)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_remediate)

    p = sub.add_parser("breaker", help="show or reset the circuit breakers")
    common(p, config=False)
    p.add_argument("action", choices=["show", "reset"])
    p.add_argument("--cluster")
    p.add_argument(
        "--kind",
        choices=["all", "remediation", "bad-upgrade"],
        default="all",
        help="which breaker (default: both the remediation and the bad-upgrade breaker)",
    )
    p.set_defaults(func=cmd_breaker)

    from healer.provisioning.commands import add_parsers

    add_parsers(sub, common, (cmd_plan, cmd_apply, cmd_destroy))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"healer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `healer history | head`: the reader left; that is fine
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
