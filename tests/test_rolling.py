"""Rolling replacement: the pure decision (which machines next), the limits and their
validation, the spec fingerprint, and the plan lines. Table-driven, no cloud."""

from __future__ import annotations

from typing import Any

import pytest

from healer.cloud.machines import Machine, MachineState
from healer.config import ClusterConfig, parse_config
from healer.config.rollout import TAG_SPEC, RolloutLimits, rollout_limits, spec_fingerprint
from healer.errors import ConfigError
from healer.model import TAG_CLUSTER, TAG_MANAGED, TAG_POOL
from healer.provisioning.desired import desired_state
from healer.provisioning.plan import Actual, Change, plan
from healer.provisioning.rolling import (
    REPLACE,
    ROLLOUT_BLOCKED,
    ROLLOUT_COMPLETE,
    ROLLOUT_WAITING,
    SURGE,
    SURGE_IMPOSSIBLE,
    Candidate,
    RollState,
    next_replacements,
    outdated_machines,
)
from providers.lab import CAPABILITIES as LAB


def cluster(*pools: dict[str, Any]) -> ClusterConfig:
    doc = {"name": "prod", "provider": {"plugin": "lab"}, "pools": list(pools)}
    return parse_config({"clusters": [doc]}).clusters[0]


def ready(*names: str) -> tuple[Candidate, ...]:
    return tuple(Candidate(n, True) for n in names)


def state(**kw: Any) -> RollState:
    base: dict[str, Any] = dict(
        size=3, available=3, surging=0, replacing=0, outdated=ready("a", "b", "c"), can_surge=True
    )
    return RollState(**(base | kw))


@pytest.mark.parametrize(
    ("st", "limits", "start", "reason"),
    [
        # Surge 1 / unavailable 0 (the worker default): one new machine at a time.
        (state(), RolloutLimits(1, 0), (("a", SURGE),), ""),
        (state(surging=1, outdated=ready("b", "c")), RolloutLimits(1, 0), (), ROLLOUT_WAITING),
        # In place, one at a time: a replacement in flight has the pool one short.
        (state(can_surge=False), RolloutLimits(0, 1), (("a", REPLACE),), ""),
        (
            state(available=2, replacing=1, outdated=ready("b", "c"), can_surge=False),
            RolloutLimits(0, 1),
            (),
            ROLLOUT_WAITING,
        ),
        # Two of each budget: two surge, then two in place.
        (
            state(size=6, available=6, outdated=ready(*"abcdef")),
            RolloutLimits(2, 2),
            (("a", SURGE), ("b", SURGE), ("c", REPLACE), ("d", REPLACE)),
            "",
        ),
        # A node already down elsewhere in the pool uses the unavailability budget.
        (state(available=2, can_surge=False), RolloutLimits(0, 1), (), ROLLOUT_BLOCKED),
        # ... but surge costs no availability: it still goes on.
        (state(available=2), RolloutLimits(1, 1), (("a", SURGE),), ""),
        # An outdated node that is not Ready is replaced first, in place, at no new cost.
        (
            state(
                available=2,
                outdated=(Candidate("a", True), Candidate("b", False)),
                can_surge=False,
            ),
            RolloutLimits(0, 1),
            (("b", REPLACE),),
            "",
        ),
        # No surge possible (control plane, no capacity preflight) and no unavailability.
        (state(can_surge=False), RolloutLimits(1, 0), (), SURGE_IMPOSSIBLE),
        (state(outdated=()), RolloutLimits(1, 0), (), ROLLOUT_COMPLETE),
        (state(outdated=(), replacing=1), RolloutLimits(0, 1), (), ROLLOUT_WAITING),
    ],
)
def test_next_replacements(
    st: RollState, limits: RolloutLimits, start: tuple[tuple[str, str], ...], reason: str
) -> None:
    decision = next_replacements(st, limits)
    assert decision.start == start
    assert decision.reason == reason
    assert decision.done == (reason == ROLLOUT_COMPLETE)


def test_without_surge_the_default_is_one_unavailable_and_an_explicit_zero_stays() -> None:
    def limits(rollout: dict[str, int]) -> RolloutLimits:
        pool = cluster({"name": "p", "size": 3, "rollout": rollout}).pools[0]
        return rollout_limits(pool, can_surge=False)

    assert limits({}) == RolloutLimits(0, 1)
    assert limits({"maxSurge": 2, "maxUnavailable": 2}) == RolloutLimits(0, 2)
    assert limits({"maxSurge": 1, "maxUnavailable": 0}) == RolloutLimits(0, 0)  # stops, saying why


