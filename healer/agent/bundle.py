"""The agent as the one file a machine runs: this package's modules flattened into one readable
Python script, which an operator auditing a node can read with ``less``.

The file holds the code of ``healer/agent/*.py`` (this builder aside) as written: each module
under a ``# -- healer/agent/<name>.py`` line, in dependency order (a module after those it
imports, the entry point last), its standard library imports gathered once at the top, its
imports of the other modules dropped: the names they import are the ones those modules define,
now in the same file. Statements are cut out of the sources by ``ast``'s line numbers and
comments by ``tokenize``, never reformatted, so the result is the code as reviewed.

That only holds when the modules share one namespace cleanly, so the build fails with
:class:`BundleError`, naming the modules, when two of them bind the same top-level name to
different things (the same import, or the same ``log = logging.getLogger(...)`` line, is kept
once), when a module imports a module of the package rather than names from it, renames on
import, imports a name that module does not define, or shadows a builtin.

Every byte counts against EC2's 16 KiB user data limit (gzipped), with the units, the bootstrap
script and a control plane's keys. Docstrings, then comments, go only when the file would not
fit in :data:`GZIP_BUDGET` with them. The bytes depend only on the sources.

Build one by hand (docs/agent.md)::

    python3 -m healer.agent.bundle healer_agent.py
"""

from __future__ import annotations

import ast
import builtins
import gzip
import heapq
import io
import symtable
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

SHEBANG = "#!/usr/bin/env python3\n"
HERE = Path(__file__).resolve().parent
PACKAGE = "healer.agent"
ENTRY = "healer_agent"  # the command line: its main() is what the file runs
_LEFT_OUT = ("__init__", "bundle")  # not code the machine runs
# The agent's share of EC2's 16 KiB of gzipped user data. The rest (the units, the bootstrap
# script, kubeadm's configuration; no keys since they are pushed over SSH) takes about 4.9 KiB in
# the tests' control-plane user data (14.1 KiB in all); the other 1.9 KiB are for larger
# configurations and broker CAs.
GZIP_BUDGET = 9728
# What may go, in this order, until the file fits GZIP_BUDGET; the last is used when nothing fits
# (the user data builder then refuses what is too large for the cloud at hand).
STRIP_LEVELS: tuple[frozenset[str], ...] = (
    frozenset(),
    frozenset({"docstrings"}),
    frozenset({"docstrings", "comments"}),
)
_SHARED_CALLS = (("logging", "getLogger"),)  # same arguments, same object: one line serves all

Origin = tuple[str, ...]  # what a top-level name is bound to, comparable across modules
Place = tuple[str, int]  # a top-level statement: its module and its first line


class BundleError(Exception):
    """The agent's modules cannot share one file; the message names the module and the name."""


@dataclass(frozen=True)
class Module:
    """One module of the agent, parsed."""

    name: str
    source: str
    tree: ast.Module

    @property
    def path(self) -> str:
        return f"healer/agent/{self.name}.py"


@dataclass(frozen=True)
class Plan:
    """What goes where: the modules in order, the imports hoisted to the top, the statements
    dropped, and the entry point's ``if __name__ == "__main__":`` block."""

    modules: tuple[Module, ...]
    future: tuple[str, ...]
    imports: tuple[tuple[str, str | None], ...]  # import NAME [as ALIAS]
    from_imports: tuple[tuple[str, str, str | None], ...]  # from MODULE import NAME [as ALIAS]
    dropped: frozenset[Place]  # top-level statements that do not appear in the file
    main_guard: ast.If | None


def load(package_dir: Path = HERE) -> dict[str, Module]:
    """The agent's modules by name (``config``, ``service``, ...)."""
    modules = {}
    for path in sorted(package_dir.glob("*.py")):
        if path.stem not in _LEFT_OUT:
            source = path.read_text(encoding="utf-8")
            try:
                tree = ast.parse(source, str(path))
            except SyntaxError as exc:
                raise BundleError(f"healer/agent/{path.name}: {exc}") from None
            modules[path.stem] = Module(path.stem, source, tree)
    if ENTRY not in modules:
        raise BundleError(f"{package_dir}: no {ENTRY}.py, the agent's entry point")
    return modules


