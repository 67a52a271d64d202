"""The exit statuses of every ``healer`` command: one table, shown in ``healer --help`` and in
docs/operations.md ("Exit statuses"; tests/test_cli_ux.py keeps the two the same)."""

from __future__ import annotations

import textwrap

OK = 0
# An unexpected error (a traceback: systemd restarts the daemon), a stop forced past its deadline,
# or a request the daemon refused (`remediate` stopped by a guard).
FAILED = 1
# The configuration, the state or the command line is unusable: a bad or unknown field, a
# duplicated key, an unknown plugin, cluster or pool, a damaged or unreadable state database,
# another daemon on the state directory, a write the state database did not take. The message
# names the file and what to do; the unit does not restart on it (RestartPreventExitStatus=2).
USAGE = 2
NO_ANSWER = 3  # `remediate`: no daemon answered (none runs on the state directory, or too late)
STOPPED = 4  # `remediate`: the workflow started and then stopped or failed (e.g. DrainBlockedByPdb)
NOT_CONFIRMED = 5  # `remediate`, `apply`, `destroy`: a confirmation was needed and not given
INTERRUPTED = 130  # Ctrl-C

TABLE: tuple[tuple[int, str], ...] = (
    (OK, "done"),
    (
        FAILED,
        "an unexpected error (a traceback), a stop forced 50 s after SIGTERM, or a request "
        "refused (remediate: a guard)",
    ),
    (
        USAGE,
        "the configuration, the state or the command line is unusable (a bad or unknown field, "
        "a duplicated key, an unknown plugin, cluster, pool or node, a damaged state database)",
    ),
    (NO_ANSWER, "no daemon answered (remediate)"),
    (STOPPED, "the remediation started, then stopped or failed (remediate)"),
    (NOT_CONFIRMED, "a confirmation was needed and not given (remediate, apply, destroy)"),
    (INTERRUPTED, "interrupted (Ctrl-C)"),
)
# `plan --detailed-exitcode` follows terraform's convention instead: 0 no changes, 1 an error,
# 2 changes to apply.
EXCEPTIONS = "plan --detailed-exitcode: 0 no changes, 1 an error, 2 changes to apply (terraform's)"


def epilog() -> str:
    """The table as ``healer --help`` prints it."""
    rows = [
        textwrap.fill(text, 78, initial_indent=f"  {code:>3}  ", subsequent_indent=" " * 7)
        for code, text in TABLE
    ]
    rows.append(textwrap.fill(EXCEPTIONS, 78, initial_indent="  ", subsequent_indent=" " * 7))
    return "exit statuses:\n" + "\n".join(rows)