@pytest.mark.parametrize(
    ("role", "rollout", "limits"),
    [
        ("worker", {}, RolloutLimits(1, 0)),
        ("worker", {"maxUnavailable": 2}, RolloutLimits(0, 2)),
        ("worker", {"maxSurge": 0}, RolloutLimits(0, 1)),
        ("worker", {"maxSurge": 2, "maxUnavailable": 1}, RolloutLimits(2, 1)),
        ("control-plane", {}, RolloutLimits(0, 1)),
        ("control-plane", {"maxSurge": 1, "maxUnavailable": 1}, RolloutLimits(0, 1)),
    ],
)
def test_rollout_limits_fill_the_roles_defaults(
    role: str, rollout: dict[str, int], limits: RolloutLimits
) -> None:
    pool = cluster({"name": "p", "role": role, "size": 3, "rollout": rollout}).pools[0]
    assert rollout_limits(pool) == limits


@pytest.mark.parametrize(
    ("rollout", "message"),
    [
        ({"maxSurge": 0, "maxUnavailable": 0}, "both 0"),
        ({"maxSurge": -1}, "greater than or equal to 0"),
        ({"maxUnavailable": "one"}, "valid integer"),
        ({"maxSurged": 1}, "maxSurged"),
    ],
)
def test_bad_rollout_settings_are_refused_with_the_field(
    rollout: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        cluster({"name": "p", "size": 3, "rollout": rollout})


def test_the_fingerprint_follows_the_machine_block_and_the_revision() -> None:
    def fp(**pool: Any) -> str:
        return spec_fingerprint(cluster({"name": "p", "size": 3} | pool).pools[0])

    base = fp()
    assert base == fp()  # stable
    assert base == fp(size=5, rollout={"maxSurge": 2})  # size and limits do not roll
    assert base != fp(machine={"image": "debian-13"})
    assert base != fp(machine={"size": "large"})
    assert base != fp(machine={"extra": {"ex_disk_size": 50}})
    assert base != fp(rollout={"revision": "new-ca"})
    assert len(base) == 12 and base.isalnum() and base == base.lower()  # a GCE label value


def machine(name: str, pool: str, spec: str | None) -> Machine:
    tags = {TAG_MANAGED: "true", TAG_CLUSTER: "prod", TAG_POOL: pool}
    if spec is not None:
        tags[TAG_SPEC] = spec
    return Machine(id=f"i-{name}", name=name, state=MachineState.RUNNING, tags=tags)


def test_outdated_machines_leaves_untagged_ones_out() -> None:
    found = outdated_machines(
        "new", [machine("c", "w", "old"), machine("a", "w", "new"), machine("b", "w", None)]
    )
    assert [(m.name, had) for m, had in found.outdated] == [("c", "old")]
    assert [m.name for m in found.untagged] == ["b"]


def test_plan_lists_a_rolling_replacement_for_each_outdated_machine() -> None:
    c = cluster(
        {"name": "cp", "role": "control-plane", "size": 1},
        {"name": "workers", "size": 2, "machine": {"image": "debian-13"}},
    )
    cp, workers = c.pools
    actual = Actual(
        machines={
            "cp": (machine("cp-1", "cp", spec_fingerprint(cp)),),
            "workers": (
                machine("w-1", "workers", "0123456789ab"),
                machine("w-2", "workers", None),
            ),
        }
    )
    the_plan = plan(desired_state(c, LAB), actual)
    (roll,) = [a for a in the_plan.actions if a.kind == "machine"]
    assert roll.change is Change.UPDATE and roll.name == "w-1" and roll.resource_id == "i-w-1"
    assert f"spec 0123456789ab -> {spec_fingerprint(workers)}" in roll.detail
    assert "debian-13" in roll.detail and "maxSurge 1, maxUnavailable 0" in roll.detail
    assert any("w-2 carry no healer.io/spec tag" in n for n in the_plan.notes)


def test_a_control_plane_roll_without_unavailability_is_a_conflict() -> None:
    c = cluster(
        {"name": "cp", "role": "control-plane", "size": 3, "rollout": {"maxUnavailable": 0}}
    )
    actual = Actual(machines={"cp": (machine("cp-1", "cp", "0123456789ab"),)})
    (conflict,) = plan(desired_state(c, LAB), actual).conflicts
    assert "maxUnavailable is 0" in conflict.detail
