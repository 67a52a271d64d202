"""Kubernetes label selectors and label keys, as the configuration writes them
(``reboots.blockingPodSelectors``, ``reboots.preRebootNodeLabels``).

Owns checking them up front, with the API server's grammar: ``k=v``, ``k==v``, ``k!=v``, ``k``,
``!k``, ``k in (a,b)``, ``k notin (a,b)``, comma-separated and all required, so that a bad one is
a config error naming it and not an HTTP 400 at the first reboot. The matching itself is the API
server's: healer lists a node's pods with the selector (:meth:`healer.kube.pods.PodApi.
pods_matching`), as kured does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}$")
_VALUE = re.compile(rf"^({_NAME})?$")
_SET = re.compile(r"^\s*(\S+)\s+(in|notin)\s+\(([^)]*)\)\s*$")

Op = Literal["=", "!=", "exists", "!exists", "in", "notin"]


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Selector:
    text: str
    requirements: tuple[Requirement, ...]


def check_label_key(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError(f"invalid label key {key!r} (use [prefix/]name, as Kubernetes does)")
    return key


def _value(value: str, selector: str) -> str:
    if not _VALUE.match(value):
        raise ValueError(f"invalid label value {value!r} in selector {selector!r}")
    return value


def split_terms(text: str) -> Iterator[str]:
    """The terms of a selector: split on the commas outside ``( )``."""
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            yield text[start:i]
            start = i + 1
    yield text[start:]


def parse_selector(text: str) -> Selector:
    """The selector ``text``; a ValueError naming it when it is not one."""
    if not text.strip():
        raise ValueError("an empty label selector would match every pod")
    reqs: list[Requirement] = []
    for raw in split_terms(text):
        part = raw.strip()
        if not part:
            raise ValueError(f"empty requirement in selector {text!r}")
        if m := _SET.match(part):
            key, op, values = m.group(1), m.group(2), m.group(3)
            vals = tuple(_value(v.strip(), text) for v in values.split(","))
            reqs.append(Requirement(check_label_key(key), "in" if op == "in" else "notin", vals))
        elif "!=" in part:
            key, value = (x.strip() for x in part.split("!=", 1))
            reqs.append(Requirement(check_label_key(key), "!=", (_value(value, text),)))
        elif "=" in part:
            key, value = (x.strip() for x in part.replace("==", "=", 1).split("=", 1))
            reqs.append(Requirement(check_label_key(key), "=", (_value(value, text),)))
        elif part.startswith("!"):
            reqs.append(Requirement(check_label_key(part[1:].strip()), "!exists"))
        else:
            try:
                reqs.append(Requirement(check_label_key(part), "exists"))
            except ValueError:
                raise ValueError(f"invalid label selector {text!r} near {part!r}") from None
    return Selector(text, tuple(reqs))
