"""The `healer` command line: a light parser whose commands load their modules only when they run.

`healer --help` and `healer <command> --help` must not import the Kubernetes client or libcloud
(issue 9): checked with ``python -X importtime``, which lists every module a process imports.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from healer.cli.parser import Command, build_parser

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("kubernetes_asyncio", "libcloud")
COMMANDS = [
    "run",
    "validate",
    "lab",
    "simulate",
    "history",
    "status",
    "pause",
    "resume",
    "remediate",
    "breaker",
    "plan",
    "apply",
    "destroy",
    "rotate",
    "completion",
    "manpage",
]


def imported_modules(
    *argv: str, cwd: Path | None = None, pythonpath: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALER_")}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "healer.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env=env,
    )
    # "import time: self [us] | cumulative | imported package", one line per module.
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return proc, modules


@pytest.mark.parametrize("argv", [["--help"], *([c, "--help"] for c in COMMANDS)], ids=str)
def test_help_imports_neither_the_kubernetes_client_nor_libcloud(argv: list[str]) -> None:
    proc, modules = imported_modules(*argv)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: healer")
    assert "healer.cli.parser" in modules  # the listing is real: the parser shows up in it
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], f"healer {' '.join(argv)} imported {heavy[:5]}"
    # Nor the config models (pydantic) the commands' modules load when they run.
    assert not {m for m in modules if m.startswith("healer.config")}


def test_running_a_command_does_import_what_it_needs(tmp_path: Path) -> None:
    """The listing would show a heavy import: `healer validate` loads the config models and the
    provisioning modules; a plugin's capabilities come from its declaration, and only a plugin
    without one is imported (its class asked), which here brings libcloud in."""
    proc, modules = imported_modules("validate", "-c", str(REPO / "config" / "lab.yaml"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"healer.config", "healer.provisioning.userdata"} <= modules
    assert not any(m.startswith("libcloud") for m in modules)
    # The same config with the lab plugin's declaration hidden: its class is asked.
    hide = tmp_path / "sitecustomize.py"
    hide.write_text(
        "import healer.cloud.registry as r\n"
        "real = r._entry_points\n"
        "r._entry_points = lambda group=r.ENTRY_POINT_GROUP: "
        "{} if group == r.CAPABILITIES_GROUP else real(group)\n"
    )
    proc, modules = imported_modules(
        "validate", "-c", str(REPO / "config" / "lab.yaml"), pythonpath=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any(m.startswith("libcloud") for m in modules)


def test_every_command_names_a_function_that_exists() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(COMMANDS)
    for name, command_parser in sub.choices.items():
        handler = command_parser.get_default("func")
        assert isinstance(handler, Command), name
        function = getattr(
            importlib.import_module(f"healer.cli.{handler.module}"), handler.function
        )
        assert callable(function), name


def test_a_command_runs_its_function_with_the_parsed_arguments(tmp_path: Path) -> None:
    from healer.cli.main import main

    # No state database there: the command's own error, exit 2 (a usage error), as before.
    assert main(["history", "--state-dir", str(tmp_path)]) == 2
