"""healer.agent.bundle: the agent's modules flattened into the one readable script a machine runs.

The real agent: one script, the same bytes every time, the same code as the modules (compared
statement by statement), small enough for EC2, runnable by a bare ``python3 -I -S``. Small
packages written by the tests: what the flattening keeps once, what it leaves out to fit, and
every way two modules could clash in one namespace, refused with the modules named.
"""

from __future__ import annotations

import ast
import gzip
import importlib
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import healer
from healer.agent import bundle

PACKAGE = Path(bundle.__file__).parent
AGENT_MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "bundle"))
SECTION = "# -- healer/agent/"


def sections(text: str) -> list[str]:
    return [
        line.removeprefix(SECTION).removesuffix(".py")
        for line in text.splitlines()
        if line.startswith(SECTION)
    ]


def without_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        documented = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        if isinstance(node, documented) and ast.get_docstring(node, clean=False) is not None:
            node.body = node.body[1:] or [ast.Pass()]
    return tree


def code(tree: ast.Module) -> set[str]:
    """The module's top-level statements but its docstring and imports, comparable across files."""
    body = tree.body[1:] if ast.get_docstring(tree) is not None else tree.body
    return {ast.dump(s) for s in body if not isinstance(s, (ast.Import, ast.ImportFrom))}


def write_package(directory: Path, modules: dict[str, str]) -> Path:
    directory.mkdir()
    for name, source in modules.items():
        (directory / f"{name}.py").write_text(source)
    return directory


