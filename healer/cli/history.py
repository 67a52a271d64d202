"""``healer history``: the audit log, and for one node the evidence and its workflows' steps."""

from __future__ import annotations

import argparse
import json
from typing import Any

from healer.cli.common import open_store, ts
from healer.cli.names import check_node, known_names


def cmd_history(args: argparse.Namespace) -> int:
    store = open_store(args)
    known_names(args, store).check(args.cluster)
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
    if not entries and args.node:
        # A typo, or a node healer never heard of: say which nodes it knows of instead.
        logged = {e.node for e in store.audit_log(cluster=args.cluster) if e.node}
        check_node(store, args.cluster, args.node, also=logged)
    if not entries:
        print("no history" + (f" for node {args.node}" if args.node else ""))
        return 0
    shown: set[str] = set()  # each piece of evidence once, under the first entry it explains
    for e in entries:
        where = f"{e.cluster}/{e.node}" if e.node else e.cluster
        print(f"{ts(e.at)}  {e.event:<28} {where:<32} {e.reason}: {e.message}")
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
            print(f"  {ts(s['at'])}  {s['step']:<16} {s['status']:<10} {_short(s['detail'])}")
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
    return f"{ts(ev.get('at'))} {ev.get('source', '?')}: {what}"
