"""The one recorder of "something happened": the structlog line, the audit row and the metric,
written by one call.

Every decision healer records (a refusal, a remediation started, a breaker opened, an orphan
found, a reload rejected...) is seen three ways: an operator tails the log, ``healer history``
reads the append-only audit table, Prometheus counts it. Writing the three by hand at each site
let them drift apart (a reason in the audit row but not in the log line, a counter bumped on one
path only); :meth:`Recorder.record` writes them together, from one set of arguments:

* the audit row: ``event``, ``cluster``, ``node``, ``pool``, ``workflow_id``, ``reason``,
  ``message`` and ``evidence``, exactly as :meth:`healer.store.sqlite.Store.audit` stores them;
* the log line: the same event name at ``level``, with ``cluster``, ``node``, ``pool``,
  ``workflow`` (those that are set), ``reason`` and ``detail`` (the message), then the extra
  keyword ``fields`` (which may replace ``detail``: a line that says it more briefly);
  ``log_line=False`` writes no line (a site that logs one line for a batch of rows);
* the metric: ``metric``, a labelled prometheus counter, is incremented once.

Context bound through ``structlog.contextvars`` (cluster, pool, node, workflow) is merged into
the line by the logging set-up (:mod:`healer.telemetry.logs`); explicit values win.

While the state database takes no writes (a full disk, a read-only database:
:mod:`healer.store.writable`) in the daemon, which retries, the row is held, in order, and written
when it takes writes again; the line (marked ``audit="held"``) and the metric go out at once, and
recording does not fail for that. A row written inside a ``Store.batch`` that is then lost (its
commit fails) is held by the store the same way (its line is not marked: it had gone out
when the row was written). In a command (nothing retries) the error goes up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from prometheus_client import Counter

from healer.clock import Clock
from healer.errors import StateUnwritable
from healer.store.sqlite import Store
from healer.telemetry.lazylog import get_logger

Level = Literal["debug", "info", "warning", "error"]
Evidence = dict[str, Any] | Sequence[Any]


class Recorder:
    """Writes the log line, the audit row and the metric of one event together.

    ``clock`` gives the row's time when a call passes no ``at``; ``log`` is the logger of the
    component that records (so its lines keep the component's logger name). ``store=None``
    (the daemon before its state is open) writes the line and the metric only.
    """

    def __init__(
        self,
        store: Store | None,
        *,
        clock: Clock | None = None,
        log: Any = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._log: Any = log if log is not None else get_logger("healer.audit")

    def record(
        self,
        event: str,
        *,
        cluster: str,
        reason: str,
        message: str,
        node: str | None = None,
        pool: str | None = None,
        workflow_id: str | None = None,
        evidence: Evidence | None = None,
        at: float | None = None,
        level: Level = "info",
        metric: Counter | None = None,
        log_line: bool = True,
        **fields: Any,
    ) -> None:
        """Record ``event``: the audit row, then the log line, then the counter.

        The row comes first: it is the durable record; if writing it fails, the error goes up
        and neither a log line nor a counter claims something the audit log does not hold. The
        one exception is a daemon's database that takes no writes now: the row is held for when
        it does (see the module docstring).
        """
        if self._store is not None:
            if at is None:
                if self._clock is None:
                    raise TypeError(
                        f"Recorder.record({event!r}) needs `at`: this recorder has no clock"
                    )
                at = self._clock.now()
            row: dict[str, Any] = {
                "at": at,
                "cluster": cluster,
                "event": event,
                "reason": reason,
                "message": message,
                "node": node,
                "pool": pool,
                "workflow_id": workflow_id,
                "evidence": evidence,
            }
            writes = self._store.writes
            if writes.retrying and writes.problem is not None:
                # An episode is open: hold the row behind the others, in order.
                writes.hold(row)
                fields.setdefault("audit", "held")
            else:
                try:
                    self._store.audit(**row)
                except StateUnwritable:
                    if not writes.retrying:
                        raise
                    writes.hold(row)
                    fields.setdefault("audit", "held")
        if log_line:
            line: dict[str, Any] = {"cluster": cluster}
            for key, value in (("node", node), ("pool", pool), ("workflow", workflow_id)):
                if value is not None:
                    line[key] = value
            line["reason"] = reason
            line["detail"] = message
            line.update(fields)
            getattr(self._log, level)(event, **line)
        if metric is not None:
            metric.inc()
