"""The repo's own structure, read from the code (ast: nothing is imported, nothing runs).

Every import of service/ and model/ counts: at the top of a module and inside functions, relative
ones resolved; not those under ``if TYPE_CHECKING:``, which never run. The counting is the one
../shared/tools/structure.py does, so its line and these tests agree:

- a module is a .py file; a package's __init__.py is the module of the package;
- ``import a.b.c`` imports the module a.b.c only, not the __init__ of a or a.b;
  ``from a.b import c`` imports a.b and, when c is a module, a.b.c;
  a name that is no module stands for the nearest module above it;
- a module importing its own package (or a package above it) is no edge: Python has run that
  __init__ already.

The checks: no import cycle; at most MAX_FLOORS import floors (a module's floor is 1 + the highest
floor of what it imports, 1 if it imports nothing of the repo); at most MAX_MODULES_PER_FOLDER
modules in one folder; no module over MAX_LINES lines; model/ imports service.contract and no other
part of service/; service/ never imports torch or model; each package's __init__ says its job and
"May import:", and its modules keep to that line; each module has a test file of its own name or
names the test files that cover it ("Tested by tests/...py").
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREES = ("service", "model")  # the code whose imports are counted
MAX_FLOORS = 10
MAX_MODULES_PER_FOLDER = 15
MAX_LINES = 400
# benchmarks/ is left out of the line limit until someone splits its three long files
# (speed/suite.py, speed/report.py, reliability/overload.py): add it here then.
LINE_LIMIT_TREES = ("service", "model")
MODEL_MAY_IMPORT = "service.contract"  # the one package of service/ that model/ imports
NEVER_IN_SERVICE = ("torch", "torchvision", "model")  # top-level names service/ never imports


@dataclass
class Module:
    name: str  # dotted: service.api.v1.routes; a package's __init__ is named as the package
    path: Path  # relative to ROOT
    is_package: bool
    imports: dict[str, int] = field(default_factory=dict)  # every dotted name imported -> first line
    edges: dict[str, int] = field(default_factory=dict)  # module of the repo imported -> first line

    @property
    def package(self) -> str:
        """The package the module's relative imports start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


def _is_type_checking(test: ast.expr) -> bool:
    """`TYPE_CHECKING` or `typing.TYPE_CHECKING` (any module's attribute of that name)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under node, at any depth, but the bodies of `if TYPE_CHECKING:`."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        children: list[ast.AST] = [node.test, *node.orelse]
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from _import_nodes(child)


def _imported_names(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """The dotted names an import statement names, relative ones made absolute."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = package.split(".")
        up = parts[: len(parts) - node.level + 1]
        base = ".".join([*up, base] if base else up)
    return [base, *(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")]


@cache
def modules() -> dict[str, Module]:
    """Every module of TREES, with what it imports."""
    found: dict[str, Module] = {}
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            rel = path.relative_to(ROOT)
            parts = list(rel.with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            found[name] = Module(name, rel, is_package)

    def resolve(name: str) -> str | None:
        while name and name not in found:
            name = name.rpartition(".")[0]
        return name or None

    for module in found.values():
        syntax = ast.parse((ROOT / module.path).read_text(), str(module.path))
        for node in _import_nodes(syntax):
            for name in _imported_names(node, module.package):
                module.imports.setdefault(name, node.lineno)
                target = resolve(name)
                if target is None or target == module.name:
                    continue
                if found[target].is_package and module.name.startswith(target + "."):
                    continue  # its own package, or one above: that __init__ has run already
                module.edges.setdefault(target, node.lineno)
    return found


def _where(module: str, target: str) -> str:
    m = modules()[module]
    return f"{m.path}:{m.edges[target]}"


@cache
def components() -> list[list[str]]:
    """Strongly connected components of the import graph (Tarjan, no recursion), each before
    every component that imports it."""
    graph = modules()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root].edges))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, targets = work[-1]
            for w in targets:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w].edges)))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    result.append(sorted(component))
    return result


