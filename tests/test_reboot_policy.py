"""Reboot policy (kured parity): every active blocker listed, reboots.concurrency per pool and per
cluster counted with repairs, blocking pod selectors, blocking alerts pulled from Prometheus (the
adapter against Prometheus's HTTP API served on 127.0.0.1 from recorded answers in
tests/data/prometheus), pre/post-reboot node labels, the notification hook."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from healer.clock import VirtualClock
from healer.config import RebootPolicy
from healer.config.selectors import parse_selector
from healer.errors import TemporaryError
from healer.health.tracker import HealthTracker
from healer.jobs.prometheus import PrometheusPoll
from healer.jobs.scheduler import JobScheduler
from healer.kube.client import KubeClient
from healer.kube.reboot_marks import mark_reboot, reboot_marks
from healer.lab.apiserver.server import FakeApiServer
from healer.model import EventKind, NodeEvent, Permit, RebootRequest
from healer.planner import reboots
from healer.planner.pulled_alerts import PulledAlerts
from healer.planner.reboot_notices import RebootNotices
from healer.planner.reboots import Decision, RebootArbiter, Situation, decide
from healer.provisioning.userdata import UserDataBuilder
from healer.sources import prometheus
from healer.sources.prometheus import PrometheusError, blocking, fetch_alerts, parse_alerts
from healer.store.sqlite import Store, pause_scope
from healer.telemetry import metrics
from healer.telemetry.notify import Notifier, post_json
from tests.helpers import lab_like_config, running_workflow, seed_ready_nodes
from tests.provisioning_support import cluster, files

DATA = Path(__file__).parent / "data" / "prometheus"
NOON = dt.datetime(2023, 11, 15, 12, 0, tzinfo=dt.UTC).timestamp()
OK = Situation(cluster="lab", node="w-1", pool="workers", known=True, now=NOON)
ONE = RebootPolicy()


def recorded(name: str) -> Any:
    return json.loads((DATA / name).read_text())


# -- decide(): every blocker, the first the headline ---------------------------------------------


def test_a_refusal_lists_every_active_blocker_in_chain_order() -> None:
    s = replace(
        OK,
        paused="global",
        blocking_alerts=("KubeAPIDown",),
        prometheus_alerts=("NodeDiskFull",),
        blocking_pods=("db/postgres-0",),
        busy_in_pool=("w-3",),
        degraded_in_pool=("w-4",),
    )
    d = decide(s, ONE)
    assert not d.granted and d.reason == reboots.PAUSED
    assert [b.reason for b in d.blockers] == [
        reboots.PAUSED,
        reboots.BLOCKED_BY_ALERT,
        reboots.BLOCKING_POD,
        reboots.POOL_BUSY,
        reboots.POOL_DEGRADED,
    ]
    assert "KubeAPIDown, NodeDiskFull (Prometheus)" in d.blockers[1].message
    assert d.message.startswith("not rebooting lab/w-1 now: healer is paused")
    assert d.retry_after == reboots.RETRY_AFTER[reboots.PAUSED]


def test_a_grant_has_no_blockers_and_an_unknown_node_only_that_one() -> None:
    assert decide(OK, ONE).blockers == ()
    d = decide(replace(OK, known=False, paused="global"), ONE)
    assert [b.reason for b in d.blockers] == [reboots.UNKNOWN_NODE]


P2 = RebootPolicy.model_validate({"concurrency": {"perPool": 2}})
C2 = RebootPolicy.model_validate({"concurrency": {"perPool": 3, "perCluster": 2}})


@pytest.mark.parametrize(
    ("situation", "policy", "reason"),
    [
        # the default: one per pool, reboots and repairs alike
        (replace(OK, busy_in_pool=("w-2",)), ONE, reboots.POOL_BUSY),
        (replace(OK, remediating_in_pool=("w-2",)), ONE, reboots.REMEDIATION_IN_FLIGHT),
        # perPool 2: one other out is room for this one; two are not, repairs counted too
        (replace(OK, busy_in_pool=("w-2",)), P2, reboots.GRANTED),
        (replace(OK, remediating_in_pool=("w-2",)), P2, reboots.GRANTED),
        (replace(OK, busy_in_pool=("w-2", "w-3")), P2, reboots.POOL_BUSY),
        (
            replace(OK, busy_in_pool=("w-2",), remediating_in_pool=("w-3",)),
            P2,
            reboots.REMEDIATION_IN_FLIGHT,
        ),
        # perCluster 2 over every pool
        (replace(OK, planned_in_cluster=("c-1",)), C2, reboots.GRANTED),
        (replace(OK, planned_in_cluster=("c-1", "x-1")), C2, reboots.CLUSTER_BUSY),
        (replace(OK, planned_in_cluster=("c-1", "x-1")), ONE, reboots.GRANTED),  # unset
        # blocking pods, and pods that could not be listed
        (replace(OK, blocking_pods=("db/pg-0",)), ONE, reboots.BLOCKING_POD),
        (replace(OK, pods_unreadable="HTTP 503"), ONE, reboots.BLOCKING_POD),
        # Prometheus: matching alerts block; no trustworthy answer blocks too
        (replace(OK, prometheus_alerts=("X",)), ONE, reboots.BLOCKED_BY_ALERT),
        (replace(OK, prometheus_unreachable="timeout"), ONE, reboots.PROMETHEUS_UNREACHABLE),
    ],
)
def test_decide_policy(situation: Situation, policy: RebootPolicy, reason: str) -> None:
    d = decide(situation, policy)
    assert d.reason == reason
    assert d.granted is (reason == reboots.GRANTED)


def test_concurrency_messages_name_the_limit() -> None:
    d = decide(replace(OK, busy_in_pool=("w-2", "w-3")), P2)
    assert "reboots.concurrency.perPool is 2" in d.message and "w-2, w-3" in d.message
    d = decide(replace(OK, planned_in_cluster=("c-1", "x-1")), C2)
    assert "reboots.concurrency.perCluster is 2" in d.message


# -- label selectors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "terms"),
    [
        ("app=db", [("app", "=", ("db",))]),
        ("app==db", [("app", "=", ("db",))]),
        ("app!=db", [("app", "!=", ("db",))]),
        ("app in (db,cache),tier", [("app", "in", ("db", "cache")), ("tier", "exists", ())]),
        ("app notin (db), !legacy", [("app", "notin", ("db",)), ("legacy", "!exists", ())]),
        ("example.com/critical", [("example.com/critical", "exists", ())]),
    ],
)
def test_selectors(selector: str, terms: list[tuple[str, str, tuple[str, ...]]]) -> None:
    parsed = parse_selector(selector)
    assert [(r.key, r.op, r.values) for r in parsed.requirements] == terms


@pytest.mark.parametrize("bad", ["", "app=,", "a b=c", "app in (x y)", "=db"])
def test_bad_selectors_are_config_errors(bad: str) -> None:
    with pytest.raises(ValueError):
        RebootPolicy.model_validate({"blockingPodSelectors": [bad]})


# -- the Prometheus adapter against its HTTP API on loopback ---------------------------------------


@dataclass
class FakePrometheus:
    """Prometheus's /api/v1/alerts from recorded answers; ``answer`` picks the file, ``status``
    the HTTP status, ``delay`` a stall (seconds) before answering."""

    server: TestServer
    answer: str = "alerts_firing.json"
    status: int = 200
    delay: float = 0.0
    requests: int = 0

    @property
    def url(self) -> str:
        return str(self.server.make_url("/"))


@pytest.fixture
async def prom() -> AsyncIterator[FakePrometheus]:
    app = web.Application()
    fake: FakePrometheus

    async def alerts(request: web.Request) -> web.Response:
        fake.requests += 1
        if fake.delay:
            await asyncio.sleep(fake.delay)
        body = (DATA / fake.answer).read_bytes() if fake.answer.endswith(".json") else fake.answer
        return web.Response(body=body, status=fake.status, content_type="application/json")

    app.router.add_get("/api/v1/alerts", alerts)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    fake = FakePrometheus(server)
    yield fake
    await server.close()


async def test_fetch_alerts_reads_the_recorded_api_answer(prom: FakePrometheus) -> None:
    alerts = await fetch_alerts(prom.url, timeout=5)
    assert [(a.name, a.state) for a in alerts] == [
        ("KubeAPIErrorBudgetBurn", "firing"),
        ("Watchdog", "firing"),
        ("NodeFilesystemAlmostOutOfSpace", "pending"),
    ]
    assert ("severity", "critical") in alerts[0].labels


@pytest.mark.parametrize(
    ("answer", "status", "outcome"),
    [
        ("alerts_firing.json", 503, prometheus.HTTP_ERROR),
        ("error_unavailable.json", 200, prometheus.BAD_RESPONSE),
        ("<html>proxy error</html>", 200, prometheus.BAD_RESPONSE),
        (
            '{"status":"success","data":{"alerts":[{"state":"firing"}]}}',
            200,
            prometheus.BAD_RESPONSE,
        ),
    ],
)
async def test_fetch_alerts_failures_are_typed(
    prom: FakePrometheus, answer: str, status: int, outcome: str
) -> None:
    prom.answer, prom.status = answer, status
    with pytest.raises(PrometheusError) as err:
        await fetch_alerts(prom.url, timeout=5)
    assert err.value.outcome == outcome and "/api/v1/alerts" in str(err.value)


async def test_fetch_alerts_is_bounded_and_names_a_refused_connection(
    prom: FakePrometheus, unused_tcp_port: int
) -> None:
    prom.delay = 2.0
    with pytest.raises(PrometheusError) as err:
        await fetch_alerts(prom.url, timeout=0.2)
    assert err.value.outcome == prometheus.TIMEOUT
    with pytest.raises(PrometheusError) as err:
        await fetch_alerts(f"http://127.0.0.1:{unused_tcp_port}", timeout=2)
    assert err.value.outcome == prometheus.UNREACHABLE


@pytest.mark.parametrize(
    ("regexp", "firing_only", "names"),
    [
        (".*", False, ("KubeAPIErrorBudgetBurn", "NodeFilesystemAlmostOutOfSpace", "Watchdog")),
        ("KubeAPI.*|Node.*", False, ("KubeAPIErrorBudgetBurn", "NodeFilesystemAlmostOutOfSpace")),
        ("KubeAPI.*|Node.*", True, ("KubeAPIErrorBudgetBurn",)),
        ("Node", False, ()),  # the whole name must match
    ],
)
def test_blocking_filter(regexp: str, firing_only: bool, names: tuple[str, ...]) -> None:
    alerts = parse_alerts(recorded("alerts_firing.json"))
    assert blocking(alerts, regexp, firing_only=firing_only) == names


def test_pulled_alerts_trust_the_last_answer_only_so_long() -> None:
    pulled = PulledAlerts()
    assert pulled.view("lab", 0.0, stale_after=190) == ((), "not asked yet")
    pulled.failed("lab", "connection refused")
    assert pulled.view("lab", 0.0, stale_after=190) == ((), "connection refused")
    pulled.answered("lab", ("A",), 100.0)
    pulled.failed("lab", "timeout")
    assert pulled.view("lab", 290.0, stale_after=190) == (("A",), None)
    names, why = pulled.view("lab", 291.0, stale_after=190)
    assert names == ("A",) and why is not None and "timeout" in why


# -- the arbiter with the policy wired in (virtual time) -------------------------------------------


@dataclass
class Arb:
    clock: VirtualClock
    store: Store
    tracker: HealthTracker
    arbiter: RebootArbiter
    pulled: PulledAlerts
    posted: list[tuple[str, dict[str, Any]]]
    pods: dict[str, list[str]]

    async def ask(self, node: str, request_id: str = "r1") -> Decision:
        return await self.arbiter.on_request(
            RebootRequest("lab", node, request_id, self.clock.now())
        )


class Poster:
    def __init__(self) -> None:
        self.posted: list[tuple[str, dict[str, Any]]] = []

    def post(
        self, url: str, body: dict[str, Any], *, timeout: float, attempts: int, event: str
    ) -> None:
        self.posted.append((event, body))


async def _noop(cluster: str, node: str, permit: Permit) -> None:
    pass


async def make_arb(tmp_path: Path, reboots_cfg: dict[str, Any], start: float = NOON) -> Arb:
    config = lab_like_config(reboots=reboots_cfg)
    clock = VirtualClock(start=start)
    store = Store.open(tmp_path)
    tracker = HealthTracker(config=config, store=store, clock=clock)
    pools = {"w-1": "workers", "w-2": "workers", "w-3": "workers", "c-1": "control-plane"}
    await seed_ready_nodes(tracker, clock.now(), pools)
    pulled = PulledAlerts()
    poster = Poster()
    pods: dict[str, list[str]] = {}

    async def find_pods(cluster: str, node: str, selectors: tuple[str, ...]) -> list[str]:
        return pods.get(node, [])

    arbiter = RebootArbiter(
        config=config,
        store=store,
        clock=clock,
        tracker=tracker,
        publish=_noop,
        pulled=pulled,
        find_pods=find_pods,
        notices=RebootNotices(config=config, poster=poster),
    )
    return Arb(clock, store, tracker, arbiter, pulled, poster.posted, pods)


@pytest.fixture
async def arb(tmp_path: Path) -> AsyncIterator[Arb]:
    a = await make_arb(tmp_path, {"blockingPodSelectors": ["app=db"]})
    yield a
    a.store.close()


async def test_a_firing_prometheus_alert_that_matches_holds_all_reboots(
    tmp_path: Path, prom: FakePrometheus
) -> None:
    """Must show 3: Prometheus's HTTP API (recorded answers) polled through the job; a firing
    matching alert refuses every node, in every pool; quiet again, reboots are granted; an
    unreachable Prometheus holds them (PrometheusUnreachable) once its last answer is stale."""
    cfg = {"prometheus": {"url": prom.url, "alertFilterRegexp": "KubeAPI.*", "interval": "10s"}}
    a = await make_arb(tmp_path, cfg)
    poll = PrometheusPoll(config=a.tracker._config, clock=a.clock, pulled=a.pulled)
    scheduler = JobScheduler()
    poll.register(scheduler)
    assert scheduler.ids() == ["prometheus:lab"]

    before = await a.ask("w-1")
    assert before.reason == reboots.PROMETHEUS_UNREACHABLE  # not asked yet: held
    await poll.poll("lab")
    for node in ("w-1", "w-2", "c-1"):
        d = await a.ask(node)
        assert (d.granted, d.reason) == (False, reboots.BLOCKED_BY_ALERT), node
        assert "KubeAPIErrorBudgetBurn (Prometheus)" in d.message
    prom.answer = "alerts_quiet.json"  # only Watchdog, which the filter does not match
    await poll.poll("lab")
    assert (await a.ask("w-1")).granted
    assert (await a.ask("c-1")).granted

    await prom.server.close()
    failed = metrics.PROMETHEUS_POLLS.labels("lab", prometheus.UNREACHABLE)._value.get()
    await poll.poll("lab")
    assert metrics.PROMETHEUS_POLLS.labels("lab", prometheus.UNREACHABLE)._value.get() == failed + 1
    assert (await a.ask("w-2")).reason == reboots.POOL_BUSY  # last answer still fresh
    await a.clock.advance(3 * 10 + 10 + 1)
    held = await a.ask("w-2")
    assert held.reason == reboots.PROMETHEUS_UNREACHABLE
    assert "cannot be read from Prometheus" in held.message
    assert [b.reason for b in held.blockers] == [reboots.PROMETHEUS_UNREACHABLE, reboots.POOL_BUSY]
    a.store.close()


async def test_blocking_pods_hold_only_their_node(arb: Arb) -> None:
    arb.pods["w-1"] = ["db/postgres-0"]
    d = await arb.ask("w-1")
    assert d.reason == reboots.BLOCKING_POD and "db/postgres-0" in d.message
    assert (await arb.ask("c-1")).granted


async def test_pods_that_cannot_be_listed_hold_the_reboot(
    arb: Arb, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(cluster: str, node: str, selectors: tuple[str, ...]) -> list[str]:
        assert selectors == ("app=db",)
        raise TemporaryError("HTTP 503 from the API")

    arb.arbiter._find_pods = broken
    d = await arb.ask("w-1")
    assert d.reason == reboots.BLOCKING_POD and "HTTP 503" in d.message

    async def hangs(cluster: str, node: str, selectors: tuple[str, ...]) -> list[str]:
        await asyncio.Event().wait()
        return []

    arb.arbiter._find_pods = hangs
    monkeypatch.setattr(reboots, "POD_LIST_TIMEOUT", 0.05)
    d = await arb.ask("w-1")
    assert d.reason == reboots.BLOCKING_POD and "no answer within 0.05s" in d.message


async def test_refusals_record_every_blocker_for_status(arb: Arb) -> None:
    arb.store.set_paused(pause_scope("lab"), True, at=arb.clock.now())
    arb.pods["w-1"] = ["db/postgres-0"]
    await arb.ask("w-1")
    entry = arb.store.audit_log(event="reboot.refused")[-1]
    assert isinstance(entry.evidence, dict)
    assert [b["reason"] for b in entry.evidence["blockers"]] == ["Paused", "BlockingPod"]
    await arb.ask("w-1")  # same blockers: not audited again
    assert len(arb.store.audit_log(event="reboot.refused")) == 1
    arb.pods.clear()
    await arb.ask("w-1")  # one fewer: audited
    assert len(arb.store.audit_log(event="reboot.refused")) == 2


async def test_concurrency_counts_reboots_and_repairs_over_the_cluster(tmp_path: Path) -> None:
    a = await make_arb(tmp_path, {"concurrency": {"perPool": 2, "perCluster": 2}})
    assert (await a.ask("w-1")).granted
    assert (await a.ask("w-2")).granted  # two in the pool
    third = await a.ask("w-3")
    assert third.reason == reboots.POOL_BUSY
    assert [b.reason for b in third.blockers] == [reboots.POOL_BUSY, reboots.CLUSTER_BUSY]
    assert (await a.ask("c-1")).reason == reboots.CLUSTER_BUSY  # another pool, same cluster
    a.store.close()

    b = await make_arb(tmp_path / "b", {"concurrency": {"perPool": 2}})
    running_workflow(b.store, "w-3", "w-3-r")
    assert (await b.ask("w-1")).granted  # the repair and this reboot: two
    assert (await b.ask("w-2")).reason == reboots.REMEDIATION_IN_FLIGHT
    b.store.close()


# -- notifications -------------------------------------------------------------------------------


async def test_notices_started_done_and_refused_once_after_the_delay(tmp_path: Path) -> None:
    cfg = {"permitTtl": "2h", "notify": {"url": "http://127.0.0.1:9/hook", "refusedAfter": "30m"}}
    a = await make_arb(tmp_path, cfg)
    assert (await a.ask("w-1")).granted
    for _ in range(4):  # w-2 refused every 10 minutes for 40 minutes
        assert not (await a.ask("w-2")).granted
        await a.clock.advance(600)
    await a.arbiter.observe(NodeEvent("lab", "w-1", EventKind.NODE_DELETED, a.clock.now(), "kube"))
    events = [(e, body["node"]) for e, body in a.posted]
    assert events == [("started", "w-1"), ("refused", "w-2"), ("done", "w-1")]
    refused = a.posted[1][1]
    assert refused["reason"] == reboots.POOL_BUSY
    assert refused["text"].startswith("healer: refused lab/w-2: refused for 30 min")
    a.store.close()


async def test_notifier_retries_then_counts_a_failure_never_raising() -> None:
    clock = VirtualClock(start=NOON)
    calls: list[str] = []

    async def flaky(url: str, body: dict[str, Any], timeout: float) -> None:
        calls.append(url)
        if url.endswith("down") or len(calls) < 2:
            raise TemporaryError("HTTP 502")

    notifier = Notifier(clock=clock, send=flaky)
    sent = metrics.REBOOT_NOTIFICATIONS.labels("done", "sent")._value.get()
    failed = metrics.REBOOT_NOTIFICATIONS.labels("done", "failed")._value.get()
    notifier.post("http://h/ok", {"text": "x"}, timeout=1, attempts=3, event="done")
    notifier.post("http://h/down", {"text": "x"}, timeout=1, attempts=3, event="done")
    for _ in range(20):
        await clock.advance(30)
        await asyncio.sleep(0)
    await asyncio.wait_for(notifier.drain(), 5)
    assert calls.count("http://h/ok") == 2  # the first POST of all failed, the retry went
    assert calls.count("http://h/down") == 3
    assert metrics.REBOOT_NOTIFICATIONS.labels("done", "sent")._value.get() == sent + 1
    assert metrics.REBOOT_NOTIFICATIONS.labels("done", "failed")._value.get() == failed + 1


async def test_post_json_on_loopback() -> None:
    got: list[Any] = []
    app = web.Application()

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(status=200 if len(got) == 1 else 500)

    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        await post_json(str(server.make_url("/hook")), {"text": "hi"}, 5)
        with pytest.raises(TemporaryError, match="HTTP 500"):
            await post_json(str(server.make_url("/hook")), {"text": "again"}, 5)
    finally:
        await server.close()
    assert got == [{"text": "hi"}, {"text": "again"}]


def test_a_template_with_an_unknown_field_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="unknown template field"):
        RebootPolicy.model_validate({"notify": {"url": "http://x", "template": "{nod}"}})


# -- pre/post-reboot node labels -----------------------------------------------------------------


def test_reboot_marks() -> None:
    policy = RebootPolicy.model_validate(
        {
            "preRebootNodeLabels": {"healer.io/rebooting": "true", "drain": "yes"},
            "postRebootNodeLabels": {"healer.io/rebooting": "false"},
            "preRebootNodeAnnotations": {"healer.io/reboot-reason": "security upgrades"},
        }
    )
    assert reboot_marks(policy, "pre") == {
        "labels": {"healer.io/rebooting": "true", "drain": "yes"},
        "annotations": {"healer.io/reboot-reason": "security upgrades"},
    }
    assert reboot_marks(policy, "post") == {
        "labels": {"drain": None, "healer.io/rebooting": "false"},
        "annotations": {"healer.io/reboot-reason": None},
    }
    assert reboot_marks(RebootPolicy(), "pre") is None
    assert reboot_marks(RebootPolicy(), "post") is None


# -- through the real Kubernetes client, against the lab's API server ------------------------------


async def test_pods_matching_and_reboot_marks_through_the_api(
    fake_api: FakeApiServer, kube: KubeClient
) -> None:
    fake_api.add_node("n1", {"keep": "1"})
    fake_api.add_pod("db", "postgres-0", "n1", labels={"app": "db"})
    fake_api.add_pod("db", "postgres-1", "n2", labels={"app": "db"})
    fake_api.add_pod("web", "web-1", "n1", labels={"app": "web", "tier": "front"})
    fake_api.add_pod("web", "plain", "n1")
    assert await kube.pods_matching("n1", ("app=db",)) == ["db/postgres-0"]
    assert await kube.pods_matching("n1", ("app=db", "tier in (front)")) == [
        "db/postgres-0",
        "web/web-1",
    ]
    assert await kube.pods_matching("n1", ("app=cache",)) == []

    policy = RebootPolicy.model_validate(
        {
            "preRebootNodeLabels": {"healer.io/rebooting": "true"},
            "postRebootNodeLabels": {"healer.io/rebooted": "yes"},
            "preRebootNodeAnnotations": {"healer.io/reason": "upgrades"},
        }
    )
    assert await mark_reboot(kube, "n1", policy, "pre") is True
    node = await kube.get_node("n1")
    assert node is not None and node.labels == {"keep": "1", "healer.io/rebooting": "true"}
    assert await mark_reboot(kube, "n1", policy, "post") is True
    node = await kube.get_node("n1")
    assert node is not None and node.labels == {"keep": "1", "healer.io/rebooted": "yes"}
    raw = await kube._get_node_json("n1")
    assert raw is not None and "healer.io/reason" not in raw["metadata"].get("annotations", {})
    assert await mark_reboot(kube, "ghost", policy, "pre") is False


# -- healer status: grants, reboots in progress, and why the others wait --------------------------


async def test_status_shows_grants_and_every_blocker_of_who_waits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from healer.cli.main import main
    from healer.planner.reboot_status import reboot_view

    # the CLI reads the state on the daemon's timeline: now
    a = await make_arb(tmp_path, {"blockingPodSelectors": ["app=db"]}, start=time.time())
    assert (await a.ask("w-1")).granted
    await a.arbiter.observe(
        NodeEvent("lab", "w-1", EventKind.REBOOT_STARTED, a.clock.now(), "mqtt")
    )
    a.pods["w-2"] = ["db/postgres-0"]
    assert not (await a.ask("w-2")).granted
    assert (await a.ask("c-1")).granted
    view = reboot_view(a.store, now=a.clock.now())
    assert [(g.node, g.state) for g in view.grants] == [("c-1", "granted"), ("w-1", "rebooting")]
    assert [(w.node, [r for r, _ in w.blockers]) for w in view.waiting] == [
        ("w-2", [reboots.BLOCKING_POD, reboots.POOL_BUSY])
    ]
    a.store.close()

    cfg = tmp_path / "healer.yaml"
    cfg.write_text(
        "clusters:\n- name: lab\n  provider: {plugin: lab}\n  pools:\n"
        "  - {name: control-plane, role: control-plane, size: 1}\n  - {name: workers, size: 3}\n"
    )
    args = ["status", "--state-dir", str(tmp_path), "-c", str(cfg)]
    capsys.readouterr()
    assert main([*args, "--json"]) == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)["reboots"]
    assert [g["node"] for g in out["grants"]] == ["c-1", "w-1"]
    assert out["waiting"][0]["node"] == "w-2"
    assert [b["reason"] for b in out["waiting"][0]["blockers"]] == ["BlockingPod", "PoolBusy"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "reboots: 2 granted or in progress, 1 waiting" in text
    assert "lab/w-1 (workers): rebooting" in text
    assert "    BlockingPod: 1 pod(s) matching reboots.blockingPodSelectors" in text
    assert "    PoolBusy: lab/w-1 of pool workers is rebooting" in text


# -- without the agent, no machine reboots on its own ----------------------------------------------


@pytest.mark.skipif(shutil.which("apt-config") is None, reason="apt-config (Debian apt) missing")
@pytest.mark.parametrize("image_says", ["true", None])
def test_apt_reads_no_automatic_reboot_from_the_user_data_without_an_agent(
    tmp_path: Path, image_says: str | None
) -> None:
    """apt itself reads healer's unattended-upgrades file as written into the user data, over
    an image whose own 50unattended-upgrades turns automatic reboots on: the value apt ends up
    with is "false" (before the file, the image's "true": the check can fail)."""
    doc = yaml.safe_load(UserDataBuilder(tmp_path, discover_agent=False)(cluster(), "workers", "w"))
    name = "/etc/apt/apt.conf.d/52healer-unattended-upgrades"
    conf = files(doc)[name][0]
    parts = tmp_path / "etc" / "apt.conf.d"
    parts.mkdir(parents=True)
    if image_says is not None:
        (parts / "50unattended-upgrades").write_text(
            f'Unattended-Upgrade::Automatic-Reboot "{image_says}";\n'
        )
    main_conf = tmp_path / "apt.conf"
    main_conf.write_text(
        f'Dir::Etc "{tmp_path / "etc"}";\nDir::Etc::main "none";\nDir::Etc::parts "apt.conf.d";\n'
    )

    def effective() -> str:
        out = subprocess.run(
            ["apt-config", "shell", "V", "Unattended-Upgrade::Automatic-Reboot"],
            env={"APT_CONFIG": str(main_conf), "PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return out.strip()

    assert effective() == ("V='true'" if image_says else "")
    (parts / Path(name).name).write_bytes(conf)
    assert effective() == "V='false'"


def test_the_reboot_examples_in_the_docs_validate() -> None:
    import re

    docs = Path(__file__).resolve().parent.parent / "docs"
    ops = (docs / "operations.md").read_text().split("## Reboot policy", 1)[1]
    (example,) = re.findall(r"```yaml\n(.*?)```", ops, re.S)[:1]
    RebootPolicy.model_validate(yaml.safe_load(example)["clusters"][0]["reboots"])
    conf = (docs / "configuration.md").read_text().split("### Reboots", 1)[1]
    (example,) = re.findall(r"```yaml\n(.*?)```", conf, re.S)[:1]
    policy = RebootPolicy.model_validate(yaml.safe_load(example)["reboots"])
    assert policy.concurrency.per_cluster == 2 and policy.prometheus is not None


async def test_the_daemon_status_line_counts_the_grants(tmp_path: Path) -> None:
    from healer.app.daemon import Daemon

    a = await make_arb(tmp_path, {})
    daemon = Daemon(a.tracker._config, state_dir=tmp_path, clock=a.clock)
    daemon.store, daemon.tracker, daemon.reboot_arbiter = a.store, a.tracker, a.arbiter
    assert "reboot(s)" not in daemon.status_line()
    assert (await a.ask("w-1")).granted and (await a.ask("c-1")).granted
    assert "2 reboot(s) granted or in progress" in daemon.status_line()
    a.store.close()


# -- a real Prometheus (Debian `prometheus`), when installed ----------------------------------------

RULES = """\
groups:
  - name: healer-test
    interval: 1s
    rules:
      - alert: KubeAPIErrorBudgetBurn
        expr: vector(1)
        labels: {severity: critical}
      - alert: NodeFilesystemAlmostOutOfSpace
        expr: vector(1)
        for: 1h
      - alert: Watchdog
        expr: vector(1)
"""


def test_the_capture_of_a_real_prometheus_parses() -> None:
    """tests/data/prometheus/prometheus-2.42-alerts.json: Debian's Prometheus 2.42 answering
    GET /api/v1/alerts with the RULES above (captured with curl)."""
    alerts = parse_alerts(recorded("prometheus-2.42-alerts.json"))
    assert blocking(alerts, "KubeAPI.*|Node.*", firing_only=True) == ("KubeAPIErrorBudgetBurn",)
    assert blocking(alerts, "KubeAPI.*|Node.*", firing_only=False) == (
        "KubeAPIErrorBudgetBurn",
        "NodeFilesystemAlmostOutOfSpace",
    )


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian `prometheus` missing")
async def test_a_real_prometheus_with_a_firing_alert_holds_all_reboots(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    (tmp_path / "rules.yml").write_text(RULES)
    (tmp_path / "prometheus.yml").write_text(
        "global: {evaluation_interval: 1s}\nrule_files: [rules.yml]\n"
    )
    proc = await asyncio.create_subprocess_exec(
        "prometheus",
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{unused_tcp_port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        async with asyncio.timeout(20):  # up, and the first rule evaluation done
            while True:
                try:
                    if any(a.state == "firing" for a in await fetch_alerts(url, timeout=1)):
                        break
                except PrometheusError:
                    pass
                await asyncio.sleep(0.2)
        a = await make_arb(
            tmp_path / "state",
            {"prometheus": {"url": url, "alertFilterRegexp": "KubeAPI.*", "firingOnly": True}},
        )
        poll = PrometheusPoll(config=a.tracker._config, clock=a.clock, pulled=a.pulled)
        await poll.poll("lab")
        for node in ("w-1", "c-1"):
            d = await a.ask(node)
            assert d.reason == reboots.BLOCKED_BY_ALERT and "KubeAPIErrorBudgetBurn" in d.message
        a.store.close()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
