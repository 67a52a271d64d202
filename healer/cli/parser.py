"""healer: detects persistent node failures in Kubernetes clusters and replaces the machines
safely; builds the clusters' machines too (plan, apply, destroy).

Commands that inspect or steer a running daemon work on the state database it shares
(--state-dir or HEALER_STATE_DIR), so they need no socket and work while it is down too.
"""

# This module (the text above is `healer --help`) imports only the standard library: each
# command's module, healer.cli.<module>, is imported when that command runs, so `healer --help`
# and `healer <command> --help` load neither the daemon nor the Kubernetes client nor libcloud.

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, cast

from healer.cli import exits
from healer.cli.common import DEFAULT_CONFIG, DEFAULT_STATE_DIR, STATUS_NODES_LISTED

# What the commands that steer the daemon read the configuration for.
NAMES_CONFIG = (
    f"$HEALER_CONFIG, else {DEFAULT_CONFIG} if readable; for the names of clusters and pools"
)
LAB_STATE_DIR = "lab-state"  # healer.lab.main.DEFAULT_LAB_STATE (not imported: it loads the lab)


@dataclass(frozen=True)
class Command:
    """A command's function by name (``healer.cli.<module>:<function>``), imported on call."""

    module: str
    function: str

    def __call__(self, args: argparse.Namespace) -> int:
        handler = getattr(importlib.import_module(f"healer.cli.{self.module}"), self.function)
        return cast(int, handler(args))


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "print healer's version and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("healer")
        except PackageNotFoundError:  # run from a checkout that was never installed
            v = "unknown (not installed)"
        print(f"healer {v}")
        parser.exit()


def _common(
    p: argparse.ArgumentParser,
    *,
    config: bool = True,
    config_default: str = f"$HEALER_CONFIG, else {DEFAULT_CONFIG}",
    state_default: str = f"$HEALER_STATE_DIR, else {DEFAULT_STATE_DIR}",
) -> None:
    if config:
        p.add_argument(
            "-c", "--config", metavar="FILE", help=f"config file (default: {config_default})"
        )
    p.add_argument("--state-dir", metavar="DIR", help=f"state directory (default: {state_default})")


# healer.simulate.catalogue.SCENARIOS (not imported: tests/test_simulate.py keeps them the same).
SIMULATE_SCENARIOS = (
    "rolling-kernel-upgrade",
    "zone-outage",
    "flapping-nic",
    "partition",
    "slow-provider",
)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must be 0 or more")
    return value


def _simulate(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="replay a history of node events against the config in virtual time: what healer "
        "would do, when and why (docs/simulate.md)",
    )
    p.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help=f"config file (default: $HEALER_CONFIG, else {DEFAULT_CONFIG})",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--scenario",
        metavar="NAME",
        help="a built-in history: " + ", ".join(SIMULATE_SCENARIOS),
    )
    what.add_argument(
        "--history",
        metavar="FILE",
        help="a state database (healer.sqlite, or its directory) whose recorded events to "
        "replay, or a JSONL file of node events",
    )
    p.add_argument(
        "--compare",
        metavar="OTHER",
        help="run the same history under this config too and print the decisions that differ",
    )
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p.add_argument(
        "--tail",
        type=_seconds,
        default=3600.0,
        metavar="SECONDS",
        help="how long past the last event to let decisions play out (default 3600)",
    )
    for name, what_takes in (
        ("create", "creating a machine"),
        ("destroy", "destroying one"),
        ("join", "a created machine joining as a Ready node"),
    ):
        p.add_argument(
            f"--{name}",
            type=_seconds,
            metavar="SECONDS",
            help=f"the simulated cloud's time for {what_takes} (default: the scenario's)",
        )
    p.add_argument(
        "--write-history",
        metavar="FILE",
        help="also write the history replayed as JSONL (a start for your own)",
    )
    p.set_defaults(func=Command("simulate", "cmd_simulate"))


class _Skipped:
    """Stands for the parser of a command that is not the one run: whatever is added to it is
    dropped (building all sixteen parsers is a good part of a quick command's start)."""

    def __getattr__(self, name: str) -> Callable[..., _Skipped]:
        return lambda *args, **kwargs: self


