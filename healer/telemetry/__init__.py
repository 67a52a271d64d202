"""Telemetry: the metric objects (:mod:`.metrics`), the log set-up (:mod:`.logs`) and the
daemon's /metrics and /healthz listener (:mod:`.server`)."""
