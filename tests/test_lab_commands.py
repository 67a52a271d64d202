"""The interactive lab's commands, checked before anything is done (issue 14): table-driven over
:func:`healer.lab.commands.parse`, plus completion, the partition cut, the prompt's output and the
timeline's width and times."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from healer.lab import commands
from healer.lab.commands import Command, CommandError
from healer.lab.console import PROMPT, Console
from healer.lab.report import with_iso_times
from healer.lab.timeline import WIDTH, TimelineRenderer, fit, iso_utc

NODES = ["lab-control-plane-6a0a41a2", "lab-workers-26ba71aa", "lab-workers-32e864db"]

# (typed, the command, or the error's words)
PARSED: list[tuple[str, Command | str | None]] = [
    ("", None),
    ("nodes", Command("nodes")),
    ("crash lab-workers-26ba71aa", Command("crash", node="lab-workers-26ba71aa")),
    ("hang 32e864db", Command("hang", node="lab-workers-32e864db")),  # a unique suffix
    ("partition 0.6", Command("partition", number=0.6)),
    ("outage 30", Command("outage", number=30.0)),
    ("clock-jump -3600", Command("clock-jump", number=-3600.0)),
    ("breaker reset", Command("breaker")),
    ("reset", Command("reset")),
    ("exit", Command("quit")),
    ("partition 2", "partition: 2 is not a fraction between 0 and 1"),
    ("partition 0", "is not a fraction between 0 and 1"),
    ("partition abc", "partition: 'abc' is not a number; usage: partition FRACTION"),
    ("partition", "usage: partition FRACTION"),
    ("outage abc", "outage: 'abc' is not a number; usage: outage SECONDS"),
    ("outage -5", "outage: -5 seconds is not a duration"),
    ("outage nan", "is not a finite number"),
    ("clock-jump 0", "0 seconds changes nothing"),
    ("crsh lab-workers-26ba71aa", "unknown command 'crsh'; did you mean 'crash'?"),
    ("frobnicate", "unknown command 'frobnicate' (type help for the list)"),
    ("crash lab-workers-26ba71ab", "no lab machine named 'lab-workers-26ba71ab'; did you mean"),
    ("crash zz", "no lab machine named 'zz' (type nodes for the list)"),
    ("crash", "usage: crash NODE"),
    ("nodes all", "nodes takes no arguments"),
    ("breaker open", "breaker: unknown action 'open'; usage: breaker reset"),
]


@pytest.mark.parametrize(("typed", "expected"), PARSED)
def test_parse(typed: str, expected: Command | str | None) -> None:
    if isinstance(expected, str):
        with pytest.raises(CommandError) as caught:
            commands.parse(typed.split(), nodes=NODES)
        assert expected in str(caught.value)
    else:
        assert commands.parse(typed.split(), nodes=NODES) == expected


def test_a_partition_never_cuts_the_whole_pool() -> None:
    pool = [f"w{i}" for i in range(5)]
    assert commands.partition_cut(0.6, pool) == ["w0", "w1", "w2"]
    assert commands.partition_cut(0.8, pool) == ["w0", "w1", "w2", "w3"]
    with pytest.raises(CommandError, match=r"cuts them all off; at most 0\.80 leaves one"):
        commands.partition_cut(0.9, pool)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("c", ["clock-jump", "crash"]),
        ("crash lab-w", ["lab-workers-26ba71aa", "lab-workers-32e864db"]),
        ("breaker ", ["reset"]),
        ("outage ", []),
        ("", sorted([*commands.COMMANDS, *commands.ALIASES])),
    ],
)
def test_completions(line: str, expected: list[str]) -> None:
    assert commands.completions(line, nodes=NODES) == expected


def test_the_help_fits_and_names_every_command() -> None:
    text = commands.help_text()
    assert all(len(line) <= WIDTH for line in text.splitlines())
    for name in commands.COMMANDS:
        assert f"\n  {name}" in text


class _Readline:
    def get_line_buffer(self) -> str:
        return "crash lab-wo"


def test_a_log_entry_goes_above_the_prompt_and_keeps_what_was_typed(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(history=tmp_path / "h", out=out, interactive=True)
    console.print("before any prompt")
    console._readline, console._prompting = _Readline(), True
    console.print("+ 1.00s  health.unhealthy")
    assert out.getvalue() == (
        f"before any prompt\n\r\x1b[K+ 1.00s  health.unhealthy\n{PROMPT}crash lab-wo"
    )


def test_timeline_entries_fit_and_show_absolute_times_in_iso() -> None:
    render = TimelineRenderer(start=0.0)
    line = render(
        None,
        "info",
        {
            "event": "remediation.refused",
            "node": "lab-workers-26ba71aa",
            "reason": "TooManyUnhealthy",
            "detail": "x" * 150 + " and then " + "a long explanation " * 12,
            "until": 1796161139.886,
            "age_s": 12.5,
            "level": "warning",
        },
    )
    assert all(len(part) <= WIDTH for part in line.splitlines()), line
    flat = line.replace("\n" + " " * 12, " ")
    assert "1796161139" not in flat
    assert f"until={iso_utc(1796161139.886)}" in flat
    assert "age_s=12.5" in flat  # a duration stays seconds
    assert "[warning]" in line.splitlines()[0]


def test_fit_keeps_short_lines_and_wraps_long_words() -> None:
    assert fit("short") == "short"
    wrapped = fit("a" * 250).splitlines()
    assert [len(x) for x in wrapped] == [100, 100, 74]  # 100 + 88 + 62, indented by 12


def test_reports_carry_iso_times_and_keep_durations() -> None:
    report: dict[str, Any] = {
        "since": 1796161139.0,
        "remediations": [{"started_at": 1796161140.25, "start_delay_s": 0.3, "steps": []}],
        "injected": [{"at": 1796161139.5, "node": "n"}],
        "reopened_at": None,
        "count": 3,
    }
    out = with_iso_times(report)
    assert out["since"] == "2026-12-01T21:38:59.000Z" == iso_utc(1796161139.0)
    assert out["remediations"][0]["started_at"] == "2026-12-01T21:39:00.250Z"
    assert out["remediations"][0]["start_delay_s"] == 0.3
    assert out["injected"][0]["at"] == "2026-12-01T21:38:59.500Z"
    assert out["reopened_at"] is None and out["count"] == 3


CONSOLE_SCRIPT = """
import asyncio
from healer.lab.console import Console

