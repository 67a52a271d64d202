"""`healer apply` shows a summary and asks before changing anything, `healer destroy` says each
deletion once, and `healer plan` writes nothing into the state directory (issue 14)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from healer.cli import exits
from healer.cli.main import main
from healer.cli.parser import build_parser
from healer.provisioning.commands import NOT_CONFIRMED, run_apply
from providers.lab.driver import DB_FILENAME, LabNodeDriver
from tests import test_provisioning_lab as lab_tests
from tests.test_provisioning_lab import _live

# The same lab (one cluster, "demo", with a network block) and logging reset as there.
lab = lab_tests.lab
_structlog_defaults = lab_tests._structlog_defaults


def _apply(lab: dict[str, Any], *, tty: bool, answer: str = "", yes: bool = False) -> int:
    argv = ["apply", *lab["args"], *(["--yes"] if yes else [])]
    args = build_parser().parse_args(argv)
    return run_apply(
        args,
        config_path=str(lab["config"]),
        state_dir=lab["state"],
        stdin_is_tty=lambda: tty,
        confirm=lambda _prompt: answer,
    )


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``path`` with its size and modification time."""
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def test_apply_shows_a_summary_and_changes_nothing_unconfirmed(
    lab: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # No terminal and no --yes: the plan and its summary, then a refusal naming --yes.
    assert _apply(lab, tty=False) == NOT_CONFIRMED == exits.NOT_CONFIRMED
    out, err = capsys.readouterr()
    assert "plan: 9 to create, 0 to change, 0 to destroy" in out
    assert "without a terminal to confirm on" in err and "--yes" in err
    assert _live(LabNodeDriver(key=lab["state"] / DB_FILENAME), "demo") == []

    # A terminal, and anything but "yes": nothing either.
    assert _apply(lab, tty=True, answer="y") == NOT_CONFIRMED
    assert "not confirmed; nothing changed" in capsys.readouterr().err
    assert _live(LabNodeDriver(key=lab["state"] / DB_FILENAME), "demo") == []

    # "yes" typed back: applied.
    assert _apply(lab, tty=True, answer="yes") == 0
    assert len(_live(LabNodeDriver(key=lab["state"] / DB_FILENAME), "demo")) == 5
    capsys.readouterr()

    # Nothing to change: nothing to confirm, even without a terminal.
    assert _apply(lab, tty=False) == 0
    out = capsys.readouterr().out
    assert "no changes" in out and "plan:" not in out


def test_destroy_says_each_deletion_once(
    lab: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["apply", *lab["args"], "--yes"]) == 0
    names = [m["name"] for m in _live(LabNodeDriver(key=lab["state"] / DB_FILENAME), "demo")]
    capsys.readouterr()

    assert main(["destroy", *lab["args"], "--cluster", "demo", "--yes"]) == 0
    out, err = capsys.readouterr()
    listing, _, deleting = out.partition("deleted ")
    for name in names:
        assert listing.count(name) == 1  # the plan
        assert (deleting + err).count(name) == 1, name  # then one line as it goes
    assert "destroyed 9 resources of cluster demo" in out


def test_plan_writes_nothing_into_the_state_directory(
    lab: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    state: Path = lab["state"]
    # A state directory that does not exist (the default /var/lib/healer on a laptop) stays so.
    assert main(["plan", *lab["args"], "--detailed-exitcode"]) == 2
    assert "plan: 9 to create" in capsys.readouterr().out
    assert not state.exists()

    # An empty one stays empty.
    state.mkdir()
    assert main(["plan", *lab["args"]]) == 0
    assert list(state.iterdir()) == []

    # One with a lab cloud is read through, not touched: same files, sizes and times.
    assert main(["apply", *lab["args"], "--yes"]) == 0
    LabNodeDriver(key=state / DB_FILENAME).destroy_node(
        LabNodeDriver(key=state / DB_FILENAME).list_nodes()[-1]
    )
    before = _tree(state)
    capsys.readouterr()
    assert main(["plan", *lab["args"], "--detailed-exitcode"]) == 2
    out = capsys.readouterr().out
    assert "plan: 1 to create, 0 to change, 0 to destroy" in out, out
    assert _tree(state) == before
    assert not any(p.is_symlink() for p in state.rglob("*"))