def plan(modules: dict[str, Module]) -> Plan:
    """Check that the modules can share one namespace and decide what goes where."""
    imports: dict[str, dict[str, str]] = {}  # module -> name -> the module it comes from
    hoisted: set[ast.Import | ast.ImportFrom] = set()
    main_guard = None
    for module in modules.values():
        imports[module.name] = {}
        for node in ast.walk(module.tree):
            if (
                isinstance(node, (ast.Import, ast.ImportFrom))
                and node not in module.tree.body
                and _package_module(node, module) is not None
            ):
                raise BundleError(f"{_where(module, node)}: import the agent's modules at the top")
        for stmt in module.tree.body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                source = _package_module(stmt, module)
                if source is None:
                    hoisted.add(stmt)
                else:
                    imports[module.name].update({a.name: source for a in stmt.names})
            elif _is_main_guard(stmt):
                if module.name != ENTRY:
                    raise BundleError(f"{_where(module, stmt)}: only {ENTRY}.py runs as a script")
                main_guard = stmt
    order = _order(modules, {m: set(names.values()) for m, names in imports.items()})
    origins, shared_dropped = _origins(order, imports, hoisted)
    _check_builtins(origins)
    future: set[str] = set()
    plain: set[tuple[str, str | None]] = set()
    froms: set[tuple[str, str, str | None]] = set()
    for stmt in hoisted:
        if isinstance(stmt, ast.Import):
            plain.update((a.name, a.asname) for a in stmt.names)
        elif stmt.module == "__future__":
            future.update(a.name for a in stmt.names)
        else:
            froms.update((stmt.module or "", a.name, a.asname) for a in stmt.names)
    dropped = shared_dropped | {
        (m.name, s.lineno)  # hoisted to the top, or the agent's own: the names are here
        for m in order
        for s in m.tree.body
        if isinstance(s, (ast.Import, ast.ImportFrom)) or s is main_guard
    }
    return Plan(
        modules=tuple(order),
        future=tuple(sorted(future)),
        imports=tuple(sorted(plain, key=lambda entry: (entry[0], entry[1] or ""))),
        from_imports=tuple(sorted(froms, key=lambda entry: (*entry[:2], entry[2] or ""))),
        dropped=frozenset(dropped),
        main_guard=main_guard,
    )


