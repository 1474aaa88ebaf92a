"""The package's import rules (../ARCHITECTURE.md), checked by parsing every import, top-level and function-local.

A module sits in a layer; it may import from lower layers and from its own unit (its top-level module or
package), never upward or sideways. On top of that: no import cycle between modules, no import of
another module's `_private` name, tyro only in `cli/`, and every module opens with a docstring that says
what it owns. The rules read the source, so a failing test names the file, line and import to change.
"""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "gptkit"

# Bottom to top. A unit may import any unit in a lower layer; units in one layer do not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "version"),
    ("files", "config"),
    ("tokenizer",),
    ("chat_format",),
    ("models", "data"),
    ("adapt", "checkpoint", "evaluation"),
    ("training",),
    ("inference", "interop"),
    ("finetune", "prompting", "safety"),
    ("api",),
    ("serve",),
    ("cli",),
)
# The facade (`gptkit/__init__.py`, lazy names) and the entry point sit above everything.
TOP_UNITS = ("__init__", "__main__")
LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}
CLI_ONLY_LIBRARIES = ("tyro",)
# A function-local import is for an optional or heavy dependency only, never to get around a cycle. The
# CLI imports its commands' modules lazily (so `gptkit --help` is fast); elsewhere only these may:
LAZY_IMPORTS_ALLOWED = {("gptkit.serve.run", "gptkit.serve.app")}  # the app needs FastAPI, an optional extra


@dataclass(frozen=True)
class Import:
    source: str  # dotted module doing the import, e.g. gptkit.serve.app
    target: str  # dotted gptkit module imported, e.g. gptkit.inference.decode
    names: tuple[str, ...]  # names taken from target by `from target import ...` (empty for `import`)
    line: int
    external: str = ""  # top-level name of a non-gptkit import (tyro, torch, ...)
    local: bool = False  # inside a function (or class body), not at module level

    def where(self) -> str:
        return f"{self.source.replace('.', '/')}.py:{self.line}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def package_modules(root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def resolve(source: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module of `from ... import` (relative imports made absolute)."""
    if node.level == 0:
        return node.module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(source: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    module_level = {id(n) for n in tree.body}
    module_level |= {id(n) for top in tree.body if isinstance(top, (ast.If, ast.Try)) for n in ast.walk(top)}
    for node in ast.walk(tree):  # ast.walk reaches imports inside functions, classes and `if` blocks
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(as_import(source, alias.name, (), node.lineno, modules))
        elif isinstance(node, ast.ImportFrom):
            base = resolve(source, is_package, node)
            if base.split(".")[0] != "gptkit":
                found.append(Import(source, "", (), node.lineno, external=base.split(".")[0]))
                continue
            plain: list[str] = []
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:  # `from gptkit.serve import engine` imports a module
                    found.append(Import(source, submodule, (), node.lineno))
                else:
                    plain.append(alias.name)
            if plain:
                found.append(Import(source, base, tuple(plain), node.lineno))
    return [dataclasses.replace(imp, local=not any(id(n) in module_level for n in _nodes_at(tree, imp.line)))
            for imp in found]


def _nodes_at(tree: ast.AST, line: int) -> list[ast.AST]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and n.lineno == line]


def as_import(source: str, dotted: str, names: tuple[str, ...], line: int, modules: dict[str, Path]) -> Import:
    if dotted.split(".")[0] != "gptkit":
        return Import(source, "", (), line, external=dotted.split(".")[0])
    return Import(source, dotted, names, line)


