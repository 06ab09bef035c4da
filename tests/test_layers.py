"""The package's layers: imports run downward only, and no two files import each other.

Every module's imports are read with ``ast`` -- module-level, inside functions (lazy) and
under ``TYPE_CHECKING`` alike -- and checked against the layers of docs/architecture.md:

    base < world < twin, stages < market, genai < dataset < top (runner wiring, report, viewer, CLIs)

A module may import its own layer or any lower one. Separately, the graph of imports
between files must have no cycle (of any length), product code never imports the test
doubles in ``carla_mr.testing``, and no module imports another module's private name
(``from carla_mr.x import _y``; a private *module*, such as the C extension
``world._sumo_columns`` its wrapper imports, is not a name). Failures name the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "carla_mr"

#: (layer name, module patterns) from bottom to top. ``X`` matches the module ``carla_mr.X``
#: and ``X.*`` every module below the package ``carla_mr.X``. The first match wins, so the
#: command-line modules of every package (``*.cli``, ``*_cli``) are matched first, as ``top``.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("", "errors", "io", "schema", "config", "config.*", "cli_common", "scale", "reporting")),
    ("world", ("world", "world.*", "testing", "testing.*")),
    ("twin+stages", ("twin", "twin.*", "stages", "runner", "trajectories")),
    ("market+genai", ("market", "market.*", "genai", "genai.*")),
    ("dataset", ("dataset", "dataset.*")),
    ("top", ("pipeline", "report", "viewer", "cli", "__main__", "runner_cli", "bench_cli")),
)
CLI_SUFFIXES = (".cli", "_cli")
TOP = len(LAYERS) - 1


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """``carla_mr/world/base.py`` -> ``world.base``; ``carla_mr/world/__init__.py`` -> ``world``."""
    rel = path.relative_to(package).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    if module.endswith(CLI_SUFFIXES):
        return TOP
    for rank, (_, patterns) in enumerate(LAYERS):
        for pat in patterns:
            if pat.endswith(".*"):
                if module.startswith(pat[:-1]):
                    return rank
            elif module == pat:
                return rank
    raise AssertionError(f"carla_mr/{module.replace('.', '/')}.py is in no layer: add it to LAYERS in "
                         f"tests/test_layers.py and to docs/architecture.md")


def imports_of(path: Path, modules: set[str], package: Path = PACKAGE) -> list[tuple[str, int]]:
    """(imported carla_mr module, line) for every import in the file, wherever it stands."""
    me = module_name(path, package)
    is_pkg = path.name == "__init__.py"
    out: list[tuple[str, int]] = []

    def resolve(dotted: str) -> str | None:
        # the longest prefix that is a module of the package ("world.base.Snapshot" -> "world.base")
        parts = dotted.split(".")
        for k in range(len(parts), -1, -1):
            cand = ".".join(parts[:k])
            if cand in modules:
                return cand
        return None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "carla_mr" or alias.name.startswith("carla_mr."):
                    m = resolve(alias.name[len("carla_mr."):] if alias.name != "carla_mr" else "")
                    if m is not None:
                        out.append((m, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = me.split(".") if me else []
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module == "carla_mr" or (node.module or "").startswith("carla_mr."):
                target = node.module[len("carla_mr."):] if node.module != "carla_mr" else ""
            else:
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}" if target else alias.name
                m = resolve(full) if full in modules else resolve(target)
                if m is not None:
                    out.append((m, node.lineno))
    return [(m, line) for m, line in out if m != me]


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}."""
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, dict[str, int]] = {}
    for mod, path in files.items():
        edges: dict[str, int] = {}
        for target, line in imports_of(path, set(files), package):
            edges.setdefault(target, line)
        graph[mod] = edges
    return graph


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for mod, edges in sorted(graph.items()):
        for target, line in sorted(edges.items()):
            lo, hi = layer_of(mod), layer_of(target)
            if hi > lo:
                bad.append(f"carla_mr/{_file(mod)}:{line}: '{mod or 'carla_mr'}' ({LAYERS[lo][0]}) imports "
                           f"'{target}' ({LAYERS[hi][0]}), a higher layer")
    return bad


