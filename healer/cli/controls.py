"""``healer pause``, ``healer resume`` and ``healer breaker``: the operator's switches, written to
the state database the daemon reads."""

from __future__ import annotations

import argparse

from healer.cli.common import as_state_owner, configured_store, state_dir_for, timeline, ts
from healer.cli.names import known_names
from healer.errors import ConfigError
from healer.store.sqlite import BREAKER_BAD_UPGRADE, BREAKER_KINDS, Store, pause_scope


def cmd_pause(args: argparse.Namespace) -> int:
    return _set_paused(args, paused=True)


def cmd_resume(args: argparse.Namespace) -> int:
    return _set_paused(args, paused=False)


def _set_paused(args: argparse.Namespace, *, paused: bool) -> int:
    if args.pool and not args.cluster:
        raise ConfigError("--pool needs --cluster")
    state_dir = state_dir_for(args)
    as_state_owner(state_dir)
    store = configured_store(args, state_dir) or Store.open(state_dir)
    known_names(args, store).check(args.cluster, args.pool)
    scope = pause_scope(args.cluster, args.pool)
    now = timeline(state_dir)
    changed = store.set_paused(scope, paused, at=now, note=getattr(args, "note", "") or "")
    from healer.store.recorder import Recorder  # its metrics: not loaded by `breaker show`

    # The command's output is its answer: the audit row only, no log line.
    Recorder(store).record(
        "operator.paused" if paused else "operator.resumed",
        at=now,
        cluster=args.cluster or "*",
        pool=args.pool,
        reason="Operator",
        message=f"{'paused' if paused else 'resumed'} {scope}",
        log_line=False,
    )
    verb = "paused" if paused else "resumed"
    print(f"{verb} {scope}" if changed else f"{scope} was already {verb}")
    return 0


def cmd_breaker(args: argparse.Namespace) -> int:
    as_state_owner(state_dir_for(args))
    store = configured_store(args, state_dir_for(args)) or Store.open(state_dir_for(args))
    known_names(args, store).check(args.cluster)
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
                    print(f"{c}: {shown_as[kind]} since {ts(at)}: {reason}")
                    shown += 1
        if not shown and args.cluster is not None:
            print(f"{args.cluster}: " + ", ".join(f"{label[k]} closed" for k in kinds))
        elif not shown:
            print("no breaker is open")
        return 0
    from healer.jobs.manual import reset_breakers

    reset = [
        f"{name} ({label[kind]})" if kind == BREAKER_BAD_UPGRADE else name
        for name, kind in reset_breakers(
            store, cluster=args.cluster, kinds=kinds, at=timeline(state_dir_for(args))
        )
    ]
    print(f"breaker reset for: {', '.join(reset)}" if reset else "no breaker was open")
    return 0
