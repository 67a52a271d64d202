"""Exhaustive sweeps (a SIGKILL at every workflow step, before and after, on both state backends)
in two sizes: a representative slice in `make test`, every case in `make test-full`
(``HEALER_TESTS_FULL=1``); docs/testing.md "The full sweeps".

The slice keeps every step kind once and every other axis (before/after, SQLite/PostgreSQL) on
at least one step each, so a bug that needs one particular axis value still fails `make test`;
only its combination with one particular step waits for the full run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

FULL_ENV = "HEALER_TESTS_FULL"


def full_run() -> bool:
    """True in `make test-full` (``HEALER_TESTS_FULL=1``), False in `make test`."""
    return os.environ.get(FULL_ENV, "") == "1"


def sweep(steps: Sequence[str], *axes: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The cases ``(step, a, b, ...)``: the full product of ``steps`` and ``axes`` in the full
    run; else each step once, its other values walking the axes' combinations in turn (step i
    takes combination i modulo their count), so every combination appears once there are at
    least as many steps as combinations."""
    combos: list[tuple[Any, ...]] = [()]
    for axis in axes:
        combos = [(*c, v) for c in combos for v in axis]
    if full_run():
        return [(step, *c) for step in steps for c in combos]
    return [(step, *combos[i % len(combos)]) for i, step in enumerate(steps)]
