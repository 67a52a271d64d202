"""``healer simulate``: what healer would have done with a history of node events under a
configuration (or two: ``--compare``), in virtual time (docs/simulate.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path

from healer.cli import exits
from healer.cli.common import config_path
from healer.config import HealerConfig, load_config
from healer.simulate import report
from healer.simulate.catalogue import SCENARIOS, scenario
from healer.simulate.engine import Outcome, default_timings, simulate
from healer.simulate.history import History, HistoryError, from_recorded, read_jsonl, to_jsonl
from healer.store.history import read_history
from healer.telemetry.logs import configure

SQLITE_HEADER = b"SQLite format 3\x00"


def cmd_simulate(args: argparse.Namespace) -> int:
    # The simulated daemon's own log lines would drown the report: its decisions are the report.
    configure("console", level="CRITICAL")
    path = config_path(args)
    config = load_config(path)
    other = load_config(args.compare) if args.compare else None
    try:
        history = _history(args, config)
        if args.write_history:
            _write(Path(args.write_history), to_jsonl(history))
    except HistoryError as exc:
        print(f"healer simulate: {exc}", file=sys.stderr)
        return exits.USAGE
    outcome = _run(config, history, args.tail)
    if other is None:
        if args.json:
            print(json.dumps(report.to_json(outcome, config=path), indent=2))
        else:
            sys.stdout.write(report.text(outcome, config=path))
        return exits.OK
    # The same history, cloud timings included, under the other configuration.
    second = _run(other, replace(history, timings=outcome.timings), args.tail)
    configs = (path, str(args.compare))
    if args.json:
        print(json.dumps(report.diff_json(outcome, second, configs=configs), indent=2))
    else:
        sys.stdout.write(report.diff_text(outcome, second, configs=configs))
    return exits.OK


def _run(config: HealerConfig, history: History, tail: float) -> Outcome:
    return asyncio.run(simulate(config, history, tail=tail))


def _history(args: argparse.Namespace, config: HealerConfig) -> History:
    if args.scenario:
        if args.scenario not in SCENARIOS:
            raise HistoryError(
                f"unknown scenario {args.scenario!r}; choose from: {', '.join(SCENARIOS)}"
            )
        history = scenario(args.scenario, config)
    else:
        source = Path(args.history)
        if source.is_dir() or _is_sqlite(source):
            history = from_recorded(read_history(source))
        else:
            history = read_jsonl(source)
    known = {c.name for c in config.clusters}
    strangers = sorted({h.cluster for h in history.happenings} - known)
    if strangers:
        raise HistoryError(
            f"{history.name}: events for cluster(s) {', '.join(strangers)} that "
            f"{config_path(args)} does not configure (clusters: {', '.join(sorted(known))})"
        )
    timings = history.timings or default_timings(config)
    overrides = {k: getattr(args, k) for k in ("create", "destroy", "join")}
    if any(v is not None for v in overrides.values()):
        timings = replace(timings, **{k: v for k, v in overrides.items() if v is not None})
    return replace(history, timings=timings)


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError as exc:
        raise HistoryError(f"{path}: cannot read the history: {exc.strerror or exc}") from None


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise HistoryError(f"{path}: cannot write the history: {exc.strerror or exc}") from None
