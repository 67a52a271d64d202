"""Node taints as the API server and the controllers treat them: set and drop, the toleration
check (``v1.Toleration.ToleratesTaint``) and the validation of ``spec.taints`` (key, effect,
unique by key and effect: a 422 ``Invalid`` otherwise)."""

from __future__ import annotations

import re

from healer.lab.apiserver.errors import ApiError
from healer.lab.apiserver.resources import Obj, rfc3339

TAINT_EFFECTS = ("NoExecute", "NoSchedule", "PreferNoSchedule")
QUALIFIED_NAME = re.compile(
    r"^(?:[a-z0-9]([-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


def set_taint(node: Obj, key: str, effect: str, now: float) -> None:
    taints = node.setdefault("spec", {}).setdefault("taints", [])
    if not any(t.get("key") == key and t.get("effect") == effect for t in taints):
        taints.append({"key": key, "effect": effect, "timeAdded": rfc3339(now)})


def has_taint(node: Obj, key: str, effect: str) -> bool:
    return any(
        t.get("key") == key and t.get("effect") == effect
        for t in (node.get("spec") or {}).get("taints") or []
    )


def tolerates(pod: Obj, key: str, effect: str) -> bool:
    """``v1.Toleration.ToleratesTaint`` for a taint without a value."""
    for tol in (pod.get("spec") or {}).get("tolerations") or []:
        if tol.get("effect") not in (None, "", effect):
            continue
        operator = tol.get("operator") or "Equal"
        if not tol.get("key") and operator == "Exists":
            return True
        if tol.get("key") == key and (operator == "Exists" or not tol.get("value")):
            return True
    return False


def validate_taints(name: str, node: Obj) -> None:
    """The API server's validation of ``spec.taints`` (``validateNodeTaints``)."""
    errors: list[str] = []
    seen: set[tuple[str, str]] = set()
    for i, taint in enumerate((node.get("spec") or {}).get("taints") or []):
        where = f"spec.taints[{i}]"
        if not isinstance(taint, dict):
            errors.append(f"{where}: Invalid value: a taint must be an object")
            continue
        key = taint.get("key") or ""
        effect = taint.get("effect") or ""
        if not key:
            errors.append(f"{where}.key: Required value")
        elif not isinstance(key, str) or not QUALIFIED_NAME.match(key):
            errors.append(f"{where}.key: Invalid value: {key!r}: must be a qualified name")
        if not effect:
            errors.append(f"{where}.effect: Required value")
        elif effect not in TAINT_EFFECTS:
            supported = ", ".join(f'"{e}"' for e in TAINT_EFFECTS)
            errors.append(
                f'{where}.effect: Unsupported value: "{effect}": supported values: {supported}'
            )
        if (key, effect) in seen:
            errors.append(
                f'{where}: Duplicate value: "{key}:{effect}": taints must be unique by key and '
                "effect pair"
            )
        seen.add((key, effect))
    if errors:
        raise ApiError(422, f'Node "{name}" is invalid: {", ".join(errors)}', reason="Invalid")


def drop_taint(node: Obj, key: str) -> None:
    spec = node.get("spec", {})
    if "taints" in spec:
        spec["taints"] = [t for t in spec["taints"] if t.get("key") != key]
