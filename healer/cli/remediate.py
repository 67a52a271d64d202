"""``healer remediate NODE``: ask the running daemon to replace a node now, confirm when the node
is not unhealthy, and follow the workflow through its drain."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from healer.cli import exits
from healer.cli.common import daemon_info, open_store, state_dir_for
from healer.cli.names import check_node, known_names
from healer.clock import RealClock
from healer.errors import ConfigError
from healer.jobs.manual import describe, follow_workflow, request_remediation
from healer.planner.planner import CONFIRMATION_REQUIRED
from healer.store.sqlite import Store
from healer.store.statedir import is_claimed

EXIT_REFUSED = exits.FAILED
EXIT_NO_ANSWER = exits.NO_ANSWER
EXIT_STOPPED = exits.STOPPED  # started, then stopped or failed (e.g. DrainBlockedByPdb)
EXIT_NOT_CONFIRMED = exits.NOT_CONFIRMED  # a node not unhealthy, and no confirmation


def _confirm(question: str) -> bool:
    """Ask on the terminal; False when there is none (stdin is not a tty) or the answer is no."""
    if not sys.stdin.isatty():
        return False
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _node_health(store: Store, cluster: str, node: str) -> tuple[str, str] | None:
    """(health, reason) as the daemon last recorded it, or None for a node it never saw."""
    for n in store.nodes(cluster):
        if n.observation.node == node:
            return str(n.health), n.reason
    return None


def cmd_remediate(args: argparse.Namespace) -> int:
    store = open_store(args)
    known_names(args, store).check(args.cluster)
    cluster = args.cluster
    if cluster is None:
        clusters = sorted({n.observation.cluster for n in store.nodes()})
        if len(clusters) != 1:
            raise ConfigError(
                "--cluster is needed"
                + (f": healer knows nodes of {', '.join(clusters)}" if clusters else "")
            )
        cluster = clusters[0]
    check_node(store, cluster, args.node)
    state_dir = state_dir_for(args)
    if is_claimed(state_dir) is False and not daemon_info(store)["running"]:
        # Nothing would pick the request up: say so now rather than after --timeout. (A daemon
        # holds the state directory's lock; one run in-process by a test at least reports.)
        message = (
            f"no healer daemon is running on {state_dir}, so nothing would act on the request; "
            "start it (systemctl start healer), or pass --state-dir with the running daemon's "
            "state directory; nothing was done"
        )
        print(f"healer: {message}", file=sys.stderr)
        if args.json:
            answer = {"result": "no_daemon", "message": message}
            print(json.dumps(answer | {"cluster": cluster, "node": args.node}, indent=2))
        return EXIT_NO_ANSWER
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

    timeline = RealClock.resume(state_dir)

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
