"""The command line as an operator meets it: --version, help for every option (plain text, no reST
markup), the lab's own defaults in `healer lab --help`, one exit-status table (`healer --help`
and docs/operations.md), NO_COLOR and --no-color, bash/zsh completion and the man page generated
from the parser, and what `healer --help`, `status` and `history` import."""

from __future__ import annotations

import argparse
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from healer.cli import exits
from healer.cli.completion import bash_script, commands, manpage, zsh_script
from healer.cli.main import main
from healer.cli.parser import build_parser
from healer.telemetry.logs import use_color
from tests.test_cli import imported_modules

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("kubernetes_asyncio", "libcloud", "aiohttp")
REST = re.compile(r"``|:(mod|func|class|meth|data|attr):`")


def _healer(*argv: str, cwd: Path = REPO, env: dict[str, str] | None = None, **kw: object):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, "-m", "healer.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
        **kw,
    )


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [("healer", parser), *((f"healer {n}", p) for n, p in sub.choices.items())]


def test_version() -> None:
    done = _healer("--version")
    assert done.returncode == 0
    assert done.stdout == f"healer {version('healer')}\n"


@pytest.mark.parametrize(("name", "parser"), _parsers(), ids=lambda v: str(v).split(" ")[-1])
def test_every_option_has_plain_help(name: str, parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help, f"{name} {choice.dest}: no help"
                assert not REST.search(choice.help), f"{name} {choice.dest}: {choice.help}"
            continue
        what = f"{name} {'/'.join(action.option_strings) or action.dest}"
        assert action.help and action.help != argparse.SUPPRESS, f"{what}: no help text"
        assert not REST.search(action.help), f"{what}: reST markup in {action.help!r}"
    assert not REST.search(parser.format_help()), name


def test_lab_help_shows_the_labs_defaults_not_the_daemons() -> None:
    text = " ".join(_healer("lab", "--help").stdout.split())
    assert "lab.yaml" in text and "lab-state/" in text
    assert "/etc/healer/healer.yaml" not in text and "/var/lib/healer" not in text
    daemon = " ".join(_healer("run", "--help").stdout.split())
    assert "/etc/healer/healer.yaml" in daemon and "/var/lib/healer" in daemon


def test_one_exit_status_table_in_help_and_in_the_docs() -> None:
    help_text = " ".join(_healer("--help").stdout.split())
    operations = " ".join((REPO / "docs" / "operations.md").read_text().split())
    for code, text in exits.TABLE:
        assert f"{code} {' '.join(text.split())}" in help_text
        assert f"| {code} | {text}" in operations, f"docs/operations.md lacks exit {code}"
    assert "--detailed-exitcode" in help_text and "--detailed-exitcode" in operations


def test_an_unknown_plugin_is_the_same_exit_in_validate_and_run(tmp_path: Path) -> None:
    config = tmp_path / "healer.yaml"
    config.write_text(
        "clusters:\n  - name: lab\n    provider: {plugin: nimbus}\n"
        "    pools: [{name: w, size: 1}]\n"
    )
    validate = _healer("validate", "-c", str(config))
    run = _healer("run", "-c", str(config), "--state-dir", str(tmp_path / "state"))
    assert validate.returncode == run.returncode == exits.USAGE
    for done in (validate, run):
        assert "unknown plugin 'nimbus'" in done.stderr and "Traceback" not in done.stderr
        # With the place of the field in the file.
        assert f"{config}:3:16: clusters[0].provider.plugin: unknown plugin" in done.stderr


def test_run_on_the_lab_config_says_to_use_the_lab(tmp_path: Path) -> None:
    config = REPO / "config" / "lab.yaml"
    done = _healer("run", "-c", str(config), "--state-dir", str(tmp_path / "state"))
    assert done.returncode == exits.USAGE
    assert f"{config} is the lab's configuration" in done.stderr
    assert "run it with `healer lab`" in done.stderr
    assert "current-context" not in done.stderr and "kube_config" not in done.stderr


def test_a_kubeconfig_without_a_current_context_is_named_clearly(tmp_path: Path) -> None:
    import asyncio

    from healer.errors import ConfigError
    from healer.kube.connection import load_configuration

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\ncontexts: [{name: prod, context: {}}]\n")
    with pytest.raises(ConfigError, match=r"no current-context: .* \(contexts: prod\)"):
        asyncio.run(load_configuration(kubeconfig))
    with pytest.raises(ConfigError, match=r"no context 'prd'; did you mean 'prod'\?"):
        asyncio.run(load_configuration(kubeconfig, "prd"))


# -- colour -------------------------------------------------------------------------------------


class _Tty:
    def isatty(self) -> bool:
        return True


def test_no_color_turns_colours_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(_Tty()) is True  # type: ignore[arg-type]
    monkeypatch.setenv("NO_COLOR", "1")
    assert use_color(_Tty()) is False  # type: ignore[arg-type]
    monkeypatch.setenv("NO_COLOR", "")  # no-color.org: set and not empty
    assert use_color(_Tty()) is True  # type: ignore[arg-type]


def _on_a_terminal(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    """The output of `healer ARGV` with a terminal for stdout and stderr."""
    parent, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "healer.cli", *argv],
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
        env=env,
        cwd=cwd,
    )
    os.close(child)
    out = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([parent], [], [], 1)
            if ready:
                try:
                    chunk = os.read(parent, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        proc.kill()
        proc.wait(timeout=10)
        os.close(parent)
    return out.decode(errors="replace")


@pytest.mark.parametrize("how", ["terminal", "NO_COLOR", "--no-color"])
def test_log_colours_on_a_terminal_unless_asked_not_to(tmp_path: Path, how: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "HEALER_CONFIG")}
    argv = ["run", "-c", str(REPO / "config" / "lab.yaml"), "--state-dir", str(tmp_path)]
    if how == "NO_COLOR":
        env["NO_COLOR"] = "1"
    elif how == "--no-color":
        argv.insert(0, "--no-color")
    out = _on_a_terminal(argv, env, tmp_path)
    assert "state.claimed" in out, out
    assert ("\x1b[" in out) is (how == "terminal"), out


