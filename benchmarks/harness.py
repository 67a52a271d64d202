"""What every section of the bench shares: figures with their baselines, processes measured
from outside (/proc CPU and RSS), the daemon run as users run it (`healer run` on a written
configuration), its /healthz polled throughout, and the helper programs started beside it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

ROOT = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Figure:
    """One measured figure beside its baseline from the same run.

    ``ratio`` is value / baseline, whatever the unit: for a rate above 1 is better than the
    baseline, for a time or a cost below 1 is. With ``paired`` the samples are rounds measured
    side by side (healer's i-th beside the baseline's i-th, back to back), and ``ratio`` is the
    median of the rounds' ratios: a spell of a slower host then weighs on both sides of a pair
    rather than on whichever side's median it falls into. ``target`` is the issue's bound in
    words and ``ok`` whether it is met (None: no target)."""

    name: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    target: str = ""
    ok: bool | None = None
    samples: list[float] = field(default_factory=list)
    baseline_samples: list[float] = field(default_factory=list)
    note: str = ""
    paired: bool = False

    @property
    def ratio(self) -> float | None:
        if self.paired:
            return paired_ratio(self.samples, self.baseline_samples)
        if self.value is None or self.baseline is None or self.baseline <= 0:
            return None  # no ratio to a zero or negative baseline (a lag can be < 0)
        return self.value / self.baseline

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        return out


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def paired_ratio(values: Sequence[float], baselines: Sequence[float]) -> float | None:
    """The median of ``values[i] / baselines[i]``: rounds measured side by side, pair by pair.
    None when the two do not pair up or a baseline is not positive."""
    if not values or len(values) != len(baselines) or min(baselines) <= 0:
        return None
    return statistics.median(v / b for v, b in zip(values, baselines, strict=True))


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def healer_command() -> list[str]:
    script = Path(sys.executable).parent / "healer"
    return [str(script)] if script.exists() else [sys.executable, "-m", "healer.cli.main"]


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels`` (Prometheus text)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head[len(name) :][:1] not in ("{", ""):
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


class Proc:
    """A helper program of the bench (``python -m benchmarks.<module> ...``) speaking JSON
    lines: it prints one object per line, the bench reads them in order."""

    def __init__(self, args: list[str], *, log: Path, stdin: bool = False) -> None:
        self.log = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read(self, timeout: float = 120.0) -> dict[str, Any]:
        """The next JSON line (lines that are not JSON are skipped)."""
        assert self.proc.stdout is not None
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.daemon = True
        reader.start()
        reader.join(timeout)
        if not box:
            raise TimeoutError(
                f"{self.proc.args[:4]}: no answer within {timeout:.0f}s ({self.log})"
            )
        line = box[0]
        if not line:
            raise RuntimeError(
                f"{self.proc.args[:4]} exited ({self.proc.poll()}); see {self.log}: "
                + self.log.read_text(errors="replace")[-2000:]
            )
        try:
            doc: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            return self.read(timeout)
        return doc

    def send(self, doc: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(doc) + "\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 20.0) -> None:
        stop_process(self.proc, timeout)
        self._log.close()


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def helper(module: str, *args: str, log: Path, stdin: bool = False) -> Proc:
    return Proc([sys.executable, "-m", f"benchmarks.{module}", *args], log=log, stdin=stdin)


class HealthPoller:
    """GET /healthz every ``interval`` in a thread; the longest time without an answer (any
    status) once it first answered, and when it first said 200."""

    def __init__(self, port: int, interval: float = 0.05) -> None:
        self.port = port
        self.interval = interval
        self.first_answer: float | None = None
        self.first_ok: float | None = None
        self.last_answer: float | None = None
        self.max_gap = 0.0
        self.answers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> HealthPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, _ = http_get(self.port, "/healthz", timeout=10.0)
            except OSError:
                status = 0
            now = time.monotonic()
            if status:
                self.answers += 1
                if self.last_answer is not None:
                    self.max_gap = max(self.max_gap, now - self.last_answer)
                self.first_answer = self.first_answer or now
                self.last_answer = now
                if status == 200 and self.first_ok is None:
                    self.first_ok = now
            self._stop.wait(self.interval)


# Nodes per pool at most (a pool's size is bounded in the configuration; a Kubernetes cluster
# has 5,000 nodes at most anyway): bigger single clusters get several pools.
POOL_NODES = 5000


def pool_of(i: int) -> str:
    """The pool of a cluster's ``i``-th node."""
    k = i // POOL_NODES
    return "workers" if k == 0 else f"workers-{k}"


def pools(nodes: int) -> list[dict[str, Any]]:
    return [
        {"name": pool_of(k), "size": min(POOL_NODES, nodes - k)}
        for k in range(0, max(nodes, 1), POOL_NODES)
    ]


@dataclass
class Cluster:
    name: str
    kubeconfig: str
    nodes: int