def _cycle_in(component: list[str]) -> list[str]:
    """One cycle through the component's first module: a, b, ..., a."""
    inside = set(component)
    start = component[0]
    parent: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(modules()[v].edges):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if w in inside and w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle found in {component}")


@cache
def floors() -> dict[str, int]:
    """The floor of every module: the floor of its component (a cycle is one floor)."""
    floor: dict[str, int] = {}
    for component in components():
        deps = {t for m in component for t in modules()[m].edges} - set(component)
        level = 1 + max((floor[d] for d in deps), default=0)
        floor.update(dict.fromkeys(component, level))
    return floor


def _highest_chain() -> list[str]:
    """The modules on a longest import chain, from the top floor down to floor 1."""
    floor = floors()
    chain = [max(floor, key=lambda m: (floor[m], m))]
    while floor[chain[-1]] > 1:
        below = [t for t in modules()[chain[-1]].edges if floor[t] == floor[chain[-1]] - 1]
        chain.append(min(below))
    return chain


def _folders() -> dict[Path, list[str]]:
    """The modules in each folder (__init__.py not counted)."""
    folders: dict[Path, list[str]] = {}
    for module in modules().values():
        if not module.is_package:
            folders.setdefault(module.path.parent, []).append(module.path.name)
    return folders


def _docstring(module: Module) -> str:
    return ast.get_docstring(ast.parse((ROOT / module.path).read_text())) or ""


# ---------------------------------------------------------------- the import graph


def test_no_import_cycle() -> None:
    cycles = [c for c in components() if len(c) > 1]
    shown = []
    for component in cycles:
        cycle = _cycle_in(component)
        steps = [f"{a} ({_where(a, b)})" for a, b in itertools.pairwise(cycle)]
        shown.append(" -> ".join([*steps, cycle[-1]]))
    assert not cycles, f"{len(cycles)} import cycle(s):\n  " + "\n  ".join(shown)


def test_at_most_max_floors() -> None:
    chain = _highest_chain()
    top = floors()[chain[0]]
    shown = " -> ".join(f"{m} ({floors()[m]})" for m in chain)
    assert top <= MAX_FLOORS, f"{top} import floors > {MAX_FLOORS}; the highest chain: {shown}"


def test_at_most_max_modules_in_one_folder() -> None:
    wide = {f"{folder}/": sorted(names) for folder, names in _folders().items()}
    over = {f: names for f, names in wide.items() if len(names) > MAX_MODULES_PER_FOLDER}
    assert not over, "\n".join(
        f"{f} holds {len(names)} modules > {MAX_MODULES_PER_FOLDER}: {', '.join(names)}"
        for f, names in over.items()
    )


def test_no_module_over_max_lines() -> None:
    long = {}
    for tree in LINE_LIMIT_TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES:
                long[str(path.relative_to(ROOT))] = lines
    assert not long, f"modules over {MAX_LINES} lines (split them by job): " + ", ".join(
        f"{p} {n}" for p, n in sorted(long.items(), key=lambda kv: -kv[1])
    )


def test_model_imports_only_service_contract() -> None:
    bad = [
        f"{m.path}:{line} imports {t}"
        for m in modules().values()
        if m.name.split(".")[0] == "model"
        for t, line in m.edges.items()
        if t.split(".")[0] == "service" and t != MODEL_MAY_IMPORT and not t.startswith(MODEL_MAY_IMPORT + ".")
    ]
    assert not bad, f"model/ may import {MODEL_MAY_IMPORT} of service/, nothing else:\n  " + "\n  ".join(bad)


def test_service_never_imports_torch_or_model() -> None:
    bad = [
        f"{m.path}:{line} imports {name}"
        for m in modules().values()
        if m.name.split(".")[0] == "service"
        for name, line in m.imports.items()
        if name.split(".")[0] in NEVER_IN_SERVICE
    ]
    assert not bad, "service/ runs without torch and without model/:\n  " + "\n  ".join(bad)


