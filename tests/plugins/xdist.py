"""The suite on several processes (pytest-xdist; docs/testing.md "Parallel runs").

pyproject's addopts ask for ``-n auto --dist loadgroup``; "auto" means:

* the whole suite (``pytest`` with no paths, as `make test` runs it): :data:`WHOLE_SUITE_WORKERS`
  workers, the count measured fastest on two cores (the tests mostly wait on real time);
* a run of chosen files or tests (``pytest tests/test_x.py``): no workers, in-process as before,
  so a quick targeted run starts no extra interpreters;
* ``PYTEST_XDIST_AUTO_NUM_WORKERS=N`` overrides both; ``-n N`` / ``-n 0`` on the command line
  replace "auto" altogether.

Each worker is its own process with its own session fixtures (PostgreSQL, the EC2 emulator,
mosquitto per module), temporary directories (pytest's basetemp is per worker) and ports
(tests/ports.py). So is the real Kubernetes control plane (tests/realkube.py), started by a
worker on its first test that needs one; tests on it wipe it after themselves, which is safe as
a worker runs one test at a time. To start only :data:`REALKUBE_GROUPS` control planes in a run
rather than one per worker, those tests are dealt round-robin into that many ``xdist_group``\\ s
(each group runs on one worker). A test is on the real server when it requests a realkube
fixture by name, or carries the ``realkube`` mark (a fixture that picks the real server at run
time with ``request.getfixturevalue`` marks its "real" parameter: :data:`tests.realkube.REAL`).

Workers are dealt the groups first, then the tests marked ``slow`` (in file order), then the
rest, so the short tests fill the end of the run.
"""

from __future__ import annotations

import os

import pytest

WHOLE_SUITE_WORKERS = 4
REALKUBE_GROUPS = 2
REALKUBE_FIXTURES = frozenset({"realkube_session", "realkube", "real_kube_client"})


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own implementation reads it
    if config.args_source is pytest.Config.ArgsSource.TESTPATHS:
        return WHOLE_SUITE_WORKERS
    return 0


def on_real_server(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return (
        bool(REALKUBE_FIXTURES.intersection(names))
        or item.get_closest_marker("realkube") is not None
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    real = [item for item in items if on_real_server(item)]
    for i, item in enumerate(real):
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(f"realkube{i % REALKUBE_GROUPS}"))
    if hasattr(config, "workerinput"):  # an xdist worker: its order is the order tests are dealt
        # The long tests first (seconds to a minute each, ``slow``), so the run does not end
        # with one worker still in a long test while the others are idle.
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    if getattr(config.option, "loadgroup", False):  # an xdist worker under --dist loadgroup
        for item in items:
            _group_suffix(item)


def _group_suffix(item: pytest.Item) -> None:
    """Append ``@<group>`` to the node id of a test in an ``xdist_group``: the controller's
    loadgroup scheduler reads the group from there. xdist does it itself by setting
    ``item._nodeid``, which pytest 9.2 no longer reads (its node ids are structured, ``_id``),
    so groups are silently ignored (pytest-dev/pytest-xdist#1386); done here until xdist is
    fixed, and skipped when xdist has done it."""
    marks = item.iter_markers("xdist_group")
    groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks})
    if not groups:
        return
    suffix = "@" + "_".join(groups)
    if item.nodeid.endswith(suffix):
        return
    nodeid = item.nodeid + suffix
    if hasattr(item, "_id"):  # pytest >= 9.2
        from _pytest.nodeid import NodeId

        item._id = NodeId.parse(nodeid)
    else:
        item._nodeid = nodeid