# -- completion and the man page ----------------------------------------------------------------


def _complete(script: Path, *words: str) -> list[str]:
    line = " ".join(f"'{w}'" for w in words)
    done = subprocess.run(
        [
            "bash",
            "-c",
            f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _healer; "
            'printf "%s\\n" "${COMPREPLY[@]}"',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=script.parent,
    )
    assert done.returncode == 0, done.stderr
    return sorted(done.stdout.split())


def test_bash_completion(tmp_path: Path) -> None:
    script = tmp_path / "healer.bash"
    done = _healer("completion", "bash")
    assert done.returncode == 0
    script.write_text(done.stdout)
    assert _complete(script, "healer", "bre") == ["breaker"]
    assert _complete(script, "healer", "--v") == ["--version"]
    assert _complete(script, "healer", "breaker", "") == ["reset", "show"]
    assert _complete(script, "healer", "breaker", "--kind", "") == [
        "all",
        "bad-upgrade",
        "remediation",
    ]
    assert "--detailed-exitcode" in _complete(script, "healer", "plan", "--d")
    (tmp_path / "prod.yaml").write_text("")
    assert _complete(script, "healer", "validate", "-c", "pro") == ["prod.yaml"]
    # Every command is offered, so a new one cannot be forgotten.
    assert _complete(script, "healer", "") == sorted(
        [s.name for s in commands()] + ["--version", "--no-color", "-h", "--help"]
    )


def test_zsh_completion_names_every_command_and_option() -> None:
    script = zsh_script()
    assert script.startswith("#compdef healer\n")
    for spec in commands():
        assert f"'{spec.name}[" in script and f"            {spec.name}) _arguments" in script
        for option in spec.options:
            assert all(flag in script for flag in option.flags)
    if shutil.which("zsh"):
        done = subprocess.run(["zsh", "-n"], input=script, text=True, capture_output=True)
        assert done.returncode == 0, done.stderr
    assert bash_script().count("complete -o default -F _healer healer") == 1


def test_the_man_page_covers_every_command_and_option_and_renders_cleanly() -> None:
    page = manpage()
    assert page.startswith(".TH HEALER 1 ")
    plain = page.replace("\\-", "-").replace("\\fB", "").replace("\\fR", "").replace("\\fI", "")
    for spec in commands():
        assert f'.SS "{spec.name}"' in page
        for option in spec.options:
            assert ", ".join(option.flags) in plain, (spec.name, option.flags)
    for code, _ in exits.TABLE:
        assert f"\n\\fB{code}\\fR\n" in page
    if shutil.which("groff"):
        done = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", "-z"], input=page, text=True, capture_output=True
        )
        assert done.returncode == 0 and done.stderr == "", done.stderr
    assert main(["manpage"]) == 0


