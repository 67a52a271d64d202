"""Field and label selectors as the apiserver reads them from a query (``fieldSelector``,
``labelSelector``), and ``metav1.LabelSelector`` matching for PodDisruptionBudgets."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from healer.config.selectors import split_terms
from healer.lab.apiserver.errors import ApiError
from healer.lab.apiserver.resources import Obj, Resource

FIELDS: dict[str, Callable[[Obj], str]] = {
    "metadata.name": lambda o: o["metadata"].get("name", ""),
    "metadata.namespace": lambda o: o["metadata"].get("namespace", ""),
    "spec.nodeName": lambda o: o.get("spec", {}).get("nodeName", ""),
    "spec.unschedulable": lambda o: str(bool(o.get("spec", {}).get("unschedulable"))).lower(),
    "status.phase": lambda o: o.get("status", {}).get("phase", ""),
}

LABEL_TERM = re.compile(
    r"\s*(?:(?P<neg>!)\s*(?P<nkey>[\w./-]+)"
    r"|(?P<key>[\w./-]+)\s*(?:(?P<op>==|!=|=)\s*(?P<value>[\w./-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?)\s*"
)


def make_predicate(res: Resource, ns: str | None, query: Any) -> Callable[[Obj], bool]:
    checks: list[Callable[[Obj], bool]] = []
    if ns is not None:
        checks.append(lambda o: o["metadata"].get("namespace") == ns)
    field_selector = query.get("fieldSelector") or ""
    for term in filter(None, (t.strip() for t in field_selector.split(","))):
        m = re.fullmatch(r"([\w.]+)\s*(==|!=|=)\s*(.*)", term)
        if m is None or m[1] not in FIELDS:
            raise ApiError(
                400, f'"{term}" is not a known field selector: only "{", ".join(FIELDS)}"'
            )
        checks.append(_field_check(FIELDS[m[1]], m[3], negate=m[2] == "!="))
    label_selector = query.get("labelSelector") or ""
    if label_selector:
        requirements = _parse_label_selector(label_selector)
        checks.append(_labels_check(requirements))
    return lambda o: all(check(o) for check in checks)


def _field_check(
    getter: Callable[[Obj], str], wanted: str, *, negate: bool
) -> Callable[[Obj], bool]:
    return lambda obj: (getter(obj) == wanted) != negate


def _labels_check(requirements: list[Callable[[dict[str, str]], bool]]) -> Callable[[Obj], bool]:
    return lambda obj: all(req(obj["metadata"].get("labels") or {}) for req in requirements)


def _label_requirement(
    key: str, *, values: set[str] | None = None, negate: bool = False
) -> Callable[[dict[str, str]], bool]:
    """``values=None`` tests existence; otherwise membership (equality is a set of one)."""
    if values is None:
        return lambda labels: (key in labels) != negate
    return lambda labels: (labels.get(key) in values) != negate


def _parse_label_selector(text: str) -> list[Callable[[dict[str, str]], bool]]:
    out: list[Callable[[dict[str, str]], bool]] = []
    for term in split_terms(text):
        if not term.strip():
            continue
        m = LABEL_TERM.fullmatch(term)
        if m is None:
            raise ApiError(400, f"unable to parse requirement: {term!r}")
        if m["neg"]:
            out.append(_label_requirement(m["nkey"], negate=True))
        elif m["op"]:
            out.append(_label_requirement(m["key"], values={m["value"]}, negate=m["op"] == "!="))
        elif m["setop"]:
            values = {v.strip() for v in m["values"].split(",") if v.strip()}
            out.append(_label_requirement(m["key"], values=values, negate=m["setop"] == "notin"))
        else:
            out.append(_label_requirement(m["key"]))
    return out


def selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector. An empty selector matches every pod (policy/v1 semantics)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True