def unit_of(module: str) -> str:
    """The layered unit of a dotted module: gptkit.serve.app -> serve, gptkit.files -> files, gptkit -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def all_imports(root: Path = PACKAGE_ROOT) -> list[Import]:
    modules = package_modules(root)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def layer_violations(imports: list[Import]) -> list[str]:
    problems = []
    for imp in imports:
        if not imp.target:
            continue
        source, target = unit_of(imp.source), unit_of(imp.target)
        if source in TOP_UNITS or source == target:
            continue
        if source not in LAYER_OF:
            problems.append(f"{imp.where()}: module unit '{source}' has no layer in LAYERS")
            continue
        if target in TOP_UNITS:
            problems.append(f"{imp.where()}: imports the package facade '{imp.target}'; import from the owner")
        elif target not in LAYER_OF:
            problems.append(f"{imp.where()}: imports '{imp.target}', whose unit has no layer in LAYERS")
        elif LAYER_OF[target] > LAYER_OF[source]:
            problems.append(f"{imp.where()}: upward import of {imp.target} ({target} sits above {source})")
        elif LAYER_OF[target] == LAYER_OF[source]:
            problems.append(f"{imp.where()}: sideways import of {imp.target} ({target} and {source} share a layer)")
    return problems


def find_cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module in the module import graph (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.target and imp.target != imp.source:
            graph.setdefault(imp.source, set()).add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_violations(imports: list[Import]) -> list[str]:
    problems = []
    for imp in imports:
        if not imp.target:
            continue
        private_module = [part for part in imp.target.split(".") if is_private(part)]
        owner = imp.target.rsplit(".", 1)[0] if private_module else imp.target
        if private_module and not imp.source.startswith(owner):
            problems.append(f"{imp.where()}: imports the private module {imp.target}")
        for name in imp.names:
            if is_private(name) and imp.source != imp.target:
                problems.append(f"{imp.where()}: imports {imp.target}.{name}, a private name of another module")
    return problems


def cli_library_violations(imports: list[Import]) -> list[str]:
    return [f"{imp.where()}: imports {imp.external}, which belongs in gptkit/cli/ only"
            for imp in imports
            if imp.external in CLI_ONLY_LIBRARIES and unit_of(imp.source) not in ("cli", *TOP_UNITS)]


def lazy_import_violations(imports: list[Import]) -> list[str]:
    return [f"{imp.where()}: function-local import of {imp.target}; import it at the top (a lazy import is for "
            "optional or heavy dependencies, never to get around a cycle)"
            for imp in imports
            if imp.local and imp.target and unit_of(imp.source) not in ("cli", *TOP_UNITS)
            and (imp.source, imp.target) not in LAZY_IMPORTS_ALLOWED]


def report(problems: list[str]) -> str:
    return f"{len(problems)} import rule violation(s):\n  " + "\n  ".join(problems)


# ------------------------------------------------------------------------------------------------


def test_the_parser_sees_function_local_and_relative_imports(tmp_path):
    root = tmp_path / "gptkit"
    (root / "serve").mkdir(parents=True)
    (root / "__init__.py").write_text('"""The facade."""\n')
    (root / "serve" / "__init__.py").write_text('"""Serving."""\n')
    (root / "serve" / "app.py").write_text('"""The app."""\n')
    (root / "models.py").write_text(
        '"""Models."""\n'
        "def build():\n"
        "    from gptkit.serve.app import _helper  # function-local, upward and private\n"
        "    import tyro\n")
    (root / "serve" / "routes.py").write_text('"""Routes."""\nfrom . import app\nfrom .app import create\n')
    imports = all_imports(root)
    assert ("gptkit.models", "gptkit.serve.app", ("_helper",), 3) in [
        (i.source, i.target, i.names, i.line) for i in imports]
    assert [i.target for i in imports if i.source == "gptkit.serve.routes"] == ["gptkit.serve.app"] * 2
    assert any("upward import of gptkit.serve.app" in p for p in layer_violations(imports))
    assert any("private name" in p for p in private_violations(imports))
    assert any("tyro" in p for p in cli_library_violations(imports))
    assert any("function-local import of gptkit.serve.app" in p for p in lazy_import_violations(imports))
    assert not [i for i in imports if i.source == "gptkit.serve.routes" and i.local]


def test_cycles_are_found_through_any_number_of_modules():
    chain = [Import("gptkit.a", "gptkit.b", (), 1), Import("gptkit.b", "gptkit.c", (), 1),
             Import("gptkit.c", "gptkit.a", (), 1), Import("gptkit.c", "gptkit.d", (), 1)]
    assert find_cycles(chain) == [["gptkit.a", "gptkit.b", "gptkit.c"]]
    assert find_cycles(chain[1:]) == []


def test_every_unit_of_the_package_has_a_layer():
    units = {unit_of(name) for name in package_modules()} - set(TOP_UNITS)
    assert units <= set(LAYER_OF), f"units without a layer: {sorted(units - set(LAYER_OF))}"


def test_imports_go_downward_only():
    problems = layer_violations(all_imports())
    assert not problems, report(problems)


def test_no_import_cycles():
    cycles = find_cycles(all_imports())
    assert not cycles, "import cycles:\n  " + "\n  ".join(" -> ".join(c) for c in cycles)


def test_no_import_of_another_modules_private_names():
    problems = private_violations(all_imports())
    assert not problems, report(problems)


def test_cli_libraries_stay_in_cli():
    problems = cli_library_violations(all_imports())
    assert not problems, report(problems)


def test_function_local_imports_of_the_package_are_only_where_a_dependency_is_optional():
    problems = lazy_import_violations(all_imports())
    assert not problems, report(problems)


def test_every_module_opens_with_a_docstring():
    missing = [str(path.relative_to(PACKAGE_ROOT.parent)) for path in package_modules().values()
               if not (ast.get_docstring(ast.parse(path.read_text())) or "").strip()]
    assert not missing, f"modules without an opening docstring: {missing}"


def test_the_python_face_does_not_pull_in_the_cli_or_the_training_loop():
    # A fresh interpreter: this test process has imported everything already.
    probe = ("import sys, gptkit; gptkit.LLM; gptkit.generate; "
             "print(' '.join(m for m in ('tyro', 'gptkit.cli', 'gptkit.training.loop', 'gptkit.serve.app') "
             "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == [], f"`import gptkit; gptkit.LLM` imported {loaded}"
