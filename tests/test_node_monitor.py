"""healer.lab.node_monitor: the cluster's node grace the lab's scenarios time themselves by, read
from a kube-controller-manager command line, given by the operator, or the defaults."""

from __future__ import annotations

import pytest

from healer.kube.client import KubeClient
from healer.lab.apiserver.server import FakeApiServer
from healer.lab.node_monitor import (
    DEFAULT_GRACE,
    DEFAULT_PERIOD,
    NodeMonitor,
    discover,
    from_command,
    given,
    parse_go_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("40s", 40.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0), ("0", 0.0), ("2.5s", 2.5)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == seconds


@pytest.mark.parametrize("text", ["40", "s", "40 s", "1x", "-5s"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a Go duration"):
        parse_go_duration(text)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["kube-controller-manager", "--node-monitor-grace-period=20s", "--v=2"],
            (20.0, DEFAULT_PERIOD),
        ),
        (
            ["/usr/local/bin/kube-controller-manager", "--node-monitor-period=2s"],
            (DEFAULT_GRACE, 2.0),
        ),
        (["kube-controller-manager"], (DEFAULT_GRACE, DEFAULT_PERIOD)),
        (["kube-apiserver", "--node-monitor-grace-period=20s"], None),
    ],
)
def test_from_command(argv: list[str], expected: tuple[float, float] | None) -> None:
    found = from_command(argv)
    assert (None if found is None else (found.grace, found.period)) == expected
    if found is not None:
        assert found.late_by == 2 * found.period


def test_given() -> None:
    assert given(None, None) is None
    assert given(6.0, 1.0) == NodeMonitor(6.0, 1.0, "command line", late_by=2.0)
    assert given(6.0, None) == NodeMonitor(6.0, DEFAULT_PERIOD, "command line", late_by=10.0)


def _kcm_pod(api: FakeApiServer, command: list[str]) -> None:
    """A kubeadm control plane's kube-controller-manager static pod (its mirror), as stored."""
    from healer.lab.apiserver import verbs
    from healer.lab.apiserver.resources import BY_PLURAL

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "kube-controller-manager-cp1",
            "namespace": "kube-system",
            "labels": {"component": "kube-controller-manager", "tier": "control-plane"},
        },
        "spec": {"containers": [{"name": "kcm", "image": "x", "command": command}]},
    }
    verbs.create(api._store, api.clock, BY_PLURAL["pods"], "kube-system", pod)


async def test_discover_reads_the_static_pod(fake_api: FakeApiServer, kube: KubeClient) -> None:
    assert (await discover(kube, None)).grace == DEFAULT_GRACE  # no such pod: the defaults
    _kcm_pod(fake_api, ["kube-controller-manager", "--node-monitor-grace-period=1m", "--x=y"])
    found = await discover(kube, None)
    assert (found.grace, found.period, found.source) == (
        60.0,
        DEFAULT_PERIOD,
        "kube-controller-manager flags",
    )
    # The operator's word wins over what the cluster says.
    assert (await discover(kube, given(6.0, 1.0))).grace == 6.0


async def test_discover_survives_an_unreadable_kube_system(
    fake_api: FakeApiServer, kube: KubeClient
) -> None:
    fake_api.fail_next("LIST", r"/namespaces/kube-system/pods", 403)
    found = await discover(kube, None)
    assert (found.grace, found.period) == (DEFAULT_GRACE, DEFAULT_PERIOD)
