"""NodeKey: the key of every per-node map, its hash computed once per key."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import subprocess
import sys

import pytest

from healer.model import NodeKey


def test_the_hash_is_the_fields_and_is_computed_once() -> None:
    key = NodeKey("lab", "w-1")
    assert "_hash" not in key.__dict__  # nothing computed for a key never hashed
    assert hash(key) == hash(("lab", "w-1")) == hash(NodeKey("lab", "w-1"))
    key.__dict__["_hash"] = 7  # served from the cache from now on
    assert hash(key) == 7


def test_equality_order_repr_and_immutability_are_the_dataclass_ones() -> None:
    a, b = NodeKey("lab", "w-1"), NodeKey("lab", "w-2")
    hash(a)
    assert a == NodeKey("lab", "w-1") and a != b and a != ("lab", "w-1")
    assert sorted([b, NodeKey("a", "z"), a]) == [NodeKey("a", "z"), a, b]
    assert repr(a) == "NodeKey(cluster='lab', node='w-1')" and str(a) == "lab/w-1"
    assert [f.name for f in dataclasses.fields(a)] == ["cluster", "node"]
    assert dataclasses.asdict(a) == {"cluster": "lab", "node": "w-1"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.node = "w-3"  # type: ignore[misc]
    moved = dataclasses.replace(a, node="w-3")
    assert hash(moved) == hash(("lab", "w-3"))


def test_a_copy_or_a_pickle_carries_no_hash_of_this_process() -> None:
    key = NodeKey("lab", "w-1")
    hash(key)
    assert copy.copy(key).__dict__ == copy.deepcopy(key).__dict__ == dataclasses.asdict(key)
    blob = pickle.dumps({key: "found"})
    # Another process hashes strings with another seed: the key must still find its entry.
    code = (
        "import pickle, sys; from healer.model import NodeKey; "
        "d = pickle.loads(sys.stdin.buffer.read()); print(d[NodeKey('lab', 'w-1')])"
    )
    for seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            input=blob,
            capture_output=True,
            timeout=30,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert done.stdout.decode().strip() == "found"