def imports_of_test_doubles(graph: dict[str, dict[str, int]]) -> list[str]:
    return [f"carla_mr/{_file(mod)}:{line}: product code imports the test double '{target}'"
            for mod, edges in sorted(graph.items()) if not mod.startswith("testing")
            for target, line in sorted(edges.items()) if target == "testing" or target.startswith("testing.")]


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one file (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _file(mod: str) -> str:
    p = PACKAGE / Path(*mod.split(".")) if mod else PACKAGE
    return str((p / "__init__.py").relative_to(PACKAGE) if p.is_dir() else p.with_suffix(".py").relative_to(PACKAGE))


def describe_cycle(comp: list[str], graph: dict[str, dict[str, int]]) -> str:
    edges = [f"carla_mr/{_file(a)}:{graph[a][b]} imports '{b}'" for a in comp for b in sorted(graph[a]) if b in comp]
    return "import cycle between " + ", ".join(comp) + ": " + "; ".join(edges)


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_every_module_has_a_layer(graph):
    for mod in graph:
        layer_of(mod)


def test_no_upward_import(graph):
    bad = upward_imports(graph)
    assert not bad, "imports into a higher layer:\n" + "\n".join(bad)


def test_no_import_cycle(graph):
    found = cycles(graph)
    assert not found, "\n".join(describe_cycle(c, graph) for c in found)


def test_product_code_never_imports_test_doubles(graph):
    bad = imports_of_test_doubles(graph)
    assert not bad, "\n".join(bad)


def private_name_imports(package: Path = PACKAGE) -> list[str]:
    """``from carla_mr.<module> import _name`` in another file, where ``_name`` is not itself a
    module or extension of the package (``import ... as _alias`` of a public name is fine)."""
    bad = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if not isinstance(node, ast.ImportFrom) or node.level or not (node.module or "").startswith("carla_mr"):
                continue
            folder = package.parent / Path(*node.module.split("."))
            for alias in node.names:
                name = alias.name
                if not name.startswith("_") or name.startswith("__"):
                    continue
                if (folder / f"{name}.py").is_file() or (folder / name).is_dir() or any(folder.glob(f"{name}.c")):
                    continue  # a private module of that package
                bad.append(f"{path.relative_to(package.parent)}:{node.lineno}: imports the private name "
                           f"'{name}' from {node.module}; make it public there or keep it in one module")
    return bad


def test_no_module_imports_another_modules_private_name():
    bad = private_name_imports()
    assert not bad, "\n".join(bad)


# -- the checker itself is tested on a small package written here ---------------------------

def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "carla_mr"
    for rel, text in {"__init__.py": "", **files}.items():
        p = pkg / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return pkg


def test_checker_finds_a_lazy_upward_import_with_its_line(tmp_path):
    pkg = _package(tmp_path, {"world/__init__.py": "", "world/base.py": "import numpy\n",
                              "market/__init__.py": "", "market/model.py": "x = 1\n",
                              "world/maps.py": "def f():\n    from carla_mr.market.model import x\n    return x\n"})
    bad = upward_imports(import_graph(pkg))
    assert len(bad) == 1 and "world/maps.py:2" in bad[0] and "'market.model'" in bad[0], bad


def test_checker_finds_a_relative_import_cycle(tmp_path):
    pkg = _package(tmp_path, {"market/__init__.py": "", "market/a.py": "from . import b\n",
                              "market/b.py": "def g():\n    from .c import z\n", "market/c.py": "from .a import q\n"})
    g = import_graph(pkg)
    assert cycles(g) == [["market.a", "market.b", "market.c"]]
    assert "market/b.py:2" in describe_cycle(cycles(g)[0], g)


def test_checker_accepts_downward_and_cli_imports(tmp_path):
    pkg = _package(tmp_path, {"errors.py": "", "world/__init__.py": "", "world/base.py": "from carla_mr import errors\n",
                              "dataset/__init__.py": "", "dataset/recorder.py": "import carla_mr.world.base\n",
                              "world/maps_cli.py": "from carla_mr.dataset import recorder\n"})
    g = import_graph(pkg)
    assert upward_imports(g) == [] and cycles(g) == []


def test_checker_finds_a_private_name_import_but_not_a_private_module(tmp_path):
    pkg = _package(tmp_path, {"world/__init__.py": "", "world/a.py": "def _helper():\n    pass\n",
                              "world/_fast.c": "", "world/b.py": "def f():\n    from carla_mr.world.a import _helper\n",
                              "world/c.py": "from carla_mr.world import _fast\nfrom carla_mr.world.a import _helper as h\n"})
    bad = private_name_imports(pkg)
    assert len(bad) == 2 and "world/b.py:2" in bad[0] and "'_helper'" in bad[0] and "world/c.py:2" in bad[1], bad