class _Subcommands(argparse._SubParsersAction):  # type: ignore[type-arg]
    only: str | None = None  # build this command's parser only

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if self.only is not None and name != self.only:
            return _Skipped()
        return super().add_parser(name, **kwargs)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the command line, the parser of its command only (still the
    whole one when the command line names none, or one that does not exist)."""
    only = next((a for a in argv if not a.startswith("-")), None) if argv else None
    if only is not None:
        parser = _build(only)
        if only in _subcommands(parser).choices:
            return parser
    return _build(None)


def _subcommands(parser: argparse.ArgumentParser) -> _Subcommands:
    return next(a for a in parser._actions if isinstance(a, _Subcommands))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """argparse's message, plus the closest command or choice to a mistyped one."""
        typed = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if typed:
            from healer.suggest import did_you_mean

            choices = re.findall(r"'([^']*)'", typed.group(2))
            message += did_you_mean(typed.group(1), choices, list_known=False)
        super().error(message)


def _build(only: str | None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="healer",
        description=__doc__,
        epilog=exits.epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version)
    parser.add_argument(
        "--no-color",
        action="store_true",
        help="no colours in the output (also when NO_COLOR is set, or the output is no terminal)",
    )
    parser.register("action", "parsers", _Subcommands)
    sub = cast(
        _Subcommands, parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    )
    sub.only = only

    p = sub.add_parser("run", help="run the daemon")
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="detect and plan; change nothing")
    p.add_argument(
        "--replicas",
        action="store_true",
        help="run as one of several daemons sharing the clusters (needs the PostgreSQL state "
        "of state.url; each cluster has one owner: docs/state-backends.md)",
    )
    p.add_argument(
        "--replica-id",
        metavar="NAME",
        help="this replica's name in the lease table (default: host name and process id)",
    )
    p.set_defaults(func=Command("run", "cmd_run"))

    p = sub.add_parser("validate", help="check a config file; non-zero exit on problems")
    _common(p)
    p.set_defaults(func=Command("validate", "cmd_validate"))

    p = sub.add_parser("lab", help="run the self-contained lab (no cloud, no broker needed)")
    _common(
        p,
        config_default="the lab's own, healer/share/config/lab.yaml in the package",
        state_default=f"{LAB_STATE_DIR}/ in the current directory; with --scenario NAME, "
        f"{LAB_STATE_DIR}/scenarios/NAME/, emptied first and kept for `healer history`",
    )
    p.add_argument(
        "--scenario",
        help="run one scenario and exit: crash, hang, reboot, bad-upgrade, partition, "
        "provider-outage; day-one safety: adopt, adopt-zero-byte, adopt-foreign, lost-state, "
        "forged-ready, forged-ready-crash, corroborate, create-fails, partitioned-node, "
        "zone-outage, bad-upgrade-wave, breaker-reset, clock-jump (docs/lab.md)",
    )
    p.add_argument(
        "--report",
        metavar="FILE",
        help="write the scenario's JSON report here (checked before the scenario runs)",
    )
    p.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="drive the simulated kubelets against this API server instead of the lab's own",
    )
    p.add_argument(
        "--node-grace",
        type=_seconds,
        metavar="SECONDS",
        help="with --kubeconfig: the cluster's node-monitor-grace-period (default: read from "
        "its kube-controller-manager pod, else 50); scenarios time detection by it",
    )
    p.add_argument(
        "--node-monitor-period",
        type=_seconds,
        metavar="SECONDS",
        help="with --kubeconfig: the cluster's node-monitor-period (default: read, else 5)",
    )
    p.add_argument("--dry-run", action="store_true", help="detect and plan; change nothing")
    p.add_argument(
        "--reset",
        action="store_true",
        help="start from a clean lab state: delete the state directory (lab-state/ unless "
        "--state-dir says otherwise) first, saying what it held",
    )
    p.set_defaults(func=Command("lab", "cmd_lab"))

    _simulate(sub)

    p = sub.add_parser("history", help="the audit log, optionally for one node with evidence")
    _common(p, config_default=NAMES_CONFIG)
    p.add_argument("node", nargs="?", help="only this node, with the evidence for each step")
    p.add_argument("--cluster", help="only this cluster")
    p.add_argument("--limit", type=int, metavar="N", help="only the last N entries")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p.set_defaults(func=Command("history", "cmd_history"))

    p = sub.add_parser(
        "status", help="the daemon, pools, nodes, workflows in flight, pauses, breaker"
    )
    _common(p)
    p.add_argument("--cluster", help="only this cluster")
    p.add_argument(
        "--nodes",
        action="store_true",
        help=f"list every node (default: every node up to {STATUS_NODES_LISTED}, else only those "
        "not healthy; --json lists every node)",
    )
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p.set_defaults(func=Command("status", "cmd_status"))

    for name in ("pause", "resume"):
        p = sub.add_parser(name, help=f"{name} remediation (everywhere, a cluster or a pool)")
        _common(p, config_default=NAMES_CONFIG)
        p.add_argument("--cluster", help=f"{name} only this cluster (default: everywhere)")
        p.add_argument("--pool", help=f"{name} only this pool of --cluster")
        if name == "pause":
            p.add_argument("--note", default="", help="why, kept in the audit log and status")
        p.set_defaults(func=Command("controls", f"cmd_{name}"))

    p = sub.add_parser(
        "remediate",
        help="ask the running daemon to replace NODE now (through the guards unless --force)",
    )
    _common(p, config_default=NAMES_CONFIG)
    p.add_argument("node", help="the Kubernetes node to replace")
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
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p.set_defaults(func=Command("remediate", "cmd_remediate"))

    p = sub.add_parser("breaker", help="show or reset the circuit breakers")
    _common(p, config_default=NAMES_CONFIG)
    p.add_argument("action", choices=["show", "reset"], help="show the breakers, or close them")
    p.add_argument("--cluster", help="only this cluster's")
    p.add_argument(
        "--kind",
        choices=["all", "remediation", "bad-upgrade"],
        default="all",
        help="which breaker (default: both the remediation and the bad-upgrade breaker)",
    )
    p.set_defaults(func=Command("controls", "cmd_breaker"))

    p = sub.add_parser("plan", help="show what apply would create, change or delete")
    _common(p)
    p.add_argument("--cluster", help="only this cluster")
    p.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 2 when there are changes, 0 when there are none, 1 on errors",
    )
    p.set_defaults(func=Command("provision", "cmd_plan"))

    p = sub.add_parser("apply", help="create the network, firewall, load balancer and machines")
    _common(p)
    p.add_argument("--cluster", help="only this cluster")
    p.add_argument(
        "--yes",
        action="store_true",
        help="apply without asking (needed without a terminal); the plan is printed all the same",
    )
    p.set_defaults(func=Command("provision", "cmd_apply"))

    p = sub.add_parser("destroy", help="delete everything healer built for a cluster")
    _common(p)
    p.add_argument("--cluster", required=True, help="the cluster to delete (required)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=Command("provision", "cmd_destroy"))

    p = sub.add_parser(
        "rotate",
        help="rotate a cluster's encryption-at-rest key (staged, resumable) or plan a CA rotation",
    )
    _common(p)
    p.add_argument(
        "what",
        choices=["encryption-key", "ca"],
        help="encryption-key: add the new key, make it the write key, rewrite every Secret, "
        "remove the old key; ca: print and record the staged procedure",
    )
    p.add_argument("--cluster", help="needed when the config has more than one cluster")
    p.add_argument(
        "--settle",
        type=_seconds,
        default=90.0,
        metavar="SECONDS",
        help="wait after each new configuration for every API server to read it (default 90)",
    )
    p.set_defaults(func=Command("rotate", "cmd_rotate"))

    p = sub.add_parser(
        "completion",
        help='print a shell completion script (bash: eval "$(healer completion bash)")',
    )
    p.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete in")
    p.set_defaults(func=Command("completion", "cmd_completion"))

    p = sub.add_parser("manpage", help="print healer(1), the manual page, in roff (man -l -)")
    p.set_defaults(func=Command("completion", "cmd_manpage"))
    return parser
