"""A pool's rolling-replacement settings (``pools[].rollout``) and the machine spec fingerprint
that tells an up-to-date machine from an outdated one.

Every machine healer creates (``healer apply`` and the remediation workflow alike) carries the
tag :data:`TAG_SPEC`: a short hash of its pool's ``machine`` block (size, image, location, extra)
and ``rollout.revision``. ``healer plan`` compares it with the config's and lists a rolling
replacement for each machine whose tag differs; ``healer apply`` replaces them through the
remediation workflow, ``maxSurge``/``maxUnavailable`` at a time (docs/provisioning.md, "Rolling
updates").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Protocol

from pydantic import Field, model_validator

from healer.config.types import ConfigModel as _Model
from healer.model import Role

TAG_SPEC = "healer.io/spec"
_FINGERPRINT_LEN = 12  # hex digits: a GCE label value and an EC2 tag value alike


class RolloutPolicy(_Model):
    """How ``healer apply`` replaces the machines of a pool whose spec changed."""

    max_surge: int | None = Field(
        None,
        alias="maxSurge",
        ge=0,
        le=100,
        description="machines created above the pool's size at once during a roll (each "
        "replacement joins before its old machine is drained). Default: 1 for workers, 0 for "
        "the control plane, which is always replaced in place (its etcd member goes first)",
    )
    max_unavailable: int | None = Field(
        None,
        alias="maxUnavailable",
        ge=0,
        le=100,
        description="Ready nodes the pool may lack at once during a roll (a machine replaced in "
        "place is one). Default: 0 for workers where the provider can surge, else 1",
    )
    revision: str = Field(
        "",
        max_length=63,
        description="any string; changing it rolls the pool with an unchanged machine block "
        "(new user data, a new key, the same image)",
    )

    @model_validator(mode="after")
    def _progress(self) -> RolloutPolicy:
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError(
                "maxSurge and maxUnavailable are both 0: a roll could never replace a machine"
            )
        return self


class _Pool(Protocol):
    @property
    def role(self) -> Role: ...

    @property
    def rollout(self) -> RolloutPolicy: ...

    @property
    def machine(self) -> _Machine: ...


class _Machine(Protocol):
    def model_dump(self, *, mode: str) -> dict[str, object]: ...


@dataclass(frozen=True)
class RolloutLimits:
    max_surge: int
    max_unavailable: int


def rollout_limits(pool: _Pool, *, can_surge: bool = True) -> RolloutLimits:
    """The pool's limits with the defaults filled in. A control-plane machine is always
    replaced in place (healer.workflow.order), and so is any machine of a provider that cannot
    check capacity before a create (``can_surge`` false): their surge is 0 whatever the config
    says, and maxUnavailable defaults to 1 (an explicit 0 then stops the roll, saying why)."""
    policy = pool.rollout
    if pool.role is Role.CONTROL_PLANE or not can_surge:
        unavailable = 1 if policy.max_unavailable is None else policy.max_unavailable
        return RolloutLimits(max_surge=0, max_unavailable=unavailable)
    asked_surge, asked_unavailable = policy.max_surge, policy.max_unavailable
    # Surge by default (nothing goes missing), unless unavailability was asked for instead.
    surge = asked_surge if asked_surge is not None else (0 if asked_unavailable else 1)
    unavailable = asked_unavailable if asked_unavailable is not None else (0 if surge else 1)
    return RolloutLimits(max_surge=surge, max_unavailable=unavailable)


def spec_fingerprint(pool: _Pool) -> str:
    """A short, stable hash of what a pool's machines are made from."""
    doc = {"machine": pool.machine.model_dump(mode="json"), "revision": pool.rollout.revision}
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:_FINGERPRINT_LEN]


def spec_tags(pool: _Pool) -> dict[str, str]:
    """The tag every new machine of ``pool`` carries."""
    return {TAG_SPEC: spec_fingerprint(pool)}
