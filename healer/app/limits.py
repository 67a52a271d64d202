"""The process's open-file limit, raised at start so a flood on a listener cannot starve the
Kubernetes and cloud clients of file descriptors (the webhook keeps within a share of it:
healer.sources.webhook_conn)."""

from __future__ import annotations

import resource

import structlog

log = structlog.get_logger("healer.app")


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (systemd's ``LimitNOFILE=`` sets both);
    log both. Returns (soft, hard) as they are afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. a hard limit above the kernel's nr_open
            log.warning("daemon.nofile_not_raised", soft=soft, hard=hard, error=str(exc))
    log.info("daemon.nofile_limit", soft=_show(soft), hard=_show(hard), soft_before=_show(before))
    return soft, hard


def _show(limit: int) -> int | str:
    return "unlimited" if limit == resource.RLIM_INFINITY else limit