def _package_module(node: ast.Import | ast.ImportFrom, module: Module) -> str | None:
    """The agent's module a ``from healer.agent.x import ...`` (or ``from .x import ...``) takes
    names from, None for an import from elsewhere; other ways to import the package are refused."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "healer" or alias.name.startswith("healer."):
                raise BundleError(f"{_where(module, node)}: import names, not the module")
        return None
    if node.level == 0:
        name = node.module or ""
        if name == PACKAGE:
            raise BundleError(
                f"{_where(module, node)}: import names from the module "
                f"(from {PACKAGE}.<module> import ...), not the module"
            )
        if not name.startswith(PACKAGE + "."):
            if name == "healer" or name.startswith("healer."):
                raise BundleError(f"{_where(module, node)}: machines have no {name}")
            return None
        source = name[len(PACKAGE) + 1 :]
    elif node.level == 1 and node.module:
        source = node.module
    else:
        raise BundleError(f"{_where(module, node)}: import names from a module of the agent")
    if "." in source:
        raise BundleError(f"{_where(module, node)}: the agent has no subpackages")
    for alias in node.names:
        if alias.asname not in (None, alias.name) or alias.name == "*":
            raise BundleError(f"{_where(module, node)}: import {alias.name} under its own name")
    return source


def _is_main_guard(stmt: ast.stmt) -> TypeGuard[ast.If]:
    return (
        isinstance(stmt, ast.If)
        and isinstance(stmt.test, ast.Compare)
        and isinstance(stmt.test.left, ast.Name)
        and stmt.test.left.id == "__name__"
        and len(stmt.test.comparators) == 1
        and isinstance(stmt.test.comparators[0], ast.Constant)
        and stmt.test.comparators[0].value == "__main__"
    )


def _where(module: Module, node: ast.stmt | ast.expr) -> str:
    return f"{module.path}:{node.lineno}"


def _order(modules: dict[str, Module], needs: dict[str, set[str]]) -> list[Module]:
    """Modules after those they import (Kahn's algorithm; among the ready ones, by name, the
    entry point last)."""
    for name, wanted in needs.items():
        for missing in sorted(wanted - modules.keys()):
            raise BundleError(
                f"{modules[name].path}: imports {PACKAGE}.{missing}, which is not there"
            )
    waiting = {name: set(wanted) for name, wanted in needs.items()}
    ready = [(name == ENTRY, name) for name, wanted in waiting.items() if not wanted]
    heapq.heapify(ready)
    order: list[Module] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(modules[name])
        del waiting[name]
        for other, wanted in waiting.items():
            if name in wanted:
                wanted.discard(name)
                if not wanted:
                    heapq.heappush(ready, (other == ENTRY, other))
    if waiting:
        raise BundleError(f"the agent's modules import each other in a cycle: {sorted(waiting)}")
    return order


def _origins(
    order: list[Module],
    imports: dict[str, dict[str, str]],
    hoisted: set[ast.Import | ast.ImportFrom],
) -> tuple[dict[str, dict[str, Origin]], set[Place]]:
    """Every top-level name of every module with what it is bound to; raises BundleError when a
    name would mean two things in one file. Also the repeated shared lines, which go."""
    origins: dict[str, dict[str, Origin]] = {}
    kept_shared: set[str] = set()  # ast.dump of the shared lines already in the file
    dropped: set[Place] = set()
    for module in order:
        names: dict[str, Origin] = {}
        by_statement: dict[str, list[Origin]] = {}
        for stmt in module.tree.body:
            bound_here = _statement_origins(stmt, module, imports, hoisted, origins)
            for name, value in bound_here.items():
                by_statement.setdefault(name, []).append(value)
            if _is_shared(stmt):
                key = ast.dump(stmt)
                if key in kept_shared:
                    dropped.add((module.name, stmt.lineno))
                kept_shared.add(key)
        table = symtable.symtable(module.source, module.path, "exec")
        bound = {
            s.get_name()
            for s in table.get_symbols()
            if s.is_assigned() or s.is_imported() or s.is_namespace()
        }
        bound |= {
            n for node in ast.walk(module.tree) if isinstance(node, ast.Global) for n in node.names
        }
        for name in sorted(bound | by_statement.keys()):
            found = set(by_statement.get(name, []))
            # Bound by one statement, or by the same import twice: what it says; any other
            # binding is the module's own (a rebinding of an imported name included).
            names[name] = found.pop() if len(found) == 1 else ("own", module.name, name)
        origins[module.name] = names
    seen: dict[str, tuple[Origin, str]] = {}
    for module in order:
        for name, origin in origins[module.name].items():
            if name in seen and seen[name][0] != origin:
                first = seen[name][1]
                raise BundleError(
                    f"{module.path} and healer/agent/{first}.py both define {name!r} at the top "
                    "level: in one file one would replace the other; rename one"
                )
            seen.setdefault(name, (origin, module.name))
    return origins, dropped


def _statement_origins(
    stmt: ast.stmt,
    module: Module,
    imports: dict[str, dict[str, str]],
    hoisted: set[ast.Import | ast.ImportFrom],
    done: dict[str, dict[str, Origin]],
) -> dict[str, Origin]:
    if stmt in hoisted and isinstance(stmt, ast.Import):
        return {
            (a.asname or a.name.split(".")[0]): ("import", a.name, a.asname or "")
            for a in stmt.names
        }
    if stmt in hoisted and isinstance(stmt, ast.ImportFrom):
        return {(a.asname or a.name): ("from", stmt.module or "", a.name) for a in stmt.names}
    if isinstance(stmt, ast.ImportFrom):  # from one of the agent's modules: what it binds there
        result = {}
        for alias in stmt.names:
            source = imports[module.name][alias.name]
            known = done.get(source, {})
            if alias.name not in known:
                raise BundleError(
                    f"{_where(module, stmt)}: {alias.name} is not defined at the top of "
                    f"healer/agent/{source}.py"
                )
            result[alias.name] = known[alias.name]
        return result
    if _is_shared(stmt):
        assert isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name)
        return {stmt.targets[0].id: ("shared", ast.dump(stmt.value))}
    return {name: ("own", module.name, name) for name in _binds(stmt)}


def _is_shared(stmt: ast.stmt) -> bool:
    """``NAME = <constant>`` or ``NAME = logging.getLogger(<constants>)``: the same line in two
    modules binds the same thing, so the file keeps one."""
    if not (
        isinstance(stmt, ast.Assign)
        and len(stmt.targets) == 1
        and isinstance(stmt.targets[0], ast.Name)
    ):
        return False
    value = stmt.value
    if isinstance(value, ast.Constant):
        return True
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and isinstance(value.func.value, ast.Name)
        and (value.func.value.id, value.func.attr) in _SHARED_CALLS
        and all(isinstance(arg, ast.Constant) for arg in value.args)
        and not value.keywords
    )


def _binds(stmt: ast.stmt) -> set[str]:
    """The names a top-level statement binds in the module (not in the scopes it opens)."""
    names: set[str] = set()
    todo: list[ast.AST] = [stmt]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue
        if isinstance(
            node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
        ):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name.split(".")[0]) for a in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        todo.extend(ast.iter_child_nodes(node))
    return names


def _check_builtins(origins: dict[str, dict[str, Origin]]) -> None:
    for module, names in origins.items():
        for name in sorted(names.keys() & vars(builtins).keys()):
            raise BundleError(
                f"healer/agent/{module}.py defines {name!r}, a builtin: in one file it would "
                "replace the builtin for every module"
            )


def render(the_plan: Plan, strip: frozenset[str], version: str) -> bytes:
    """The file, with what ``strip`` names (docstrings, comments) left out."""
    out = [SHEBANG]
    out.append(
        f"# healer node agent, healer {version}: the program healer installs on each machine.\n"
        "# Generated from healer/agent/ by healer.agent.bundle (python3 -m healer.agent.bundle OUT):\n"
        "# the agent's modules in one file, each under its path; change those, not this file.\n"
    )
    if the_plan.future:
        out.append(f"from __future__ import {', '.join(the_plan.future)}\n")
    head = [
        f"import {name}" + (f" as {alias}" if alias else "") for name, alias in the_plan.imports
    ]
    froms: dict[str, list[str]] = {}
    for source, name, alias in the_plan.from_imports:
        froms.setdefault(source, []).append(name + (f" as {alias}" if alias else ""))
    head += [f"from {source} import {', '.join(names)}" for source, names in froms.items()]
    if head:
        out.append("\n" + "\n".join(head) + "\n")
    main_guard = ""
    for module in the_plan.modules:
        lines = _lines(module, strip)
        out.append(f"\n\n# -- {module.path}\n")
        docstring = ast.get_docstring(module.tree, clean=True)
        if docstring and "docstrings" not in strip:
            out.append("".join(f"# {line}".rstrip() + "\n" for line in docstring.splitlines()))
        chunks = _chunks(module, lines, the_plan)
        if chunks:
            out.append("\n" + chunks)
        if the_plan.main_guard is not None and module.name == ENTRY:
            guard = the_plan.main_guard
            main_guard = "\n\n" + "".join(
                lines[guard.lineno - 1 : guard.end_lineno or guard.lineno]
            )
    text = "".join(out) + main_guard
    return text.encode("utf-8")


def _lines(module: Module, strip: frozenset[str]) -> list[str]:
    """The module's lines, each ending in a newline; a line that goes is left as ``""``, so
    that ast's line numbers still point at the right ones."""
    # Split at "\n" only, as ast counts lines (str.splitlines also splits at form feeds).
    lines = [line + "\n" for line in module.source.replace("\r\n", "\n").split("\n")]
    if "docstrings" in strip:
        for node in ast.walk(module.tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                _drop_docstring(node, lines)
    if "comments" in strip:
        tokens = tokenize.generate_tokens(io.StringIO(module.source).readline)
        for token in tokens:
            if token.type == tokenize.COMMENT:
                row, col = token.start
                code = lines[row - 1][:col].rstrip()
                lines[row - 1] = code + "\n" if code else ""
    return lines


def _drop_docstring(
    node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]
) -> None:
    first = node.body[0]
    if ast.get_docstring(node, clean=False) is None or first.end_lineno is None:
        return
    start, end = first.lineno - 1, first.end_lineno - 1
    before = lines[start].encode()[: first.col_offset]  # ast's columns count UTF-8 bytes
    after = lines[end].encode()[first.end_col_offset or 0 :]
    if before.strip() or after.strip():
        return  # shares a line with other code: it stays
    indent = before.decode()
    for row in range(start, end + 1):
        lines[row] = ""
    if len(node.body) == 1:
        lines[start] = indent + "pass\n"
    elif end + 1 < len(lines) and not lines[end + 1].strip():
        lines[end + 1] = ""  # the blank line after it


