"""`healer status`, `history` and the name checks read the configuration's summary
(healer/config/summary.py) without pydantic: building every model costs more than the rest of
`healer status` at fleet size, and a production host always has /etc/healer/healer.yaml (issue 12).

Structural, not timed: the configuration path of status imports no pydantic; the summary is what
the full load gives wherever it answers; and where the file is wrong in what the summary reads,
the command reports the full load's error, word for word, as before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from healer.cli.main import main
from healer.config import ConfigError, load_config
from healer.config.summary import (
    ClusterSummary,
    ConfigSummary,
    PoolSummary,
    read_summary,
    summary_of,
)
from tests.test_cli import imported_modules
from tests.test_cli_fleet import seed_fleet

REPO = Path(__file__).resolve().parent.parent

CONFIG = """\
stateDir: state
clusters:
  - name: c1
    provider: {plugin: lab}
    remediation: {maxUnhealthy: 40%}
    pools:
      - {name: cp, role: control-plane, size: 3}
      - {name: workers, size: 39}
  - name: c2
    provider: {plugin: lab}
    etcd: {mode: portforward}
    pools: [{name: workers, size: 7}]
  - name: c3
    provider: {plugin: lab}
    pools: [{name: workers, size: 2}]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "healer.yaml"
    path.write_text(text)
    return path


def test_the_summary_is_what_the_full_load_gives(tmp_path: Path) -> None:
    path = _write(tmp_path, CONFIG)
    light = read_summary(path)
    assert light == ConfigSummary(
        state_dir=tmp_path.resolve() / "state",  # relative to the file, as the full load
        clusters=(
            ClusterSummary("c1", (PoolSummary("cp", 3), PoolSummary("workers", 39))),
            ClusterSummary("c2", (PoolSummary("workers", 7),), etcd_mode="portforward"),
            ClusterSummary("c3", (PoolSummary("workers", 2),)),
        ),
    )
    full = summary_of(load_config(path))
    assert full.full is not None and light == ConfigSummary(full.state_dir, full.clusters)


@pytest.mark.parametrize(
    "config", sorted(p.name for p in (REPO / "config").glob("*.yaml")), ids=str
)
def test_the_shipped_configurations_summarize_as_they_load(config: str) -> None:
    path = REPO / "config" / config
    light = read_summary(path)
    full = summary_of(load_config(path))
    if light is not None:
        assert light == ConfigSummary(full.state_dir, full.clusters)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("size: 39", "size: -1"),  # out of range
        ("size: 39", "size: many"),  # not a number
        ("size: 39", "size: 39, size: 40"),  # a key twice
        ("name: workers, size: 39", "name: cp, size: 39"),  # a pool name twice
        ("name: c3", "name: c1"),  # a cluster name twice
        ("name: c3", "name: C3"),  # not a name
        ("role: control-plane, size: 3", "role: control-plane, size: 4"),  # even etcd
        ("role: control-plane", "role: leader"),  # no such role
        ("mode: portforward", "mode: sideways"),  # no such etcd mode
        ("pools: [{name: workers, size: 2}]", "pools: []"),
        ("stateDir: state", "stateDir: [a, b]"),
        ("    pools: [{name: workers, size: 7}]", "    pools: [{name: workers, size: 7}"),
    ],
)
def test_an_error_in_what_status_reads_is_reported_as_the_full_load_reports_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str
) -> None:
    assert old in CONFIG
    path = _write(tmp_path, CONFIG.replace(old, new, 1))
    assert read_summary(path) is None  # declined: the full load tells what is wrong
    with pytest.raises(ConfigError) as err:
        load_config(path)
    seed_fleet(tmp_path)
    for argv in (["status"], ["history"]):
        capsys.readouterr()
        assert main([*argv, "--state-dir", str(tmp_path), "-c", str(path)]) == 2
        assert capsys.readouterr().err == f"healer: {err.value}\n"


def test_a_broken_default_configuration_is_a_note_and_status_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, CONFIG.replace("size: 39", "size: -1"))
    monkeypatch.setattr("healer.cli.common.DEFAULT_CONFIG", str(path))
    monkeypatch.delenv("HEALER_CONFIG", raising=False)
    seed_fleet(tmp_path)
    assert main(["status", "--state-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "note: configured pool sizes not shown:" in err
    assert "clusters[0].pools[1].size" in err  # the full load's words


def test_what_the_summary_does_not_vouch_for_is_loaded_in_full(tmp_path: Path) -> None:
    state = CONFIG + "state: {url: 'postgresql://healer@db.example:5432/healer'}\n"
    assert read_summary(_write(tmp_path, state)) is None  # the store needs the validated section
    direct = CONFIG.replace("mode: portforward", "mode: direct, endpoints: ['https://h:2379']")
    assert read_summary(_write(tmp_path, direct)) is None  # status reads that etcd
    assert read_summary(tmp_path / "missing.yaml") is None  # the full load says why


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["history"]], ids=" ".join)
def test_status_with_a_configuration_builds_no_model(tmp_path: Path, argv: list[str]) -> None:
    seed_fleet(tmp_path)
    path = _write(tmp_path, CONFIG)
    proc, modules = imported_modules(*argv, "--state-dir", str(tmp_path), "-c", str(path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "healer.config.summary" in modules  # the configuration was read
    loaded = sorted(
        m for m in modules if m.split(".")[0] == "pydantic" or m == "healer.config.model"
    )
    assert loaded == [], f"healer {' '.join(argv)} -c imported {loaded[:5]}"
    if argv == ["status"]:
        assert "etcd c2: etcd unreachable (etcd.mode portforward: read by the daemon only)" in (
            proc.stdout
        )
        assert "c1         workers            39    39" in proc.stdout  # the configured size
    if argv == ["status", "--json"]:
        pools = {(p["cluster"], p["pool"]): p["size"] for p in json.loads(proc.stdout)["pools"]}
        assert pools[("c1", "cp")] == 3 and pools[("c3", "workers")] == 2


def test_the_summary_checks_what_the_models_check() -> None:
    """The bounds the summary checks are the models' own: a model changed alone fails here."""
    import typing

    from healer.config import ClusterConfig, EtcdConfig, PoolConfig, summary

    def meta(model: type[Any], field: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for item in model.model_fields[field].metadata:
            for key in ("max_length", "pattern", "ge", "le", "gt", "lt", "min_length"):
                if getattr(item, key, None) is not None:
                    found[key] = getattr(item, key)
        return found

    for model in (ClusterConfig, PoolConfig):
        assert meta(model, "name") == {
            "max_length": summary._NAME_MAX,
            "pattern": summary._NAME.pattern,
        }
    assert meta(PoolConfig, "size") == {"ge": 0, "le": summary._POOL_SIZE_MAX}
    modes = typing.get_args(EtcdConfig.model_fields["mode"].annotation)
    assert set(summary._ETCD_SUMMARIZED) == set(modes) - {"direct"}