def daemon_config(
    clusters: Sequence[Cluster],
    *,
    metrics_port: int,
    timeout: str = "5s",
    extra: dict[str, Any] | None = None,
    health_extra: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A dry-run daemon's configuration over the world's clusters (one pool each)."""
    return {
        "dryRun": True,
        "logFormat": "json",
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        **(extra or {}),
        "clusters": [
            {
                "name": c.name,
                "kubeconfig": c.kubeconfig,
                "provider": {"plugin": "lab"},
                "health": {
                    "unhealthyConditions": [
                        {"type": "Ready", "status": "False", "timeout": timeout},
                        {"type": "Ready", "status": "Unknown", "timeout": timeout},
                        *health_extra,
                    ],
                    "rebootTimeout": "1h",
                },
                "pools": pools(c.nodes),
            }
            for c in clusters
        ],
    }


class DaemonProc:
    """`healer run` in a subprocess, on a configuration written to ``workdir``."""

    def __init__(self, workdir: Path, config: dict[str, Any], *, name: str = "healer") -> None:
        self.workdir = workdir
        self.config = config
        self.name = name
        self.state_dir = workdir / "state"
        self.metrics_port = int(config["metrics"]["listen"].rsplit(":", 1)[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.poller: HealthPoller | None = None
        self.started_at = 0.0

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "healer.yaml"
        path.write_text(json.dumps(self.config, indent=1))  # JSON is YAML
        with (self.workdir / f"{self.name}.log").open("ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                [
                    *healer_command(),
                    "run",
                    "--config",
                    str(path),
                    "--state-dir",
                    str(self.state_dir),
                ],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.poller = HealthPoller(self.metrics_port).start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def metrics(self) -> str:
        try:
            status, body = http_get(self.metrics_port, "/metrics", timeout=10.0)
        except OSError:
            return ""
        return body.decode() if status == 200 else ""

    def wait_loaded(self, nodes: int, timeout: float) -> tuple[float | None, float | None]:
        """Seconds from start until /healthz first said 200 and until every node is tracked
        (the healer_nodes gauges add up to ``nodes``); None for what did not happen in time."""
        assert self.proc is not None and self.poller is not None
        deadline = self.started_at + timeout
        loaded = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {self.workdir}")
            if loaded is None and metric_sum(self.metrics(), "healer_nodes") >= nodes:
                loaded = time.monotonic() - self.started_at
            if loaded is not None and self.poller.first_ok is not None:
                break
            time.sleep(0.1)
        ok = self.poller.first_ok
        return (ok - self.started_at if ok is not None else None), loaded

    def start_loaded(self, nodes: int, timeout: float) -> None:
        """Start, wait until ready with every node tracked, then stop polling /healthz."""
        self.start()
        ready, loaded = self.wait_loaded(nodes, timeout)
        if ready is None or loaded is None:
            raise RuntimeError(f"{self.name}: {nodes} nodes not loaded within {timeout:.0f}s")
        self.quiet()

    def quiet(self) -> None:
        """No more /healthz polls (they cost the daemon CPU a measurement should not count)."""
        if self.poller is not None:
            self.poller.stop()

    def stop(self) -> None:
        self.quiet()
        if self.proc is not None:
            stop_process(self.proc, timeout=60)

    def clock_offset(self) -> float:
        """Wall minus the daemon's timeline (its audit rows are on the timeline)."""
        with contextlib.suppress(OSError, ValueError, KeyError):
            saved = json.loads((self.state_dir / "clock.json").read_text())
            return float(saved["wall"]) - float(saved["timeline"])
        return 0.0


class Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=Stoppable)


class Owned(contextlib.ExitStack):
    """What a section started, stopped when it ends (the last started first), however it
    ends: ``thing = owned.add(Thing(...))`` right as each is made."""

    def add(self, thing: S) -> S:
        def stop() -> None:
            with contextlib.suppress(Exception):
                thing.stop()

        self.callback(stop)
        return thing


class World:
    """The fake Kubernetes API servers of a fleet (benchmarks/world.py), in their own process
    so their work is not the daemon's."""

    def __init__(self, workdir: Path, *, nodes: int, clusters: int, prefix: str = "c") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = helper(
            "world",
            "--nodes",
            str(nodes),
            "--clusters",
            str(clusters),
            "--dir",
            str(workdir),
            "--prefix",
            prefix,
            log=workdir / "world.log",
            stdin=True,
        )
        try:
            ready = self.proc.read(timeout=600)
        except BaseException:
            self.proc.stop()
            raise
        self.clusters = [Cluster(**c) for c in ready["clusters"]]

    def fail(self, count: int, seed: int = 1) -> dict[str, Any]:
        """``count`` nodes report Ready=False at once (benchmarks/world.py); answers
        {"at": their lastTransitionTime, "done": wall time, "nodes": [[cluster, node], ...]}."""
        self.proc.send({"cmd": "fail", "count": count, "seed": seed})
        return self.proc.read(timeout=120)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.send({"cmd": "quit"})
        self.proc.stop()

    @property
    def pid(self) -> int:
        return self.proc.pid
