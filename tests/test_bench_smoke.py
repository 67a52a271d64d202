"""`make bench` cannot rot: its smallest sizes of three sections run (the re-evaluation, the CLI
start-up against `python -c pass`, the store's intake micro benchmark) and write well-formed
JSON, every figure beside its baseline, and the scaling plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_writes_figures_with_baselines(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--smoke",
            "recheck",
            "cli",
            "store",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert set(result["sections"]) == {"recheck", "cli", "store"}
    for name, section in result["sections"].items():
        assert "error" not in section, (name, section)
        assert section["figures"], name
        for figure in section["figures"]:
            assert isinstance(figure["value"], float) and figure["value"] > 0, figure
            assert isinstance(figure["baseline"], float) and figure["baseline"] > 0, figure
            assert figure["ratio"] == figure["value"] / figure["baseline"], figure
            assert figure["unit"] and figure["baseline_label"], figure
    names = [f["name"] for f in result["sections"]["cli"]["figures"]]
    assert names == [
        "`healer --help` wall time",
        "`healer status (100 nodes, 2 clusters)` wall time",
    ]
    # Printed as a table with the ratios, and the growth with size drawn beside the JSON.
    assert "== all figures" in done.stdout and "x |" in done.stdout
    svg = out.with_suffix(".svg").read_text()
    assert svg.startswith("<svg") and "full re-evaluation" in svg


def test_a_paired_figure_is_judged_by_the_median_of_its_rounds_ratios() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.harness import Figure, paired_ratio

    # Round 2 ran on a slow host, for both sides: its pair says 0.5x like the others, while the
    # medians of each side alone (10 against 18) would say 0.56x.
    healer, bare = [10.0, 6.0, 11.0], [20.0, 12.0, 18.0]
    assert paired_ratio(healer, bare) == 0.5
    figure = Figure("x", 10.0, "req/s", 18.0, samples=healer, baseline_samples=bare, paired=True)
    assert figure.ratio == 0.5 and Figure("x", 10.0, "req/s", 18.0).ratio == 10.0 / 18.0
    assert paired_ratio([1.0], [1.0, 2.0]) is None and paired_ratio([1.0], [0.0]) is None
