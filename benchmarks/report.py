"""A bench result (the JSON `make bench` writes) as a Markdown table, for docs/benchmarks.md:
``python -m benchmarks.report bench-results.json``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = (
        f"{value:,.0f}"
        if abs(value) >= 100
        else f"{value:.2f}"
        if abs(value) >= 1
        else f"{value:.3f}"
    )
    return f"{text} {unit}".strip()


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| section | measure | healer | baseline | ratio | target |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, section in result["sections"].items():
        if "error" in section:
            lines.append(f"| {name} | failed: {' '.join(section['error'].split())} | | | | |")
        for f in section["figures"]:
            base = f"{fmt(f['baseline'])} ({f['baseline_label']})" if f["baseline_label"] else "-"
            ratio = f"{f['ratio']:.2f}x" if f["ratio"] is not None else "-"
            met = {True: " (met)", False: " (**not met**)", None: ""}[f["ok"]]
            target = (f["target"] + met) if f["target"] else "-"
            lines.append(
                f"| {name} | {f['name']} | {fmt(f['value'], f['unit'])} | {base} | {ratio} | "
                f"{target} |"
            )
    return "\n".join(lines)


def growth(result: dict[str, Any]) -> str:
    """How the fleet figures grow with size: one row per size of the ``fleet`` and ``recheck``
    sections."""
    sections = result["sections"]
    recheck = {
        (r["nodes"], r["clusters"]): r["ms"]
        for r in sections.get("recheck", {}).get("detail") or []
    }
    fleet = {(r["nodes"], r["clusters"]): r for r in sections.get("fleet", {}).get("detail") or []}
    lines = [
        "| nodes | clusters | re-evaluation | first load | restart | idle CPU | RSS |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for nodes, clusters in sorted(set(recheck) | set(fleet)):
        row = fleet.get((nodes, clusters), {})
        first, restart = row.get("first") or {}, row.get("restart") or {}
        lines.append(
            f"| {nodes:,} | {clusters} | {fmt(recheck.get((nodes, clusters)), 'ms')} | "
            f"{fmt(first.get('done'), 's')} | {fmt(restart.get('done'), 's')} | "
            f"{fmt(row.get('idle_cpu_pct'), '%')} | {fmt(row.get('rss_mb'), 'MB')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report")
    parser.add_argument("json", type=Path, nargs="?", default=Path("bench-results.json"))
    args = parser.parse_args()
    result = json.loads(args.json.read_text())
    print(f"commit {result.get('commit')}, {result['started']}, {result['host']}\n")
    print(markdown(result))
    print()
    print(growth(result))


if __name__ == "__main__":
    main()