async def main():
    words = ["crash", "clock-jump"]
    console = Console(history=None, complete=lambda line: [w for w in words if w.startswith(line)])
    await console.start()
    asyncio.get_running_loop().call_later(3.0, console.print, "LOGLINE")
    line = await console.read()
    console.print(f"GOT {line!r}")
    console.close()

asyncio.run(main())
"""


def test_on_a_terminal_the_prompt_completes_and_a_log_entry_does_not_break_the_typing() -> None:
    import os
    import pty
    import select
    import signal
    import sys
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: a console on the pseudo-terminal
        os.execv(sys.executable, [sys.executable, "-c", CONSOLE_SCRIPT])
    seen = b""
    status: int | None = None

    def read_until(wanted: bytes, timeout: float = 15.0) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while wanted not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break
        assert wanted in seen, seen

    try:
        read_until(PROMPT.encode())
        os.write(fd, b"cr\t")  # Tab: "crash " (the only command starting so)
        read_until(b"LOGLINE")
        # The entry went above the prompt, which came back with what had been typed.
        read_until(b"\x1b[KLOGLINE\r\n" + PROMPT.encode() + b"crash ")
        os.write(fd, b"lab-workers-1\r")
        read_until(b"GOT 'crash lab-workers-1'")
        deadline = time.monotonic() + 15.0
        while status is None and time.monotonic() < deadline:
            done, code = os.waitpid(pid, os.WNOHANG)  # it ends by itself; a closed pty hangs up
            status = code if done else None
            time.sleep(0.05)
    finally:
        os.close(fd)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert status is not None and os.waitstatus_to_exitcode(status) == 0, seen
