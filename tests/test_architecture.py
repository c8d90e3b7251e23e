"""The package's import graph has no cycle.

Every module under ``tood_ext/`` is parsed with :mod:`ast` (nothing is imported); its imports of
``tood_ext`` modules, relative or absolute, are the edges of a directed graph, which must be
acyclic. The rules:

* every ``import`` / ``from ... import`` statement counts, wherever it is: at module level, in a
  function, a method or under ``if TYPE_CHECKING`` -- a function-level import only postpones a
  circle to the first call, it does not remove the dependency;
* ``from pkg import name`` is an edge to the submodule ``pkg.name`` when that is a module of the
  tree, to ``pkg.name`` as a leaf when ``pkg``'s ``__init__`` does not bind ``name`` (a module
  that is not a source file of the tree: the compiled ``_C``, the generated ``_build_stamp``),
  else to ``pkg`` (its ``__init__``);
* importing ``a.b.c`` is an edge to ``a.b.c`` only, not to the packages ``a`` and ``a.b`` whose
  ``__init__`` Python runs first: a package's ``__init__`` that re-exports its submodules (the
  usual facade) would otherwise make a circle with each of them;
* imports by name at run time (``importlib.import_module``: the lazy attributes of
  ``tood_ext/__init__.py``, the CLI's plugin commands) are not seen.
"""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def _modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (source file, is a package ``__init__``), for every .py under root/package."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def _bound_names(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level (assignments, defs, classes, imports)."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def import_graph(root: Path, package: str = "tood_ext") -> dict[str, set[str]]:
    """module -> the package's modules it imports (see the module docstring for the rules)."""
    modules = _modules(root, package)
    trees = {name: ast.parse(path.read_text(), str(path)) for name, (path, _) in modules.items()}
    bound = {name: _bound_names(tree) for name, tree in trees.items() if modules[name][1]}
    graph: dict[str, set[str]] = {}
    for name, tree in trees.items():
        is_pkg = modules[name][1]
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = []
                for a in node.names:
                    sub = f"{source}.{a.name}"
                    if sub in modules or (source in bound and a.name not in bound[source]):
                        targets.append(sub)
                    else:
                        targets.append(source)
            else:
                continue
            edges.update(t for t in targets if t == package or t.startswith(package + "."))
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as ``[a, b, ..., a]``, or None when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_no_import_cycle_in_tood_ext():
    graph = import_graph(ROOT)
    # the parse found the package and its imports (the assertion below is not vacuous)
    assert len(graph) >= 40, sorted(graph)
    assert "tood_ext.models.tood_head" in graph["tood_ext.models.detector"]
    assert "tood_ext.engine.checkpoint" in graph["tood_ext.engine.train"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_detectors_and_heads_are_siblings():
    """TOOD and ATSS (and their heads) share a base; neither is built on the other."""
    from tood_ext.models import ATSS, TOOD, ATSSHead, DenseDetector, DenseHead, TOODHead

    for a, b, base in ((TOOD, ATSS, DenseDetector), (TOODHead, ATSSHead, DenseHead)):
        assert issubclass(a, base) and issubclass(b, base)
        assert not issubclass(a, b) and not issubclass(b, a)
    graph = import_graph(ROOT)
    assert "tood_ext.models.tood_head" not in graph["tood_ext.models.atss_head"]
    assert "tood_ext.models.atss_head" not in graph["tood_ext.models.tood_head"]
    assert graph["tood_ext.models.config"] == set()  # the config holds the config only


def test_one_postprocess_one_checkpoint_loader():
    """predict, export and analysis share models/postprocess.py (the only module that imports an
    NMS); export and analysis load checkpoints through engine/checkpoint.py; analysis's IoU is
    the library's box_iou (the ops, or their references)."""
    graph = import_graph(ROOT)
    for user in ("tood_ext.models.dense_detector", "tood_ext.export.nms",
                 "tood_ext.export.wrapper", "tood_ext.analysis.primitives",
                 "tood_ext.analysis.predictions"):
        assert "tood_ext.models.postprocess" in graph[user], user
    assert "tood_ext.engine.checkpoint" in graph["tood_ext.export.cli"]
    assert "tood_ext.engine" in graph["tood_ext.analysis.cli"]  # model_from_checkpoint
    assert {"tood_ext.ops", "tood_ext.reference"} <= graph["tood_ext.analysis.primitives"]
    nms_users = []
    for path in sorted((ROOT / "tood_ext").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torchvision"):
                if any("nms" in a.name or "box_iou" in a.name for a in node.names):
                    nms_users.append(path.relative_to(ROOT).as_posix())
    assert nms_users == ["tood_ext/models/postprocess.py"]


def test_find_cycle_on_small_graphs():
    assert find_cycle({}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond, no cycle
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    got = find_cycle({"x": {"a"}, "a": {"b"}, "b": {"c", "x2"}, "c": {"b"}, "x2": set()})
    assert got == ["b", "c", "b"]


def _write_package(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_import_graph_of_a_package_with_a_cycle(tmp_path):
    """A circle closed by a function-level relative import is found; the facade ``__init__``
    and a non-source module (``_C``) make none."""
    _write_package(tmp_path, {
        "pkg/__init__.py": "from . import _loader\nfrom .sub import helper\nX = 1\n",
        "pkg/_loader.py": "from . import _C\nfrom pkg import X\n",
        "pkg/sub/__init__.py": "from .a import helper\n",
        "pkg/sub/a.py": "import os\nfrom ..sub import b\n\ndef helper():\n    return b\n",
        "pkg/sub/b.py": ("import pkg.other\n\n"
                         "def late():\n    from .a import helper\n    return helper\n"),
        "pkg/other.py": "import numpy\n",
    })
    graph = import_graph(tmp_path, "pkg")
    assert graph == {
        "pkg": {"pkg._loader", "pkg.sub"},
        "pkg._loader": {"pkg._C", "pkg"},
        "pkg.sub": {"pkg.sub.a"},
        "pkg.sub.a": {"pkg.sub.b"},
        "pkg.sub.b": {"pkg.other", "pkg.sub.a"},
        "pkg.other": set(),
    }
    assert find_cycle(graph) == ["pkg", "pkg._loader", "pkg"]
    # without the loader's import of the package, the circle left is the function-level one
    (tmp_path / "pkg/_loader.py").write_text("from . import _C\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) == ["pkg.sub.a", "pkg.sub.b", "pkg.sub.a"]
    (tmp_path / "pkg/sub/b.py").write_text("import pkg.other\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None


if __name__ == "__main__":  # python tests/test_architecture.py: the graph, and a cycle if any
    graph = import_graph(ROOT)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} edges")
    for name in sorted(graph):
        print(f"  {name} -> {', '.join(sorted(graph[name])) or '-'}")
    print("cycle:", find_cycle(graph))
