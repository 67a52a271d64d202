"""The `healer` command: run | validate | lab | status | history | pause | resume | breaker | remediate.

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
import time
from collections.abc import Sequence
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


def _open_store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from healer.store.sqlite import DB_NAME, Store

    state_dir = state_dir_for(args)
    if not (state_dir / DB_NAME).exists():
        raise ConfigError(
            f"no healer state in {state_dir} (looked for {DB_NAME}); pass --state-dir or set "
            "HEALER_STATE_DIR to the daemon's state directory"
        )
    return Store.open(state_dir)


# -- commands ---------------------------------------------------------------------------------
def cmd_validate(args: argparse.Namespace) -> int:
    from providers import available_plugins

    path = _config_path(args)
    config = load_config(path)
    plugins = available_plugins()
    problems = [
        f"{path}: clusters[{i}].provider.plugin: unknown plugin {c.provider.plugin!r} "
        f"(available: {', '.join(plugins) or 'none'})"
        for i, c in enumerate(config.clusters)
        if c.provider.plugin not in plugins
    ]
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    print(f"{path}: OK")
    for c in config.clusters:
        pools = ", ".join(f"{p.name} ({p.role}, {p.size})" for p in c.pools)
        print(f"  cluster {c.name}: provider {c.provider.plugin}; pools: {pools}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from healer.app import Daemon
    from healer.logs import configure

    config = load_config(_config_path(args))
    configure(config.log_format)
    daemon = Daemon(config, state_dir=state_dir_for(args, config), dry_run=args.dry_run)
    return _run_until_signalled(daemon.run())


def _run_until_signalled(coro: Any) -> int:
    async def main() -> None:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

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


def cmd_status(args: argparse.Namespace) -> int:
    store = _open_store(args)
    nodes = store.nodes(args.cluster)
    running = store.workflows(cluster=args.cluster, state="running")
    pauses = store.pauses()
    breakers = store.breakers()
    if args.json:
        print(
            json.dumps(
                {
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
                        {"id": w.id, "node": w.node, "step": w.step, "started_at": w.started_at}
                        for w in running
                    ],
                    "pauses": sorted(pauses),
                    "breakers": {c: r for c, (r, _) in breakers.items()},
                },
                indent=2,
            )
        )
        return 0
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
    return 0


def cmd_pause(args: argparse.Namespace, paused: bool = True) -> int:
    from healer.store.sqlite import Store, pause_scope

    if args.pool and not args.cluster:
        raise ConfigError("--pool needs --cluster")
    state_dir = state_dir_for(args)
    store = Store.open(state_dir)
    scope = pause_scope(args.cluster, args.pool)
    changed = store.set_paused(scope, paused, at=time.time(), note=getattr(args, "note", "") or "")
    store.audit(
        at=time.time(),
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
    from healer.store.sqlite import Store

    store = Store.open(state_dir_for(args))
    if args.action != "reset":
        for c, (reason, at) in store.breakers().items():
            print(f"{c}: OPEN since {_ts(at)}: {reason}")
        return 0
    names = store.reset_breaker(args.cluster)
    for name in names:
        store.audit(
            at=time.time(),
            cluster=name,
            event="breaker.reset",
            reason="Operator",
            message="circuit breaker reset by an operator",
        )
    print(f"breaker reset for: {', '.join(names)}" if names else "no breaker was open")
    return 0


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
        help="run one scenario and exit: crash, hang, reboot, "
        "bad-upgrade, partition, provider-outage",
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

    p = sub.add_parser("status", help="nodes, workflows in flight, pauses, breaker")
    common(p, config=False)
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

    p = sub.add_parser("breaker", help="show or reset the circuit breaker")
    common(p, config=False)
    p.add_argument("action", choices=["show", "reset"])
    p.add_argument("--cluster")
    p.set_defaults(func=cmd_breaker)
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
