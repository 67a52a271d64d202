"""Table-driven tests of the health verdict: observation and ``now`` in, verdict out."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from healer.config import EffectiveHealth, UnhealthyCondition, parse_config
from healer.health.verdict import evaluate, next_check
from healer.model import ConditionObs, Health, NodeObservation, Verdict

T0 = 1000.0


def policy(
    *conditions: tuple[str, str, float],
    startup: float = 600.0,
    reboot: float = 900.0,
) -> EffectiveHealth:
    rules = conditions or (("Ready", "False", 300.0), ("Ready", "Unknown", 300.0))
    return EffectiveHealth(
        unhealthy_conditions=tuple(
            UnhealthyCondition(type=t, status=s, timeout=timeout) for t, s, timeout in rules
        ),
        node_startup_timeout=startup,
        reboot_timeout=reboot,
    )


def node(
    *,
    exists: bool = True,
    ever_ready: bool = True,
    first_seen: float = 0.0,
    reboot_started_at: float | None = None,
    requested_at: float | None = None,
    adopted: bool = False,
    **conditions: tuple[str, float],
) -> NodeObservation:
    return NodeObservation(
        cluster="lab",
        node="w-1",
        pool="workers",
        first_seen=first_seen,
        exists=exists,
        ever_ready=ever_ready,
        reboot_started_at=reboot_started_at,
        machine_requested_at=requested_at,
        adopted=adopted,
        conditions={k: ConditionObs(status=s, since=since) for k, (s, since) in conditions.items()},
    )


DEFAULT = policy()  # Ready=False/Unknown 300s, startup 600s, reboot 900s


@dataclass(frozen=True)
class Case:
    id: str
    obs: NodeObservation
    now: float
    health: Health
    reason: str
    next_check_at: float | None
    policy: EffectiveHealth = DEFAULT
    message: str | None = None  # checked only when given


CASES = [
    # --- gone ---
    Case("gone", node(exists=False, Ready=("Unknown", 0.0)), T0, Health.GONE, "NodeDeleted", None),
    Case(
        "gone wins over a reboot",
        node(exists=False, reboot_started_at=T0),
        T0 + 5000,
        Health.GONE,
        "NodeDeleted",
        None,
    ),
    # --- healthy ---
    Case("ready", node(Ready=("True", 0.0)), T0, Health.HEALTHY, "Healthy", None),
    Case("no conditions reported", node(), T0, Health.HEALTHY, "Healthy", None),
    Case(
        "a condition not in the policy is ignored",
        node(Ready=("True", 0.0), NetworkUnavailable=("True", 0.0)),
        T0,
        Health.HEALTHY,
        "Healthy",
        None,
    ),
    Case(
        "recovered before the threshold",
        node(Ready=("True", T0 + 250)),
        T0 + 400,
        Health.HEALTHY,
        "Healthy",
        None,
    ),
    # --- one condition, around its deadline (Ready=Unknown since T0, limit 300s) ---
    Case(
        "pending",
        node(Ready=("Unknown", T0)),
        T0 + 100,
        Health.PENDING,
        "ReadyUnknown",
        T0 + 300,
        message="Ready=Unknown for 100s (limit 300s); unhealthy if it persists",
    ),
    Case(
        "just before the deadline",
        node(Ready=("Unknown", T0)),
        T0 + 299.5,
        Health.PENDING,
        "ReadyUnknown",
        T0 + 300,
        message="Ready=Unknown for 299.5s (limit 300s); unhealthy if it persists",
    ),
    Case(
        "exactly at the deadline",
        node(Ready=("Unknown", T0)),
        T0 + 300,
        Health.UNHEALTHY,
        "ReadyUnknownTimeout",
        None,
        message="Ready=Unknown for 300s (limit 300s)",
    ),
    Case(
        "past the deadline",
        node(Ready=("Unknown", T0)),
        T0 + 312,
        Health.UNHEALTHY,
        "ReadyUnknownTimeout",
        None,
        message="Ready=Unknown for 312s (limit 300s)",
    ),
    Case(
        "ready false",
        node(Ready=("False", T0)),
        T0 + 301,
        Health.UNHEALTHY,
        "ReadyFalseTimeout",
        None,
        message="Ready=False for 301s (limit 300s)",
    ),
    Case(
        "source clock ahead of ours",
        node(Ready=("Unknown", T0 + 10)),
        T0,
        Health.PENDING,
        "ReadyUnknown",
        T0 + 310,
        message="Ready=Unknown for 0s (limit 300s); unhealthy if it persists",
    ),
    # --- several conditions ---
    Case(
        "one expired and one pending: expired wins, no next check",
        node(Ready=("Unknown", T0), DiskPressure=("True", T0 + 200)),
        T0 + 400,
        Health.UNHEALTHY,
        "ReadyUnknownTimeout",
        None,
        policy=policy(("Ready", "Unknown", 300), ("DiskPressure", "True", 300)),
    ),
    Case(
        "two expired: the earliest deadline wins",
        node(Ready=("Unknown", T0), DiskPressure=("True", T0)),
        T0 + 400,
        Health.UNHEALTHY,
        "DiskPressureTrueTimeout",
        None,
        policy=policy(("Ready", "Unknown", 300), ("DiskPressure", "True", 60)),
        message="DiskPressure=True for 400s (limit 60s)",
    ),
    Case(
        "two pending: the earliest deadline is next",
        node(Ready=("Unknown", T0), DiskPressure=("True", T0)),
        T0 + 30,
        Health.PENDING,
        "DiskPressureTrue",
        T0 + 60,
        policy=policy(("Ready", "Unknown", 300), ("DiskPressure", "True", 60)),
    ),
    Case(
        "equal deadlines: the rule listed first wins",
        node(Ready=("Unknown", T0), DiskPressure=("True", T0)),
        T0 + 300,
        Health.UNHEALTHY,
        "ReadyUnknownTimeout",
        None,
        policy=policy(("Ready", "Unknown", 300), ("DiskPressure", "True", 300)),
    ),
    # --- planned reboot (started at T0, limit 900s) ---
    Case(
        "rebooting suppresses condition timeouts",
        node(reboot_started_at=T0, Ready=("Unknown", T0 - 1000)),
        T0 + 250,
        Health.REBOOTING,
        "Rebooting",
        T0 + 900,
        message="planned reboot started 250s ago (limit 900s)",
    ),
    Case(
        "reboot timeout exactly at the limit",
        node(reboot_started_at=T0, Ready=("Unknown", T0)),
        T0 + 900,
        Health.UNHEALTHY,
        "RebootTimeout",
        None,
        message="planned reboot started 900s ago and the node is not Ready again (limit 900s)",
    ),
    Case(
        "reboot timeout past the limit",
        node(reboot_started_at=T0, Ready=("Unknown", T0)),
        T0 + 960,
        Health.UNHEALTHY,
        "RebootTimeout",
        None,
    ),
    Case(
        "reboot that came back",
        node(reboot_started_at=None, Ready=("True", T0 + 120)),
        T0 + 960,
        Health.HEALTHY,
        "Healthy",
        None,
    ),
    # --- a machine healer created (requested at T0, limit 600s) ---
    Case(
        "starting",
        node(ever_ready=False, first_seen=T0 + 30, requested_at=T0, Ready=("False", T0 + 30)),
        T0 + 500,
        Health.STARTING,
        "NodeStarting",
        T0 + 600,
    ),
    Case(
        "startup timeout exactly at the limit",
        node(ever_ready=False, requested_at=T0),
        T0 + 600,
        Health.UNHEALTHY,
        "NodeStartupTimeout",
        None,
        message="never became Ready in the 600s since healer requested its machine (limit 600s)",
    ),
    Case(
        "the startup clock is healer's request, not the Node's creation",
        node(ever_ready=False, first_seen=T0 - 10_000, requested_at=T0),
        T0 + 599,
        Health.STARTING,
        "NodeStarting",
        T0 + 600,
    ),
    Case(
        "rebooting before it was ever ready uses the reboot timeout",
        node(ever_ready=False, requested_at=T0, reboot_started_at=T0 + 500),
        T0 + 700,
        Health.REBOOTING,
        "Rebooting",
        T0 + 1400,
    ),
    # --- adopted: the node existed when healer first saw it; its age never counts ---
    Case(
        "adopted, created long ago, Ready",
        node(ever_ready=True, adopted=True, first_seen=T0 - 86_400, Ready=("True", T0 - 86_000)),
        T0,
        Health.HEALTHY,
        "Healthy",
        None,
    ),
    Case(
        "adopted, older than nodeStartupTimeout, no conditions: not a startup timeout",
        node(ever_ready=False, adopted=True, first_seen=T0 - 10_000),
        T0,
        Health.HEALTHY,
        "Healthy",
        None,
    ),
    Case(
        "adopted and NotReady: judged by the condition's own clock",
        node(ever_ready=False, adopted=True, first_seen=T0 - 10_000, Ready=("False", T0 - 100)),
        T0,
        Health.PENDING,
        "ReadyFalse",
        T0 + 200,
    ),
    Case(
        "adopted and NotReady past the condition timeout",
        node(ever_ready=False, adopted=True, first_seen=T0 - 10_000, Ready=("Unknown", T0 - 300)),
        T0,
        Health.UNHEALTHY,
        "ReadyUnknownTimeout",
        None,
    ),
    Case(
        "adopted wins over a replacement record: no startup clock",
        node(ever_ready=False, adopted=True, requested_at=T0 - 10_000),
        T0,
        Health.HEALTHY,
        "Healthy",
        None,
    ),
    Case(
        "joined by someone else, never Ready: conditions only (no startup clock)",
        node(ever_ready=False, first_seen=T0 - 50, Ready=("False", T0 - 50)),
        T0,
        Health.PENDING,
        "ReadyFalse",
        T0 + 250,
    ),
    # --- timeouts of zero mean "as soon as seen" ---
    Case(
        "condition timeout 0",
        node(Ready=("Unknown", T0)),
        T0,
        Health.UNHEALTHY,
        "ReadyUnknownTimeout",
        None,
        policy=policy(("Ready", "Unknown", 0)),
        message="Ready=Unknown for 0s (limit 0s)",
    ),
    Case(
        "startup timeout 0",
        node(ever_ready=False, requested_at=T0),
        T0,
        Health.UNHEALTHY,
        "NodeStartupTimeout",
        None,
        policy=policy(startup=0),
    ),
    Case(
        "reboot timeout 0",
        node(reboot_started_at=T0),
        T0,
        Health.UNHEALTHY,
        "RebootTimeout",
        None,
        policy=policy(reboot=0),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_evaluate(case: Case) -> None:
    verdict = evaluate(case.obs, case.policy, case.now)
    assert (verdict.health, verdict.reason, verdict.next_check_at) == (
        case.health,
        case.reason,
        case.next_check_at,
    )
    assert verdict.needs_remediation is (case.health is Health.UNHEALTHY)
    if case.message is not None:
        assert verdict.message == case.message


def test_evaluate_is_stable_across_the_pending_window() -> None:
    """Re-evaluating at next_check_at, with no new event, reaches the unhealthy verdict."""
    obs = node(Ready=("Unknown", T0))
    first = evaluate(obs, policy(), T0 + 1)
    assert first.next_check_at is not None
    assert evaluate(obs, policy(), first.next_check_at).health is Health.UNHEALTHY


def test_policy_from_config() -> None:
    cfg = parse_config(
        {
            "clusters": [
                {
                    "name": "lab",
                    "provider": {"plugin": "lab"},
                    "health": {"rebootTimeout": "20m"},
                    "pools": [
                        {
                            "name": "workers",
                            "size": 3,
                            "health": {
                                "unhealthyConditions": [
                                    {"type": "Ready", "status": "Unknown", "timeout": "1m"}
                                ]
                            },
                        }
                    ],
                }
            ]
        }
    ).clusters[0]
    p = cfg.health_for("workers")
    obs = node(Ready=("Unknown", T0))
    assert evaluate(obs, p, T0 + 60).reason == "ReadyUnknownTimeout"
    # Ready=False is no longer listed for this pool.
    assert evaluate(node(Ready=("False", T0)), p, T0 + 10_000).health is Health.HEALTHY
    assert evaluate(node(reboot_started_at=T0), p, T0 + 1199).health is Health.REBOOTING


def _v(next_check_at: float | None) -> Verdict:
    return Verdict(Health.PENDING, "ReadyUnknown", "", next_check_at)


@pytest.mark.parametrize(
    ("nexts", "expected"),
    [
        ([], None),
        ([None, None], None),
        ([None, 5.0, 3.0], 3.0),
        ([7.0], 7.0),
    ],
)
def test_next_check(nexts: list[float | None], expected: float | None) -> None:
    assert next_check(_v(n) for n in nexts) == expected