def run_bare(program: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """As a machine runs it: no site-packages, no environment, nothing but the standard library."""
    return subprocess.run(
        [sys.executable, "-I", "-S", str(program), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={},
    )


def test_the_bundle_is_the_agent_in_one_readable_script() -> None:
    built = bundle.build()
    assert built == bundle.build()
    text = built.decode()
    assert text.startswith(
        f"#!/usr/bin/env python3\n# healer node agent, healer {healer.__version__}: "
    ), text[:200]
    assert "# Generated from healer/agent/ by healer.agent.bundle" in text
    tree = ast.parse(text, "healer_agent.py", feature_version=(3, 9))  # machines: 3.9 and later
    found = sections(text)
    assert sorted(found) == AGENT_MODULES and found[-1] == "healer_agent"
    for name in AGENT_MODULES:  # each module after the ones it imports
        for stmt in ast.parse((PACKAGE / f"{name}.py").read_text()).body:
            if isinstance(stmt, ast.ImportFrom) and (stmt.module or "").startswith("healer.agent."):
                assert found.index(stmt.module.rsplit(".", 1)[1]) < found.index(name)
    imported = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [ast.unparse(n) for n in imported if "healer" in ast.unparse(n)]
    # The same code as the modules, statement for statement (docstrings go to fit; see below).
    modules = set().union(
        *(
            code(without_docstrings(ast.parse((PACKAGE / f"{m}.py").read_text())))
            for m in AGENT_MODULES
        )
    )
    assert code(without_docstrings(tree)) == modules
    # Readable: the sources as written, comments included, within the agent's share of EC2's limit.
    assert "        # Subscribed on every connection: the agent's session is clean" in text
    assert len(gzip.compress(built, compresslevel=9, mtime=0)) <= bundle.GZIP_BUDGET


def test_the_bundle_defines_every_name_of_every_module(tmp_path: Path) -> None:
    program = tmp_path / "healer_agent.py"
    program.write_bytes(bundle.build())
    namespace = runpy.run_path(str(program), run_name="not_main")  # defines, does not run
    for name in AGENT_MODULES:
        module = importlib.import_module(f"healer.agent.{name}")
        names = {n for n in vars(module) if not n.startswith("__")}
        assert names <= namespace.keys(), f"{name}: {sorted(names - namespace.keys())}"


def test_the_written_bundle_runs_on_a_bare_python(tmp_path: Path) -> None:
    """``python3 -m healer.agent.bundle OUT`` writes it executable; a bare python3 runs it."""
    program = tmp_path / "out" / "healer_agent.py"
    program.parent.mkdir()
    assert bundle.main([str(program)]) == 0
    assert program.read_bytes() == bundle.build() and program.stat().st_mode & 0o777 == 0o755
    ran = run_bare(program, "--help")
    assert ran.returncode == 0, ran.stderr
    assert "request-reboot" in ran.stdout and ran.stdout.startswith("usage: healer_agent.py")
    assert bundle.main([]) == 1


BASE = '''"""Things the entry point uses."""

from __future__ import annotations

import logging

log = logging.getLogger("agent")
GREETING = "hello"  # a comment on a line of code


class Oops(Exception):
    """Only a docstring."""


def shout(text: str) -> str:
    """Louder — in capitals."""

    # A comment on a line of its own.
    return text.upper()
'''
ENTRY = '''#!/usr/bin/env python3
"""The entry point."""

from __future__ import annotations

import logging
import sys

from healer.agent.base import GREETING, Oops, shout

log = logging.getLogger("agent")


def main() -> int:
    print(shout(GREETING), Oops.__name__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


@pytest.mark.parametrize(
    ("fits", "docstrings", "comments"),
    [("everything", True, True), ("without docstrings", False, True), ("nothing", False, False)],
)
def test_docstrings_then_comments_go_only_when_the_file_would_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fits: str, docstrings: bool, comments: bool
) -> None:
    package = write_package(tmp_path / "agent", {"base": BASE, "healer_agent": ENTRY})
    the_plan = bundle.plan(bundle.load(package))
    sizes = [
        len(gzip.compress(bundle.render(the_plan, level, "9.9"), compresslevel=9, mtime=0))
        for level in bundle.STRIP_LEVELS
    ]
    budget = {"everything": sizes[0], "without docstrings": sizes[1], "nothing": 0}[fits]
    monkeypatch.setattr(bundle, "GZIP_BUDGET", budget)
    built = bundle.build(package, version="9.9")
    text = built.decode()
    assert sections(text) == ["base", "healer_agent"]
    assert text.count('log = logging.getLogger("agent")') == 1  # the same line, kept once
    assert text.count("from __future__ import annotations") == 1
    assert "import logging\nimport sys\n" in text and "\nfrom healer" not in text
    assert ("Only a docstring." in text) is docstrings
    assert ("Louder — in capitals." in text) is docstrings  # columns in bytes, text in characters
    assert ("# Things the entry point uses." in text) is docstrings  # the module's, as a comment
    assert ("# A comment on a line of its own." in text) is comments
    trailing = "  # a comment on a line of code" if comments else ""
    assert f'GREETING = "hello"{trailing}\n' in text  # the code itself, never reformatted
    if not docstrings:
        assert "class Oops(Exception):\n    pass\n" in text
    assert text.rstrip().endswith('if __name__ == "__main__":\n    sys.exit(main())')
    ast.parse(text, feature_version=(3, 9))
    program = tmp_path / "program.py"
    program.write_bytes(built)
    ran = run_bare(program)
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "HELLO Oops\n", "")


def test_the_real_agent_fits_with_its_comments() -> None:
    """Today's sizes: docstrings go, comments stay. If this fails, the agent grew: look at
    GZIP_BUDGET (and the user data test) before letting the comments go too."""
    the_plan = bundle.plan(bundle.load())
    sizes = [
        len(gzip.compress(bundle.render(the_plan, level, "0"), compresslevel=9, mtime=0))
        for level in bundle.STRIP_LEVELS
    ]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] > bundle.GZIP_BUDGET >= sizes[1], sizes


MAIN = "def main() -> int:\n    return 0\n"
CLASHES = {
    "a function in two modules": (
        {
            "a": "def f() -> None:\n    pass\n",
            "healer_agent": MAIN + "def f() -> None:\n    pass\n",
        },
        "healer/agent/healer_agent.py and healer/agent/a.py both define 'f'",
    ),
    "a constant with two values": (
        {"a": "LIMIT = 1\n", "healer_agent": "LIMIT = 2\n" + MAIN},
        "both define 'LIMIT'",
    ),
    "one name, two imports": (
        {"a": "import time\n", "healer_agent": "from time import time\n" + MAIN},
        "both define 'time'",
    ),
    "an imported name rebound": (
        {"a": "X = [1]\n", "healer_agent": "from healer.agent.a import X\nX = [2]\n" + MAIN},
        "both define 'X'",
    ),
    "a module imported": (
        {"a": "X = 1\n", "healer_agent": "from healer.agent import a\n" + MAIN},
        "healer/agent/healer_agent.py:1: import names from the module",
    ),
    "a relative module import": (
        {"a": "X = 1\n", "healer_agent": "from . import a\n" + MAIN},
        "healer/agent/healer_agent.py:1: import names from a module of the agent",
    ),
    "a name imported under another": (
        {"a": "X = 1\n", "healer_agent": "from .a import X as Y\n" + MAIN},
        "import X under its own name",
    ),
    "a name the module does not define": (
        {"a": "X = 1\n", "healer_agent": "from healer.agent.a import Y\n" + MAIN},
        "healer/agent/healer_agent.py:1: Y is not defined at the top of healer/agent/a.py",
    ),
    "a builtin shadowed": (
        {"healer_agent": "def open() -> None:\n    pass\n" + MAIN},
        "defines 'open', a builtin",
    ),
    "modules importing each other": (
        {"a": "from healer.agent.b import Y\nX = 1\n", "b": "from healer.agent.a import X\nY = 2\n"}
        | {"healer_agent": MAIN},
        "import each other in a cycle: ['a', 'b']",
    ),
    "a module that is not there": (
        {"healer_agent": "from healer.agent.gone import X\n" + MAIN},
        "imports healer.agent.gone, which is not there",
    ),
    "an import of the package inside a function": (
        {"a": "X = 1\n", "healer_agent": "def main() -> int:\n    from healer.agent.a import X\n"},
        "healer/agent/healer_agent.py:2: import the agent's modules at the top",
    ),
    "the rest of healer": (
        {"healer_agent": "from healer.config import ClusterConfig\n" + MAIN},
        "machines have no healer.config",
    ),
    "a second script": (
        {"a": 'if __name__ == "__main__":\n    pass\n', "healer_agent": MAIN},
        "healer/agent/a.py:1: only healer_agent.py runs as a script",
    ),
    "no entry point": ({"a": "X = 1\n"}, "no healer_agent.py"),
}


@pytest.mark.parametrize("case", CLASHES)
def test_modules_that_would_clash_in_one_file_fail_the_build(tmp_path: Path, case: str) -> None:
    modules, message = CLASHES[case]
    package = write_package(tmp_path / "agent", modules)
    with pytest.raises(bundle.BundleError) as raised:
        bundle.build(package, version="0")
    assert message in str(raised.value)


def test_the_same_import_in_several_modules_is_not_a_clash(tmp_path: Path) -> None:
    package = write_package(
        tmp_path / "agent",
        {
            "a": "import time\nfrom typing import Any\nSTART = 1\n",
            "healer_agent": "import time\nfrom typing import Any, Protocol\nSTART = 1\n" + MAIN,
        },
    )
    text = bundle.build(package, version="0").decode()
    assert "import time\nfrom typing import Any, Protocol\n" in text
    assert text.count("START = 1") == 1
