"""What ``healer simulate`` prints: one run's decisions (text or JSON), how they compare with the
remediations the recorded daemon made, and the difference between two configurations' runs.

Times are offsets from the history's start (``+00:05:30``); absolute times are ISO-8601 UTC.
"""

from __future__ import annotations

import textwrap
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from healer.simulate.engine import Decision, Outcome
from healer.store.history import RecordedRemediation

# Two runs' decisions this close in time are the same decision at the same time.
SAME_TIME = 0.5
WIDTH = 100  # the text report's messages are wrapped to this many columns


def offset(seconds: float) -> str:
    """``+HH:MM:SS`` (tenths when not whole): how long after the history's start."""
    sign = "-" if seconds < 0 else "+"
    tenths = round(abs(seconds) * 10)
    whole, frac = divmod(tenths, 10)
    hours, rest = divmod(whole, 3600)
    text = f"{sign}{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return text + (f".{frac}" if frac else "")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def is_decision(d: Decision) -> bool:
    """A decision healer made (remediation, reboot, breaker), not a change of a node's health."""
    return not d.event.startswith("node.")


# -- one run -------------------------------------------------------------------------------
def text(outcome: Outcome, *, config: str) -> str:
    h = outcome.history
    t = outcome.timings
    nodes = {(e.cluster, e.node) for e in h.happenings if e.node}
    lines = [f"healer simulate: {h.name} against {config}"]
    if h.description:
        lines.append(_wrapped(h.description, indent=2))
    lines.append(
        f"  history: {len(h.happenings)} events for {len(nodes)} nodes from "
        f"{iso(outcome.start)} to {offset(h.end - outcome.start)}"
        + (f" ({h.consequences} of healer's own left out)" if h.consequences else "")
    )
    lines.append(
        f"  simulated cloud: create {t.create:g}s, destroy {t.destroy:g}s, join {t.join:g}s"
        + (f", the first {t.create_failures} creates fail" if t.create_failures else "")
    )
    lines += [f"  note: {n}" for n in h.notes]
    state = "everything settled" if outcome.settled else "still under way"
    lines.append(f"  simulated until {offset(outcome.end - outcome.start)} ({state})")
    lines.append("")
    if not outcome.decisions:
        lines.append("nothing to decide: no node changed its health")
    for d in outcome.decisions:
        lines.append(_line(d, outcome.start))
        lines.append(_wrapped(d.message, indent=13))
    lines.append("")
    lines += summary(outcome.decisions)
    if h.recorded:
        lines.append("")
        lines += reproduction(outcome)
    return "\n".join(lines) + "\n"


def _wrapped(message: str, *, indent: int) -> str:
    """The message under its line, indented, in lines of at most :data:`WIDTH` columns."""
    pad = " " * indent
    return textwrap.fill(
        message, WIDTH, initial_indent=pad, subsequent_indent=pad, break_on_hyphens=False
    )


def _line(d: Decision, start: float) -> str:
    where = f"{d.cluster}/{d.node}" if d.node else d.cluster
    return f"{offset(d.at - start):<12} {d.event:<24} {where:<28} {d.reason}"


def summary(decisions: Iterable[Decision]) -> list[str]:
    """What was decided, counted: remediations, reboots, breakers (one line each)."""
    events = Counter(d.event for d in decisions)
    refused = Counter(d.reason for d in decisions if d.event == "remediation.refused")
    denied = Counter(d.reason for d in decisions if d.event == "reboot.refused")

    def by_reason(counts: Counter[str]) -> str:
        return (
            " (" + ", ".join(f"{r} {n}" for r, n in sorted(counts.items())) + ")" if counts else ""
        )

    return [
        f"remediations: {events['remediation.started']} started, "
        f"{events['remediation.succeeded']} succeeded, {events['remediation.failed']} failed, "
        f"{sum(refused.values())} refused{by_reason(refused)}",
        f"reboots: {events['reboot.granted']} granted, {sum(denied.values())} refused"
        f"{by_reason(denied)}",
        f"breakers opened: {events['breaker.opened'] + events['breaker.bad_upgrade_opened']}",
    ]


@dataclass(frozen=True)
class Reproduction:
    both: tuple[tuple[RecordedRemediation, Decision], ...]
    only_recorded: tuple[RecordedRemediation, ...]
    only_simulated: tuple[Decision, ...]

    @property
    def reproduced(self) -> bool:
        return not self.only_recorded and not self.only_simulated


def compare_recorded(outcome: Outcome) -> Reproduction:
    """The remediations the recording daemon started beside those the simulation started:
    the same node for the same reason is the same remediation."""
    started = [d for d in outcome.decisions if d.event == "remediation.started"]
    left = list(started)
    both: list[tuple[RecordedRemediation, Decision]] = []
    missing: list[RecordedRemediation] = []
    for r in outcome.history.recorded:
        match = next(
            (d for d in left if (d.cluster, d.node, d.reason) == (r.cluster, r.node, r.reason)),
            None,
        )
        if match is None:
            missing.append(r)
        else:
            left.remove(match)
            both.append((r, match))
    return Reproduction(tuple(both), tuple(missing), tuple(left))


