"""The zone-outage lab scenario, run through the CLI (issue 8, "zone short-circuit")."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.test_lab_scenarios import lab_config, ready_timeouts, run_scenario

pytestmark = pytest.mark.slow


def test_a_zone_outage_is_refused_as_a_whole(tmp_path: Path) -> None:
    # Ready=Unknown after 2 s (the lab's: 5 s): the outage is watched past it, then healed.
    config = lab_config(tmp_path, health=ready_timeouts("2s"))
    report, output = run_scenario("zone-outage", tmp_path, config=config)
    assert report["ok"], output[-6000:]
    zone = report["zone"]
    cut = {i["node"] for i in report["injected"]}
    # The lab spreads every pool over the zones: 8 nodes over 3 zones, 3 in the largest.
    assert Counter(report["zones"].values()) == {"lab-a": 3, "lab-b": 3, "lab-c": 2}
    assert cut == {n for n, z in report["zones"].items() if z == zone} and len(cut) == 3
    # Within each pool's maxUnhealthy (2 of 5 workers, 1 of 3 control planes): only the zone
    # limit sees the outage whole.
    assert report["pools_hit"] == ["control-plane", "workers"]
    assert report["remediations"] == []
    refused = [r for r in report["refusals"] if r["reason"] == "TooManyUnhealthyInZone"]
    assert {r["node"] for r in refused} == cut
    assert all(f"nodes in zone lab/{zone} are out of service" in r["message"] for r in refused)
    assert report["expectations"]["nodes_back_after_heal"] is True
    inv = report["invariants"]
    assert inv["machines_in_cloud"] == inv["nodes_expected"] == inv["ready_nodes"] == 8
