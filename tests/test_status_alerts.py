"""`healer status` names the blocking alerts that hold remediation and reboots back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from healer.cli.main import main
from healer.planner.alert_blocks import AlertBlocks
from healer.store.sqlite import Store


def test_status_shows_firing_blocking_alerts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store.open(tmp_path)
    now = time.time()
    blocks = AlertBlocks(store=store)
    blocks.fire(cluster="prod", alert="KubeAPIDown", fingerprint="a", since=now, now=now, ttl=600)
    blocks.fire(cluster="dev", alert="Old", fingerprint="b", since=now - 900, now=now - 900, ttl=60)
    store.close()

    assert main(["status", "--state-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "blocking alerts: prod: KubeAPIDown" in text
    assert "Old" not in text  # expired: no repeat notification within its ttl

    assert main(["status", "--state-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["blocking_alerts"] == {"prod": ["KubeAPIDown"]}
