"""The interactive lab's commands: what each takes, checked before anything is done, with a
usage line or a "did you mean" for every mistake. Pure: the lab (:mod:`healer.lab.main`) carries
out what :func:`parse` returns, and the prompt (:mod:`healer.lab.console`) completes from
:func:`completions`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from healer.suggest import did_you_mean

# name -> (arguments, what it does); the order is the help's.
COMMANDS: dict[str, tuple[str, str]] = {
    "nodes": ("", "list lab machines and whether their node is Ready"),
    "crash": ("NODE", "the machine dies (powered off, kubelet gone)"),
    "hang": ("NODE", "the machine hangs: the cloud says running, nothing answers"),
    "reboot": ("NODE", "a planned reboot that comes back"),
    "bad-upgrade": ("NODE", "an upgrade whose reboot never comes back"),
    "partition": ("FRACTION", "cut that fraction (0 < F < 1) of the workers pool off, e.g. 0.6"),
    "heal": ("", "end every partition"),
    "outage": ("SECONDS", "the lab cloud's API fails for that long (e.g. 30)"),
    "clock-jump": ("SECONDS", "step the daemon's wall clock (3600 or -3600), as NTP would"),
    "breaker": ("reset", "close the open circuit breakers (remediation and bad-upgrade)"),
    "reset": ("", "close the breakers and end every pause (e.g. carried over from last time)"),
    "help": ("", "this list"),
    "quit": ("", "stop the lab (its state is kept for the next `healer lab`)"),
}
ALIASES = {"exit": "quit", "?": "help"}
NODE_COMMANDS = ("crash", "hang", "reboot", "bad-upgrade")
PARTITION_POOL = "workers"


class CommandError(ValueError):
    """A command the lab cannot carry out as typed; the message says why and what to type."""


@dataclass(frozen=True)
class Command:
    name: str
    node: str | None = None
    number: float | None = None


def help_text() -> str:
    lines = ["lab commands (Tab completes, Up/Down recall; Enter runs):"]
    for name, (args, what) in COMMANDS.items():
        lines.append(f"  {(name + ' ' + args).strip():<22} {what}")
    return "\n".join(lines)


def usage(name: str) -> str:
    return f"usage: {(name + ' ' + COMMANDS[name][0]).strip()}"


def parse(words: Sequence[str], *, nodes: Sequence[str]) -> Command | None:
    """The command ``words`` name, its arguments checked (None for an empty line).

    ``nodes``: the lab machines a NODE may name. Raises :class:`CommandError`."""
    if not words:
        return None
    name, args = ALIASES.get(words[0], words[0]), list(words[1:])
    if name not in COMMANDS:
        raise CommandError(
            f"unknown command {words[0]!r}{did_you_mean(words[0], COMMANDS, list_known=False)} "
            "(type help for the list)"
        )
    wanted = COMMANDS[name][0]
    if not wanted and args:
        raise CommandError(f"{name} takes no arguments; {usage(name)}")
    if wanted and len(args) != 1:
        raise CommandError(usage(name))
    if name in NODE_COMMANDS:
        return Command(name, node=_node(args[0], nodes))
    if name == "breaker":
        if args[0] != "reset":
            raise CommandError(f"breaker: unknown action {args[0]!r}; {usage(name)}")
        return Command(name)
    if name == "partition":
        fraction = _number(name, args[0])
        if not 0 < fraction < 1:
            raise CommandError(
                f"partition: {args[0]} is not a fraction between 0 and 1 "
                f"(0.6 cuts 60% of the {PARTITION_POOL} pool off); {usage(name)}"
            )
        return Command(name, number=fraction)
    if name == "outage":
        seconds = _number(name, args[0])
        if seconds <= 0:
            raise CommandError(f"outage: {args[0]} seconds is not a duration; {usage(name)}")
        return Command(name, number=seconds)
    if name == "clock-jump":
        seconds = _number(name, args[0])
        if seconds == 0:
            raise CommandError(f"clock-jump: 0 seconds changes nothing; {usage(name)}")
        return Command(name, number=seconds)
    return Command(name)


def _number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CommandError(f"{name}: {text!r} is not a number; {usage(name)}") from None
    if not math.isfinite(value):
        raise CommandError(f"{name}: {text!r} is not a finite number; {usage(name)}")
    return value


def _node(text: str, nodes: Sequence[str]) -> str:
    if text in nodes:
        return text
    # A unique suffix is enough: "crash 3f9a1c2e" for lab-workers-3f9a1c2e.
    matches = [n for n in nodes if n.endswith(text)]
    if len(matches) == 1:
        return matches[0]
    hint = did_you_mean(text, nodes, list_known=False) or " (type nodes for the list)"
    raise CommandError(f"no lab machine named {text!r}{hint}")


def partition_cut(fraction: float, pool: Sequence[str]) -> list[str]:
    """The first ceil(fraction * size) machines of ``pool``: never the whole pool (that is a
    pool that lost its network, not a partition of it)."""
    count = math.ceil(len(pool) * fraction)
    if count >= len(pool):
        raise CommandError(
            f"partition: {fraction:g} of the {len(pool)} {PARTITION_POOL} machines cuts them "
            f"all off; at most {(len(pool) - 1) / len(pool):.2f} leaves one connected"
        )
    return list(pool[:count])


def completions(line: str, *, nodes: Sequence[str]) -> list[str]:
    """What may follow ``line`` (the text before the cursor) at the word being typed."""
    words = line.split(" ")
    current = words[-1]
    if len(words) == 1:
        choices: Sequence[str] = [*COMMANDS, *ALIASES]
    elif len(words) == 2 and ALIASES.get(words[0], words[0]) in NODE_COMMANDS:
        choices = nodes
    elif len(words) == 2 and words[0] == "breaker":
        choices = ["reset"]
    else:
        choices = []
    return sorted(c for c in choices if c.startswith(current))