# -- what the quick commands import -------------------------------------------------------------


# What would make `healer status` slow to start (issue 12: < 0.25 s on 10k nodes) without being
# a client library: the quick commands load them only when they log or export metrics.
SLOW_START = ("structlog", "prometheus_client", "pydantic")


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["status"],
        ["status", "--json"],
        ["status", "--nodes"],
        ["history"],
        ["history", "c1-n05"],
        ["breaker", "show"],
    ],
    ids=" ".join,
)
def test_quick_commands_load_no_client_library(tmp_path: Path, argv: list[str]) -> None:
    from tests.test_cli_fleet import seed_fleet

    seed_fleet(tmp_path)  # nodes, audit rows, reboot rows: every reading path runs
    extra = ["--state-dir", str(tmp_path)] if argv != ["--help"] else []
    proc, modules = imported_modules(*argv, *extra, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "healer.cli.parser" in modules  # the listing is real
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], f"healer {' '.join(argv)} imported {heavy[:5]}"
    # Without a configuration file, not even the configuration models (pydantic), nor the log
    # and metric libraries (nothing logs, nothing exports).
    slow = sorted({m.split(".")[0] for m in modules} & set(SLOW_START))
    assert slow == [], f"healer {' '.join(argv)} imported {slow}"


ETCD_CONFIG = """\
clusters:
  - name: c1
    provider: {plugin: lab}
    etcd: {mode: direct, endpoints: ["https://127.0.0.1:9"]}
    pools: [{name: control-plane, role: control-plane, size: 3}, {name: workers, size: 3}]
  - name: c2
    provider: {plugin: lab}
    etcd: {mode: portforward}
    pools: [{name: control-plane, role: control-plane, size: 3}]
"""


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["history"], ["validate"]])
def test_quick_commands_with_a_configuration_load_no_client_library(
    tmp_path: Path, argv: list[str]
) -> None:
    """With a configuration whose clusters have etcd (status reads it in direct mode, not in
    portforward mode, whose tunnels need the Kubernetes client), still no client library."""
    from tests.test_cli_fleet import seed_fleet

    seed_fleet(tmp_path)
    config = tmp_path / "healer.yaml"
    config.write_text(ETCD_CONFIG)
    state = [] if argv == ["validate"] else ["--state-dir", str(tmp_path)]
    proc, modules = imported_modules(*argv, "-c", str(config), *state, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "healer.config" in modules  # the configuration was read
    if argv[0] == "status":
        assert "etcd.mode portforward: read by the daemon only" in proc.stdout
        assert "healer.provisioning.etcd_access" in modules  # c1's etcd was asked
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], f"healer {' '.join(argv)} imported {heavy[:5]}"


@pytest.mark.parametrize(
    "config", sorted(p.name for p in (REPO / "config").glob("*.yaml")), ids=str
)
def test_validate_loads_no_client_library(tmp_path: Path, config: str) -> None:
    """Not libcloud either: a plugin's capabilities are declared apart from it (the
    `healer.capabilities` entry points), so they are read without importing its driver."""
    proc, modules = imported_modules("validate", "-c", str(REPO / "config" / config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OK" in proc.stdout and "builds networks" in proc.stdout  # capabilities were read
    assert {"healer.config", "healer.provisioning.userdata"} <= modules
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], f"healer validate -c {config} imported {heavy[:5]}"


def test_a_command_builds_its_own_parser_only_and_typos_get_a_suggestion() -> None:
    def choices(argv: list[str] | None) -> list[str]:
        parser = build_parser(argv)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return sorted(sub.choices)

    everything = choices(None)
    assert choices(["--no-color", "status", "--json"]) == ["status"]
    assert choices(["staus"]) == choices(["--version"]) == everything
    done = _healer("staus")
    assert done.returncode == 2 and "invalid choice: 'staus'" in done.stderr
    assert "did you mean 'status'" in done.stderr
    done = _healer("breaker", "shw")
    assert done.returncode == 2 and "did you mean 'show'?" in done.stderr