def reproduction(outcome: Outcome) -> list[str]:
    rep = compare_recorded(outcome)
    start = outcome.start
    total = len(outcome.history.recorded)
    head = f"recorded daemon: {total} remediation{'' if total == 1 else 's'}; " + (
        "the simulation makes the same ones" if rep.reproduced else "the simulation differs"
    )
    lines = [head]
    for r, d in rep.both:
        lines.append(
            f"  same       {r.cluster}/{r.node} {r.reason}: recorded {offset(r.at - start)} "
            f"({r.state}), simulated {offset(d.at - start)}"
        )
    for r in rep.only_recorded:
        lines.append(
            f"  recorded   {r.cluster}/{r.node} {r.reason} at {offset(r.at - start)} ({r.state}): "
            "not started in the simulation"
        )
    for d in rep.only_simulated:
        lines.append(
            f"  simulated  {d.cluster}/{d.node} {d.reason} at {offset(d.at - start)}: "
            "the recorded daemon did not start it"
        )
    return lines


def to_json(outcome: Outcome, *, config: str) -> dict[str, Any]:
    h, t = outcome.history, outcome.timings
    doc: dict[str, Any] = {
        "config": config,
        "history": h.name,
        "description": h.description,
        "start": iso(outcome.start),
        "end": offset(outcome.end - outcome.start),
        "settled": outcome.settled,
        "events": len(h.happenings),
        "left_out": h.consequences,
        "cloud": {
            "create": t.create,
            "destroy": t.destroy,
            "join": t.join,
            "create_failures": t.create_failures,
        },
        "decisions": [_decision_json(d, outcome.start) for d in outcome.decisions],
        "summary": summary(outcome.decisions),
    }
    if h.recorded:
        rep = compare_recorded(outcome)
        doc["recorded"] = {
            "reproduced": rep.reproduced,
            "same": [
                {"node": r.node, "reason": r.reason, "recorded": iso(r.at), "simulated": iso(d.at)}
                for r, d in rep.both
            ],
            "only_recorded": [
                {"node": r.node, "reason": r.reason, "at": iso(r.at)} for r in rep.only_recorded
            ],
            "only_simulated": [
                {"node": d.node, "reason": d.reason, "at": iso(d.at)} for d in rep.only_simulated
            ],
        }
    return doc


def _decision_json(d: Decision, start: float) -> dict[str, Any]:
    return {
        "at": iso(d.at),
        "offset": offset(d.at - start),
        "seconds": round(d.at - start, 3),
        "event": d.event,
        "cluster": d.cluster,
        "node": d.node,
        "pool": d.pool,
        "reason": d.reason,
        "message": d.message,
    }


# -- two runs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    """One decision that differs between the runs: made by one only, or at other times."""

    key: tuple[str, str, str | None, str]  # event, cluster, node, reason
    a: Decision | None
    b: Decision | None

    @property
    def at(self) -> float:
        return min(d.at for d in (self.a, self.b) if d is not None)


def diff(a: Outcome, b: Outcome) -> list[Change]:
    """The decisions (not the health changes) that differ: the n-th decision of one kind
    (event, node, reason) in one run is paired with the n-th of the other."""
    runs: list[dict[tuple[str, str, str | None, str], list[Decision]]] = []
    for outcome in (a, b):
        found: dict[tuple[str, str, str | None, str], list[Decision]] = defaultdict(list)
        for d in outcome.decisions:
            if is_decision(d):
                found[(d.event, d.cluster, d.node, d.reason)].append(d)
        runs.append(found)
    changes: list[Change] = []
    for key in sorted(set(runs[0]) | set(runs[1]), key=str):
        xs, ys = runs[0].get(key, []), runs[1].get(key, [])
        for i in range(max(len(xs), len(ys))):
            x = xs[i] if i < len(xs) else None
            y = ys[i] if i < len(ys) else None
            if x is None or y is None or abs(x.at - y.at) > SAME_TIME:
                changes.append(Change(key, x, y))
    return sorted(changes, key=lambda c: (c.at, str(c.key)))


def diff_text(a: Outcome, b: Outcome, *, configs: tuple[str, str]) -> str:
    changes = diff(a, b)
    start = a.start
    lines = [
        f"healer simulate --compare: {a.history.name}",
        f"  A = {configs[0]}",
        f"  B = {configs[1]}",
    ]
    for name, run in (("A", a), ("B", b)):
        first, *rest = summary(run.decisions)
        lines += [f"  {name}: {first}", *(f"     {line}" for line in rest)]
    lines.append("")
    if not changes:
        lines.append("no difference: both configurations make the same decisions at the same times")
    for c in changes:
        event, cluster, node, reason = c.key
        where = f"{cluster}/{node}" if node else cluster
        if c.a is not None and c.b is not None:
            lines.append(
                f"  A {offset(c.a.at - start)} / B {offset(c.b.at - start)}  {event:<22} "
                f"{where} {reason}"
            )
            continue
        only, d = ("A", c.a) if c.a is not None else ("B", c.b)
        assert d is not None
        lines.append(f"{only} only {offset(d.at - start):<12} {event:<22} {where} {reason}")
        lines.append(_wrapped(d.message, indent=20))
    return "\n".join(lines) + "\n"


def diff_json(a: Outcome, b: Outcome, *, configs: tuple[str, str]) -> dict[str, Any]:
    return {
        "a": to_json(a, config=configs[0]),
        "b": to_json(b, config=configs[1]),
        "diff": [
            {
                "event": c.key[0],
                "cluster": c.key[1],
                "node": c.key[2],
                "reason": c.key[3],
                "a": _decision_json(c.a, a.start) if c.a else None,
                "b": _decision_json(c.b, a.start) if c.b else None,
            }
            for c in diff(a, b)
        ],
    }
