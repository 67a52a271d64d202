"""What ``healer simulate`` replays: a history of node events (as the sources hand them to the
health tracker), the reboots the nodes' agents ask for, and how fast the simulated cloud is.

Three origins, one :class:`History`: a JSONL file (:func:`read_jsonl`; the format is in
docs/simulate.md, and :func:`to_jsonl` writes it), a state database's recorded events
(:func:`from_recorded`), and the built-in catalogue (:mod:`healer.simulate.catalogue`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from healer.model import NodeEvent
from healer.store.history import RecordedHistory, RecordedRemediation

REBOOT_REQUEST = "reboot_request"  # a JSONL line: an agent wants to reboot its node
PROVIDER = "provider"  # a JSONL line: the simulated cloud's timings


class HistoryError(ValueError):
    """A history that cannot be replayed: names the file and line."""


@dataclass(frozen=True)
class RebootWish:
    """A node's agent wants to reboot it (a kernel upgrade): it asks the reboot arbiter (when
    the configuration has one) and asks again when refused; once allowed it reboots, and is back
    ``downtime`` seconds later, or never (``comes_back`` false: a bad upgrade)."""

    cluster: str
    node: str
    at: float
    downtime: float = 60.0
    comes_back: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": REBOOT_REQUEST,
            "cluster": self.cluster,
            "node": self.node,
            "at": self.at,
            "downtime": self.downtime,
            "comes_back": self.comes_back,
        }


Happening = NodeEvent | RebootWish


@dataclass(frozen=True)
class Timings:
    """The simulated cloud, in seconds: creating a machine, destroying one, a created machine
    joining as a Ready node; the first ``create_failures`` creates fail (retried by the
    workflow like any cloud error)."""

    create: float = 30.0
    destroy: float = 10.0
    join: float = 45.0
    create_failures: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": PROVIDER,
            "create": self.create,
            "destroy": self.destroy,
            "join": self.join,
            "create_failures": self.create_failures,
        }


@dataclass(frozen=True)
class History:
    name: str  # what the report calls it: a scenario, a file
    happenings: tuple[Happening, ...]
    timings: Timings | None = None  # None: the engine's defaults for the configuration
    description: str = ""
    # The remediations the daemon that recorded this history made (a state database only).
    recorded: tuple[RecordedRemediation, ...] = ()
    # Events of the recorded history that were healer's own doing and are left out (the
    # simulated workflow makes its own): replacements' nodes, remediated nodes after the start.
    consequences: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def start(self) -> float:
        return min((h.at for h in self.happenings), default=0.0)

    @property
    def end(self) -> float:
        return max((h.at for h in self.happenings), default=0.0)


def read_jsonl(path: Path) -> History:
    """A history file: one JSON object a line (blank lines and ``#`` comments skipped)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise HistoryError(f"{path}: cannot read the history file: {exc}") from exc
    happenings: list[Happening] = []
    timings: Timings | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HistoryError(f"{where}: not JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(doc, dict):
            raise HistoryError(f"{where}: each line must be a JSON object")
        try:
            doc = {**doc, "at": _epoch(doc["at"])} if "at" in doc else doc
            if doc.get("kind") == PROVIDER:
                timings = _timings(doc)
            elif doc.get("kind") == REBOOT_REQUEST:
                happenings.append(_wish(doc))
            else:
                happenings.append(NodeEvent.from_json(doc))
        except ValueError as exc:
            raise HistoryError(f"{where}: {exc}") from None
    if not happenings:
        raise HistoryError(f"{path}: no events in the history file")
    return History(name=str(path), happenings=tuple(happenings), timings=timings)


def to_jsonl(history: History) -> str:
    """``history`` as a file :func:`read_jsonl` reads back."""
    lines = [json.dumps(history.timings.to_json())] if history.timings else []
    lines += [json.dumps(h.to_json(), sort_keys=False) for h in history.happenings]
    return "\n".join(lines) + "\n"


def from_recorded(recorded: RecordedHistory) -> History:
    """The world's part of a state database's history: its events less those that were healer's
    own doing (the simulated workflow brings its own): every event of a replacement's node, and
    the events of a remediated node from its remediation's start (its cordon, its deletion)."""
    replacements = {(r.cluster, r.replacement) for r in recorded.remediations}
    started: dict[tuple[str, str], float] = {}
    for r in recorded.remediations:
        started.setdefault((r.cluster, r.node), r.at)
    kept: list[Happening] = []
    dropped = 0
    for event in recorded.events:
        key = (event.cluster, event.node)
        if key in replacements or (key in started and event.at >= started[key]):
            dropped += 1
        else:
            kept.append(event)
    notes = (f"{recorded.skipped} unreadable event rows skipped",) if recorded.skipped else ()
    return History(
        name=str(recorded.path),
        happenings=tuple(kept),
        recorded=recorded.remediations,
        consequences=dropped,
        notes=notes,
    )


def sorted_happenings(happenings: Iterable[Happening]) -> list[Happening]:
    """In time order; equal times keep their order (a list's markers around its nodes)."""
    return sorted(happenings, key=lambda h: h.at)


def _epoch(value: object) -> float:
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"'at' {value!r} is neither epoch seconds nor ISO-8601") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("'at' must be epoch seconds or an ISO-8601 time")
    return float(value)


def _number(doc: dict[str, Any], name: str, default: float) -> float:
    value = doc.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ValueError(f"{name!r} must be a number of seconds, 0 or more")
    return float(value)


def _wish(doc: dict[str, Any]) -> RebootWish:
    for name in ("cluster", "node"):
        if not isinstance(doc.get(name), str) or not doc[name]:
            raise ValueError(f"a reboot_request needs {name!r} (a string)")
    if "at" not in doc:
        raise ValueError("a reboot_request needs 'at'")
    comes_back = doc.get("comes_back", True)
    if not isinstance(comes_back, bool):
        raise ValueError("'comes_back' must be true or false")
    return RebootWish(
        cluster=doc["cluster"],
        node=doc["node"],
        at=doc["at"],
        downtime=_number(doc, "downtime", 60.0),
        comes_back=comes_back,
    )


def _timings(doc: dict[str, Any]) -> Timings:
    unknown = set(doc) - {"kind", "create", "destroy", "join", "create_failures"}
    if unknown:
        raise ValueError(f"unknown provider field(s): {', '.join(sorted(unknown))}")
    base = Timings()
    failures = doc.get("create_failures", 0)
    if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0:
        raise ValueError("'create_failures' must be a whole number, 0 or more")
    return Timings(
        create=_number(doc, "create", base.create),
        destroy=_number(doc, "destroy", base.destroy),
        join=_number(doc, "join", base.join),
        create_failures=failures,
    )
