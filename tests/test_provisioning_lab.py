"""`healer plan`, `apply` and `destroy` against the lab cloud, end to end through the CLI.

The lab cloud is the SQLite-backed libcloud driver; tests read what it holds through the driver's
control panel and the lab infrastructure backend, never through the code under test.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from healer.cli.main import main
from healer.cli.parser import build_parser
from healer.cloud.machines import MachineRequest
from healer.cloud.resources import TAG_RESOURCE
from healer.model import TAG_CLUSTER, TAG_MANAGED
from healer.naming import ownership_tags
from healer.provisioning.commands import NOT_CONFIRMED, run_destroy
from providers.lab.driver import DB_FILENAME, LabNodeDriver
from providers.lab.infra_backend import LabInfraBackend
from providers.lab.plugin import LabProvider

ADMIN = "203.0.113.0/24"
SUBNET = "10.20.1.0/24"


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    # The commands configure logging for a terminal; other tests expect the defaults.
    yield
    structlog.reset_defaults()


def _cluster(name: str, cidr: str = "10.20.0.0/16", subnet: str = SUBNET) -> dict[str, Any]:
    return {
        "name": name,
        "provider": {"plugin": "lab"},
        "network": {"cidr": cidr, "subnetCidr": subnet},
        "adminCidrs": [ADMIN],
        "pools": [
            {
                "name": "control-plane",
                "role": "control-plane",
                "size": 3,
                "machine": {"size": "medium"},
            },
            {"name": "workers", "size": 2},
        ],
    }


@pytest.fixture
def lab(tmp_path: Path) -> dict[str, Any]:
    config = tmp_path / "healer.yaml"
    config.write_text(yaml.safe_dump({"logFormat": "json", "clusters": [_cluster("demo")]}))
    state = tmp_path / "state"
    return {
        "config": config,
        "state": state,
        "args": ["-c", str(config), "--state-dir", str(state)],
    }


def _run(lab: dict[str, Any], *argv: str) -> int:
    return main([argv[0], *lab["args"], *argv[1:]])


def _driver(lab: dict[str, Any]) -> LabNodeDriver:
    return LabNodeDriver(key=lab["state"] / DB_FILENAME)


def _owned(cluster: str, kind: str) -> dict[str, str]:
    return {TAG_MANAGED: "true", TAG_CLUSTER: cluster, TAG_RESOURCE: kind}


def _live(driver: LabNodeDriver, cluster: str) -> list[dict[str, Any]]:
    return [
        m
        for m in driver.ex_list_machines()
        if m["state"] != "terminated" and m["tags"].get(TAG_CLUSTER) == cluster
    ]


def _changes(out: str) -> list[str]:
    return [
        line.strip() for line in out.splitlines() if line.strip()[:2] in ("+ ", "~ ", "- ", "! ")
    ]


def test_apply_builds_network_firewall_lb_and_pools_and_a_second_apply_changes_nothing(
    lab: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(lab, "apply", "--yes") == 0
    first = capsys.readouterr().out
    assert len(_changes(first)) == 9  # network, subnet, firewall, LB, 3 + 2 machines

    driver, infra = _driver(lab), LabInfraBackend()
    (net,) = infra.list_networks(driver, _owned("demo", "network"))
    (sub,) = infra.list_subnets(driver, _owned("demo", "subnet"))
    (fw,) = infra.list_firewalls(driver, _owned("demo", "firewall"))
    (lb,) = infra.list_load_balancers(driver, _owned("demo", "load-balancer"))
    assert (net.name, net.cidr) == ("demo-net", "10.20.0.0/16")
    assert (sub.name, sub.cidr, sub.network_id, sub.public_ips) == (
        "demo-subnet",
        SUBNET,
        net.id,
        False,
    )
    assert {str(p) for p in fw.permissions} == {
        f"all from {SUBNET}",
        f"tcp/22 from {ADMIN}",
        "tcp/6443 from lb:demo-api",
    }
    assert (lb.name, lb.port, lb.target_port) == ("demo-api", 6443, 6443)
    assert str(lb.health_check) == "https:6443/readyz every 10s (timeout 5s, 2 up/3 down)"

    machines = _live(driver, "demo")
    pools = sorted(m["tags"]["healer.io/pool"] for m in machines)
    assert pools == ["control-plane"] * 3 + ["workers"] * 2
    for m in machines:
        # Private addresses in the subnet, behind the firewall; no public address.
        assert ipaddress.ip_address(m["private_ip"]) in ipaddress.ip_network(SUBNET)
        assert (m["subnet_id"], m["firewall_ids"], m["public_ip"]) == (sub.id, [fw.id], None)
        assert m["user_data"].startswith("#cloud-config\n")
        assert f"hostname: {m['name']}" in m["user_data"]
    cps = sorted(m["id"] for m in machines if m["tags"]["healer.io/pool"] == "control-plane")
    assert list(lb.members) == cps
    assert f"API endpoint: {lb.address}:6443 (3 members)" in first

    created = len(driver.ex_created_log())
    rows = _infra_rows(lab)
    assert _run(lab, "apply", "--yes") == 0
    second = capsys.readouterr().out
    assert _changes(second) == [] and "no changes" in second
    assert len(driver.ex_created_log()) == created
    assert _infra_rows(lab) == rows  # not even an update timestamp moved
    assert _run(lab, "plan", "--detailed-exitcode") == 0


def _infra_rows(lab: dict[str, Any]) -> list[tuple[Any, ...]]:
    with sqlite3.connect(lab["state"] / DB_FILENAME) as conn:
        return conn.execute("SELECT id, spec, tags, updated_at FROM infra ORDER BY seq").fetchall()


def test_plan_after_a_machine_is_destroyed_by_hand_shows_exactly_that_machine(
    lab: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(lab, "apply", "--yes") == 0
    driver = _driver(lab)
    victim = next(m for m in _live(driver, "demo") if m["tags"]["healer.io/pool"] == "workers")
    node = driver.ex_get_node(victim["id"])
    assert node is not None and driver.destroy_node(node)
    capsys.readouterr()

    assert _run(lab, "plan", "--detailed-exitcode") == 2
    (line,) = _changes(capsys.readouterr().out)
    assert line.startswith("+ machine in pool workers")
    assert f"replaces {victim['name']}, which is gone" in line

    assert _run(lab, "apply", "--yes") == 0
    assert len(_live(driver, "demo")) == 5
    capsys.readouterr()
    assert _run(lab, "plan", "--detailed-exitcode") == 0


def test_a_replacement_made_outside_apply_is_placed_and_joins_the_lb(
    lab: dict[str, Any],
) -> None:
    """The daemon replaces machines through Provider.create_machine, not apply."""
    assert _run(lab, "apply", "--yes") == 0

    async def replace_one() -> tuple[Any, Any]:
        provider = LabProvider(cluster="demo", options={}, credentials={}, state_dir=lab["state"])
        try:
            made = await provider.create_machine(
                MachineRequest(
                    name="demo-control-plane-replaced",
                    size="medium",
                    image="debian-12",
                    tags=ownership_tags("demo", "control-plane", "wf-1"),
                    user_data="#cloud-config\n",
                )
            )
            assert provider.infra is not None
            (lb,) = await provider.infra.list_load_balancers(_owned("demo", "load-balancer"))
            assert made.id in lb.members
            assert await provider.destroy_machine(made)
            (after,) = await provider.infra.list_load_balancers(_owned("demo", "load-balancer"))
            return made, after
        finally:
            await provider.close()

    made, after = asyncio.run(replace_one())
    assert made.extra["subnet_id"].startswith("subnet-")
    assert ipaddress.ip_address(made.private_ips[0]) in ipaddress.ip_network(SUBNET)
    assert made.id not in after.members
    # Taken out of the LB before it was destroyed, not merely hidden as terminated.
    with sqlite3.connect(lab["state"] / DB_FILENAME) as conn:
        (spec,) = conn.execute("SELECT spec FROM infra WHERE kind = 'load-balancer'").fetchone()
    assert made.id not in json.loads(spec)["members"]


def test_destroy_asks_first_and_deletes_only_that_clusters_resources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "healer.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "logFormat": "json",
                "clusters": [
                    _cluster("alpha"),
                    _cluster("beta", cidr="10.30.0.0/16", subnet="10.30.1.0/24"),
                ],
            }
        )
    )
    state = tmp_path / "state"
    common = ["-c", str(config), "--state-dir", str(state)]
    assert main(["apply", *common, "--yes"]) == 0
    driver = LabNodeDriver(key=state / DB_FILENAME)
    beta_before = sorted(m["id"] for m in _live(driver, "beta"))

    args = build_parser().parse_args(["destroy", *common, "--cluster", "alpha"])
    # No terminal to confirm on and no --yes: refused.
    assert (
        run_destroy(args, config_path=str(config), state_dir=state, stdin_is_tty=lambda: False)
        == NOT_CONFIRMED
    )
    # A terminal, but the wrong answer: refused.
    assert (
        run_destroy(
            args,
            config_path=str(config),
            state_dir=state,
            stdin_is_tty=lambda: True,
            confirm=lambda _: "beta",
        )
        == NOT_CONFIRMED
    )
    assert len(_live(driver, "alpha")) == 5
    # The cluster's name typed back: done.
    prompts: list[str] = []
    assert (
        run_destroy(
            args,
            config_path=str(config),
            state_dir=state,
            stdin_is_tty=lambda: True,
            confirm=lambda prompt: prompts.append(prompt) or "alpha",
        )
        == 0
    )
    assert "Type the cluster name to confirm" in prompts[0]
    assert _live(driver, "alpha") == []
    infra = LabInfraBackend()
    for kind, lister in (
        ("network", infra.list_networks),
        ("subnet", infra.list_subnets),
        ("firewall", infra.list_firewalls),
        ("load-balancer", infra.list_load_balancers),
    ):
        assert lister(driver, _owned("alpha", kind)) == []
        assert len(lister(driver, _owned("beta", kind))) == 1
    assert sorted(m["id"] for m in _live(driver, "beta")) == beta_before

    capsys.readouterr()
    assert main(["destroy", *common, "--cluster", "alpha", "--yes"]) == 0
    assert "no changes" in capsys.readouterr().out  # nothing left to delete


def test_apply_refuses_a_conflict_before_changing_anything(
    lab: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(lab, "apply", "--yes") == 0
    doc = yaml.safe_load(lab["config"].read_text())
    doc["clusters"][0]["network"] = {"cidr": "10.99.0.0/16", "subnetCidr": "10.99.1.0/24"}
    doc["clusters"][0]["pools"][1]["size"] = 4
    lab["config"].write_text(yaml.safe_dump(doc))
    driver = _driver(lab)
    created = len(driver.ex_created_log())
    capsys.readouterr()

    assert _run(lab, "apply", "--yes") == 1
    err = capsys.readouterr().err
    assert "apply refused, nothing was changed" in err
    assert "! network demo-net: is 10.20.0.0/16 in the cloud, 10.99.0.0/16 in the config" in err
    assert len(driver.ex_created_log()) == created


def test_plan_exit_codes_keep_2_for_changes_only(
    lab: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(lab, "plan") == 0  # changes, but no --detailed-exitcode
    broken = tmp_path / "broken.yaml"
    broken.write_text("clusters: [{name: x}]\n")
    argv = ["plan", "-c", str(broken), "--state-dir", str(tmp_path / "s")]
    assert main([*argv, "--detailed-exitcode"]) == 1
    assert main(argv) == 2  # healer's usual exit code for a config error
    assert "clusters[0].provider" in capsys.readouterr().err


def test_validate_says_what_a_provider_lacks_and_where_the_alternative_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    openstack = {
        **_cluster("onprem"),
        "provider": {"plugin": "libcloud", "options": {"driver": "openstack"}},
    }
    gce = {
        **_cluster("google"),
        "provider": {"plugin": "libcloud", "options": {"driver": "gce"}},
        "network": {"cidr": "10.20.0.0/16", "subnetCidr": SUBNET, "location": "us-central1-a"},
    }
    gce["pools"][1] = {**gce["pools"][1], "machine": {"location": "europe-west1-b"}}
    config = tmp_path / "healer.yaml"
    config.write_text(yaml.safe_dump({"clusters": [openstack, gce]}))

    assert main(["validate", "-c", str(config)]) == 2  # a configuration to fix (exit table)
    err = capsys.readouterr().err
    assert "provider libcloud/openstack cannot build private networks and subnets" in err
    assert "docs/provisioning.md" in err
    assert "pool workers is in europe-west1-b, outside the subnet's region us-central1" in err

    del openstack["network"]
    gce["pools"][1]["machine"] = {"location": "us-central1-b"}
    config.write_text(yaml.safe_dump({"clusters": [openstack, gce]}))
    assert main(["validate", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert (
        "provider libcloud/openstack cannot build private networks and subnets, firewalls, "
        "load balancers; the on-premises alternative is in docs/provisioning.md" in out
    )
    assert "note: load balancer: a backend-service passthrough Network Load Balancer" in out
