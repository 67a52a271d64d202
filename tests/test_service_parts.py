"""The service's smaller parts: what a reload may change, secrets from systemd credentials,
provider call metrics, the /metrics and /healthz listener, and the daemon's liveness check."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from healer.app.daemon import Daemon
from healer.app.tuning import Tuning
from healer.clock import VirtualClock
from healer.cloud.machines import Machine, MachineRequest, MachineState
from healer.cloud.metered import MeteredProvider
from healer.config import SecretRef, parse_config
from healer.config.reload import field_paths, restart_required
from healer.errors import ConfigError, PermanentError, ProviderError
from healer.health.tracker import HealthTracker
from healer.model import EventKind, NodeEvent
from healer.store.sqlite import Store
from healer.telemetry import metrics
from healer.telemetry.server import MetricsServer
from tests.helpers import lab_like_config
from tests.ports import free_port


def cfg(**top: Any) -> Any:
    cluster = top.pop("cluster", {})
    base = {
        "name": "lab",
        "provider": {"plugin": "lab"},
        "pools": [{"name": "workers", "size": 3}],
    } | cluster
    return parse_config({"clusters": [base], **top})


# -- reload --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"cluster": {"pools": [{"name": "workers", "size": 5}]}}, []),
        ({"cluster": {"remediation": {"maxUnhealthy": "10%"}}}, []),
        ({"paused": True, "schedule": {"resync": "1m"}, "orphans": {"destroy": True}}, []),
        ({"cluster": {"kubeconfig": "/etc/healer/other"}}, ["clusters[0].kubeconfig"]),
        ({"cluster": {"provider": {"plugin": "libcloud"}}}, ["clusters[0].provider"]),
        ({"metrics": {"listen": "127.0.0.1:9999"}}, ["metrics"]),
        ({"dryRun": True, "logFormat": "json"}, ["dryRun", "logFormat"]),
        ({"cluster": {"name": "other"}}, ["clusters (names lab -> other)"]),
    ],
)
def test_restart_required(change: dict[str, Any], fields: list[str]) -> None:
    assert restart_required(cfg(), cfg(**change)) == fields


def test_field_paths_come_from_the_error_lines() -> None:
    message = (
        "/etc/healer/healer.yaml: invalid configuration (2 problem(s))\n"
        "  clusters[0].remediation.maxUnhealthy: invalid percentage '140%'\n"
        "  schedule.staleAfter: Input should be greater than or equal to 600"
    )
    assert field_paths(message) == ["clusters[0].remediation.maxUnhealthy", "schedule.staleAfter"]


def test_stale_after_has_a_floor() -> None:
    with pytest.raises(ConfigError, match=r"schedule\.staleAfter"):
        cfg(schedule={"staleAfter": "5m"})


async def test_reload_in_process_applies_or_rejects_whole(tmp_path: Path) -> None:
    """The in-process half of the SIGHUP tests (the subprocess one is in
    tests/test_service_lifecycle.py): parts get the new config, or nothing changes."""
    path = tmp_path / "healer.yaml"
    path.write_text(
        "clusters:\n- {name: lab, provider: {plugin: lab}, pools: [{name: w, size: 1}]}\n"
    )
    from healer.config import load_config

    daemon = Daemon(load_config(path), state_dir=tmp_path, config_path=path)
    daemon.store = Store.open(tmp_path)
    seen: list[Any] = []

    class Part:
        def reconfigure(self, config: Any) -> None:
            seen.append(config)

    class Webhook:
        def reload_secrets(self) -> bool:
            seen.append("webhook secrets read again")
            return True

    daemon.planner = daemon.runner = Part()  # type: ignore[assignment]
    daemon.webhook = Webhook()
    try:
        before = daemon.config
        path.write_text("clusters: [{name: lab}]\n")
        assert await daemon.reload() is False
        assert daemon.config is before and seen == []
        assert metrics.REGISTRY.get_sample_value("healer_config_last_reload_successful") == 0
        [entry] = daemon.store.audit_log(event="config.reload_rejected")
        assert "clusters[0].provider" in entry.evidence["fields"]

        path.write_text(
            "clusters:\n- {name: lab, provider: {plugin: lab}, pools: [{name: w, size: 4}]}\n"
        )
        assert await daemon.reload() is True
        assert daemon.config.clusters[0].pools[0].size == 4
        # Planner and runner both; the webhook reads its token (and HMAC secret) again.
        assert seen == [daemon.config, daemon.config, "webhook secrets read again"]
        assert metrics.REGISTRY.get_sample_value("healer_config_last_reload_successful") == 1
    finally:
        daemon.store.close()


# -- secrets from systemd credentials --------------------------------------------------------


def test_credential_secret_reads_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cloud-token").write_text("s3cr3t\n")
    ref = SecretRef(credential="cloud-token")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert ref.reveal() == "s3cr3t"
    assert "s3cr3t" not in repr(ref) and repr(ref) == "SecretRef(credential:cloud-token)"

    with pytest.raises(ConfigError, match="LoadCredential=missing"):
        SecretRef(credential="missing").reveal()
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match=r"\$CREDENTIALS_DIRECTORY is not set"):
        ref.reveal()


@pytest.mark.parametrize(
    "data",
    [
        {"credential": "a", "env": "B"},
        {},
        {"credential": "../etc/shadow"},
    ],
)
def test_credential_secret_is_validated(data: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        cfg(cluster={"provider": {"plugin": "lab", "credentials": {"token": data}}})


# -- provider metrics ------------------------------------------------------------------------


class FlakyProvider:
    name = "flaky"

    def __init__(self) -> None:
        self.calls = 0

    async def create_machine(self, request: MachineRequest) -> Machine:
        self.calls += 1
        if self.calls == 1:
            raise ProviderError("HTTP 503 (temporary)")
        if self.calls == 2:
            raise PermanentError("HTTP 400")
        return Machine(id="i-1", name=request.name, state=MachineState.PENDING, tags={})

    async def close(self) -> None:
        pass


async def test_metered_provider_times_calls_and_counts_errors_by_kind() -> None:
    inner = FlakyProvider()
    provider = MeteredProvider(inner)  # type: ignore[arg-type]

    def sample(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    labels = {"provider": "flaky", "operation": "create_machine"}
    before = sample("healer_provider_call_duration_seconds_count", **labels)
    request = MachineRequest(name="m", size="s", image="i")
    with pytest.raises(ProviderError):
        await provider.create_machine(request)
    with pytest.raises(PermanentError):
        await provider.create_machine(request)
    assert (await provider.create_machine(request)).id == "i-1"
    assert sample("healer_provider_call_duration_seconds_count", **labels) == before + 3
    assert sample("healer_provider_errors_total", kind="temporary", **labels) >= 1
    assert sample("healer_provider_errors_total", kind="permanent", **labels) >= 1
    assert provider.calls == 3  # other attributes pass through to the plugin


# -- /metrics and /healthz -------------------------------------------------------------------


async def test_metrics_server_serves_the_registry_and_health() -> None:
    healthy = [True]
    server = MetricsServer(
        host="127.0.0.1",
        port=free_port(),
        health=lambda: (healthy[0], "ok" if healthy[0] else "unhealthy: stuck"),
    )
    metrics.NODES.labels("lab", "healthy").set(7)
    await server.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            base = f"http://127.0.0.1:{server.port}"
            async with http.get(f"{base}/metrics") as resp:
                body = await resp.text()
                assert resp.status == 200 and resp.content_type == "text/plain"
            assert 'healer_nodes{cluster="lab",health="healthy"} 7.0' in body
            assert "healer_remediations_total" in body or "# TYPE healer_remediations" in body
            assert "process_cpu_seconds_total" in body or "python_info" in body
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200 and (await resp.text()).strip() == "ok"
            healthy[0] = False
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 503 and "stuck" in await resp.text()
    finally:
        await server.stop()


async def test_metrics_listener_that_cannot_bind_names_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer(host="127.0.0.1", port=port, health=lambda: (True, "ok"))
        with pytest.raises(OSError, match=r"metrics\.listen 127\.0\.0\.1:\d+: cannot listen"):
            await server.start()


# -- liveness ---------------------------------------------------------------------------------


async def test_liveness_reports_a_stuck_tracker_and_a_lost_workflow(tmp_path: Path) -> None:
    clock = VirtualClock(start=time.time())
    config = lab_like_config()
    daemon = Daemon(config, state_dir=tmp_path, clock=clock, tuning=Tuning(stall_after=30.0))
    store = daemon.store = Store.open(tmp_path)
    try:
        daemon.tracker = tracker = HealthTracker(config=config, store=store, clock=clock)
        await tracker.handle(
            NodeEvent(
                cluster="lab",
                node="w-1",
                kind=EventKind.NODE_ADDED,
                at=clock.now(),
                source="kube",
                conditions={"Ready": ("Unknown", clock.now())},
            )
        )  # a node not Ready: re-evaluated at its Ready=Unknown deadline (5s)
        assert daemon.liveness() == []
        await clock.advance(5 + 31)  # the deadline passed, and nobody runs the tracker
        [problem] = daemon.liveness()
        assert "health tracker is 31s behind" in problem

        # The event consumer busy on one event for too long.
        daemon._busy_since = time.monotonic() - 45
        assert any("event consumer" in p for p in daemon.liveness())
    finally:
        store.close()


async def test_untracked_workflows_are_reported_once_past_the_stall_bound(tmp_path: Path) -> None:
    from healer.store.sqlite import RUNNING, WorkflowRecord
    from healer.workflow.runner import WorkflowRunner

    clock = VirtualClock()
    config = lab_like_config()
    daemon = Daemon(config, state_dir=tmp_path, clock=clock, tuning=Tuning(stall_after=30.0))
    store = daemon.store = Store.open(tmp_path)
    try:
        daemon.runner = WorkflowRunner(
            config=config, store=store, clock=clock, kube={}, providers={}, user_data=lambda *a: ""
        )
        store.create_workflow(
            WorkflowRecord(
                id="wf1",
                cluster="lab",
                pool="workers",
                node="w-1",
                role="worker",  # type: ignore[arg-type]
                state=RUNNING,
                step="drain",
                reason="x",
                evidence={},
                replacement_name="r",
                started_at=clock.now(),
                updated_at=clock.now(),
            )
        )
        # Not on the first look, which may catch a workflow between its record and its task;
        # once it has been lost for longer than the stall bound (30 s, aged here by hand).
        assert daemon.liveness() == []
        assert daemon.liveness() == []
        daemon._untracked["wf1"] -= 31
        assert daemon.liveness() == ["running workflow(s) with no task: wf1"]
        store.update_workflow(
            store.workflow("wf1").with_(state="failed", finished_at=clock.now())  # type: ignore[union-attr]
        )
        assert daemon.liveness() == []
        await asyncio.sleep(0)
    finally:
        store.close()


# -- the Grafana dashboard ---------------------------------------------------------------------


def test_dashboard_queries_only_metrics_that_exist() -> None:
    import json
    import re

    dashboard = json.loads(
        (Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for e in exprs for name in re.findall(r"\bhealer_[a-z_]+", e)}
    exposed: set[str] = set()
    for family in metrics.REGISTRY.collect():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
        }.get(family.type, ("",))
        exposed.update(family.name + s for s in suffixes)
    assert used and used <= exposed, sorted(used - exposed)
    assert {"healer_nodes", "healer_refusals_total", "healer_breaker_open"} <= used
