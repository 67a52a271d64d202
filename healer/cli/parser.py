"""The `healer` command: run | validate | lab | status | history | pause | resume | breaker | remediate
| plan | apply | destroy.

Commands that inspect or steer a running daemon work on the state database it shares
(``--state-dir`` or HEALER_STATE_DIR), so they need no socket and work while it is down too.
"""

# This module (the text above is `healer --help`) imports only the standard library: each
# command's module, healer.cli.<module>, is imported when that command runs, so `healer --help`
# and `healer <command> --help` load neither the daemon nor the Kubernetes client nor libcloud.

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import cast

from healer.cli.common import DEFAULT_CONFIG, DEFAULT_STATE_DIR


@dataclass(frozen=True)
class Command:
    """A command's function by name (``healer.cli.<module>:<function>``), imported on call."""

    module: str
    function: str

    def __call__(self, args: argparse.Namespace) -> int:
        handler = getattr(importlib.import_module(f"healer.cli.{self.module}"), self.function)
        return cast(int, handler(args))


def _common(p: argparse.ArgumentParser, *, config: bool = True) -> None:
    if config:
        p.add_argument("-c", "--config", help=f"config file (HEALER_CONFIG; {DEFAULT_CONFIG})")
    p.add_argument("--state-dir", help=f"state directory (HEALER_STATE_DIR; {DEFAULT_STATE_DIR})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="healer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the daemon")
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="detect and plan; change nothing")
    p.set_defaults(func=Command("run", "cmd_run"))

    p = sub.add_parser("validate", help="check a config file; non-zero exit on problems")
    _common(p)
    p.set_defaults(func=Command("validate", "cmd_validate"))

    p = sub.add_parser("lab", help="run the self-contained lab (no cloud, no broker needed)")
    _common(p)
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
    p.add_argument(
        "--reset",
        action="store_true",
        help="start from a clean lab state: delete the state directory (lab-state/ unless "
        "--state-dir says otherwise) first, saying what it held",
    )
    p.set_defaults(func=Command("lab", "cmd_lab"))

    p = sub.add_parser("history", help="the audit log, optionally for one node with evidence")
    _common(p, config=False)
    p.add_argument("node", nargs="?")
    p.add_argument("--cluster")
    p.add_argument("--limit", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=Command("history", "cmd_history"))

    p = sub.add_parser(
        "status", help="the daemon, pools, nodes, workflows in flight, pauses, breaker"
    )
    _common(p)
    p.add_argument("--cluster")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=Command("status", "cmd_status"))

    for name in ("pause", "resume"):
        p = sub.add_parser(name, help=f"{name} remediation (everywhere, a cluster or a pool)")
        _common(p, config=False)
        p.add_argument("--cluster")
        p.add_argument("--pool")
        if name == "pause":
            p.add_argument("--note", default="")
        p.set_defaults(func=Command("controls", f"cmd_{name}"))

    p = sub.add_parser(
        "remediate",
        help="ask the running daemon to replace NODE now (through the guards unless --force)",
    )
    _common(p, config=False)
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
    p.set_defaults(func=Command("remediate", "cmd_remediate"))

    p = sub.add_parser("breaker", help="show or reset the circuit breakers")
    _common(p, config=False)
    p.add_argument("action", choices=["show", "reset"])
    p.add_argument("--cluster")
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
    p.set_defaults(func=Command("provision", "cmd_apply"))

    p = sub.add_parser("destroy", help="delete everything healer built for a cluster")
    _common(p)
    p.add_argument("--cluster", required=True)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=Command("provision", "cmd_destroy"))
    return parser