# ---------------------------------------------------------------- the packages' own lines

_MAY_IMPORT = re.compile(r"May import:(.*?)(?:\.(?=\s|$)|$)", re.DOTALL)
_DOTTED = re.compile(r"\b(?:service|model)(?:\.[A-Za-z_]\w*)+")


def _may_import(docstring: str) -> list[str] | None:
    """The packages and modules of the repo named in the sentence that starts "May import:" (it ends
    at a full stop; "Never ..." after it is prose); None when there is no such sentence. A name
    allows what is below it: service.api allows service.api.auth."""
    found = _MAY_IMPORT.search(docstring)
    return None if found is None else _DOTTED.findall(found.group(1))


def _packages() -> list[Module]:
    return [m for m in modules().values() if m.is_package]


def test_every_package_says_its_job_and_what_it_may_import() -> None:
    bad = []
    for package in _packages():
        doc = _docstring(package)
        first = doc.split("\n\n")[0].strip()
        if len(first) < 20:
            bad.append(f"{package.path}: no docstring saying the package's job")
        if _may_import(doc) is None:
            bad.append(f'{package.path}: no "May import:" line')
    assert not bad, "\n".join(bad)


def _allowed(package: str, allowed: list[str], target: str) -> bool:
    """Whether a module of package may import target: its own package and what is below it, and
    what the package's "May import:" line names and what is below that."""
    if target == package or target.startswith(package + "."):
        return True  # its own package and those below it
    return any(target == a or target.startswith(a + ".") for a in allowed)


def test_every_module_keeps_to_its_packages_may_import_line() -> None:
    lines = {p.name: _may_import(_docstring(p)) for p in _packages()}
    bad = []
    for module in modules().values():
        package = module.package
        allowed = lines.get(package)
        if allowed is None:
            continue  # reported by the test above
        for target, line in sorted(module.edges.items()):
            if not _allowed(package, allowed, target):
                names = ", ".join(allowed) or "nothing of the repo"
                bad.append(f"{module.path}:{line} imports {target}; {package} may import: {names}")
    assert not bad, 'imports the package\'s "May import:" line leaves out:\n  ' + "\n  ".join(bad)


# ---------------------------------------------------------------- every module has its test

# a line that starts "Tested by", to the end of its sentence (a full stop) or of its paragraph
_TESTED_BY = re.compile(r"^[ \t]*Tested by (.*?)(?:\.(?=\s|$)|\n[ \t]*\n|\Z)", re.MULTILINE | re.DOTALL)
_TEST_PATH = re.compile(r"tests/[\w/]+\.py")


def _named_tests(module: Module) -> list[str]:
    """The test files a module's docstring names in its "Tested by tests/...py" sentences."""
    return [p for sentence in _TESTED_BY.findall(_docstring(module)) for p in _TEST_PATH.findall(sentence)]


def test_every_module_has_a_test_of_its_name_or_names_its_tests() -> None:
    bad = []
    for module in modules().values():
        if module.is_package:
            continue
        own = ROOT / "tests" / module.path.parent / f"test_{module.path.name}"
        if own.is_file():
            continue
        named = _named_tests(module)
        missing = [p for p in named if not (ROOT / p).is_file()]
        if not named:
            bad.append(f"{module.path}: no {own.relative_to(ROOT)}, and no 'Tested by tests/...py' line")
        elif missing:
            bad.append(f"{module.path}: 'Tested by' names files that do not exist: {', '.join(missing)}")
    assert not bad, "\n".join(bad)


if __name__ == "__main__":  # the figures, one line
    top = max(floors().values())
    widest, names = max(_folders().items(), key=lambda kv: len(kv[1]))
    cycles = sum(len(c) > 1 for c in components())
    print(
        f"{len(modules())} modules, {len(_folders())} folders, widest {widest}/ {len(names)}, "
        f"floors {top}, circles {cycles}; highest chain: {' -> '.join(_highest_chain())}"
    )