def _chunks(module: Module, lines: list[str], the_plan: Plan) -> str:
    """The module's top-level statements that stay, each with the comments just above it."""
    parts: list[str] = []
    previous_end = 0
    previous_def = False
    for stmt in module.tree.body:
        start = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
        end = stmt.end_lineno or stmt.lineno
        if start <= previous_end:
            raise BundleError(f"{_where(module, stmt)}: one statement per line, please")
        gap = lines[previous_end : start - 1]
        previous_end = end
        is_docstring = stmt is module.tree.body[0] and ast.get_docstring(module.tree) is not None
        if (module.name, stmt.lineno) in the_plan.dropped or is_docstring:
            continue
        comments = [line for line in gap if line.strip()]
        is_def = isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        if parts:
            blank_before = any(not line.strip() for line in gap if line)
            parts.append("\n\n" if is_def or previous_def else "\n" if blank_before else "")
        parts.append("".join(comments) + "".join(lines[start - 1 : end]))
        previous_def = is_def
    trailing = [line for line in lines[previous_end:] if line.strip()]
    if parts and trailing:  # comments after the last statement
        parts.append("\n" + "".join(trailing))
    return "".join(parts)


def healer_version(package_dir: Path = HERE) -> str:
    """healer's ``__version__``, read from ``healer/__init__.py`` (the agent imports nothing
    else from healer, and neither does its builder)."""
    init = package_dir.parent / "__init__.py"
    try:
        tree = ast.parse(init.read_text(encoding="utf-8"), str(init))
    except (OSError, SyntaxError) as exc:
        raise BundleError(f"{init}: cannot read healer's version: {exc}") from None
    for stmt in tree.body:
        if (
            isinstance(stmt, ast.Assign)
            and [t.id for t in stmt.targets if isinstance(t, ast.Name)] == ["__version__"]
            and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str)
        ):
            return stmt.value.value
    raise BundleError(f"{init}: no __version__ = '...'")


def build(package_dir: Path = HERE, *, version: str | None = None) -> bytes:
    """The agent as one script: with its docstrings and comments if it fits GZIP_BUDGET gzipped,
    else without its docstrings, else without its comments too."""
    the_plan = plan(load(package_dir))
    version = healer_version() if version is None else version
    for strip in STRIP_LEVELS:
        script = render(the_plan, strip, version)
        if len(gzip.compress(script, compresslevel=9, mtime=0)) <= GZIP_BUDGET:
            break
    return script


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python3 -m healer.agent.bundle OUTPUT", file=sys.stderr)
        return 1
    try:
        script = build()
    except BundleError as exc:
        print(f"healer.agent.bundle: {exc}", file=sys.stderr)
        return 1
    target = Path(args[0])
    target.write_bytes(script)
    target.chmod(0o755)
    packed = len(gzip.compress(script, compresslevel=9, mtime=0))
    print(f"{target}: the healer node agent ({len(script)} bytes, {packed} gzipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
