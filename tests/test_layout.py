"""The package's shape: the product never imports the demo-model factory, and its import graph has no loops: not
between modules (lazy imports inside functions included), and not between folders (no import from a lower layer
back up to a higher one)."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules(package: str) -> dict:
    mods = {}
    for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(mods: dict) -> dict:
    """{module: {imported module: True when every import of it is inside a function (lazy)}}."""
    edges: dict = {}
    for m, path in mods.items():
        tree = ast.parse(open(path, encoding="utf-8").read())
        top = {id(n) for n in tree.body}
        pkg = m if path.endswith("__init__.py") else m.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for t in targets:
                while t not in mods and "." in t:
                    t = t.rpartition(".")[0]
                if t != m:
                    lazy = id(node) not in top
                    edges.setdefault(m, {})[t] = edges.get(m, {}).get(t, True) and lazy
    return edges


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_the_product_never_imports_the_demo_factory():
    mods = _modules("compress")
    bad = sorted(f"{m} -> {t}" for m, d in _imports(mods).items() for t in d if t.split(".")[0] == "demo_factory")
    assert not bad, bad


def test_the_factory_is_found_by_the_checker():
    """The check above can fail: the factory's own imports of the product are seen by the same parser."""
    edges = _imports({**_modules("demo_factory"), **_modules("compress")})
    assert any(t.startswith("compress.") for t in edges["demo_factory.train.pipeline"])


def test_no_import_loops_at_module_level():
    edges = _imports(_modules("compress"))
    graph = {m: [t for t, lazy in d.items() if not lazy and t.startswith("compress")] for m, d in edges.items()}
    assert _cycles(graph) == []


def test_no_import_loops_counting_lazy_imports():
    edges = _imports(_modules("compress"))
    graph = {m: [t for t in d if t.startswith("compress")] for m, d in edges.items()}
    assert _cycles(graph) == []


def _layer(module: str) -> str:
    """The folder a module is drawn in: compress.loaders.artifact -> compress.loaders; top-level modules alone."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_layers_import_only_downward():
    """Folders as layers (loaders, models, quant, export, steps, bench, ...): no two import each other, directly or
    around a loop, so the layers stack and every import runs down."""
    edges = _imports(_modules("compress"))
    graph: dict = {}
    for m, d in edges.items():
        for t in d:
            if t.startswith("compress") and _layer(t) != _layer(m):
                graph.setdefault(_layer(m), set()).add(_layer(t))
    assert _cycles({k: sorted(v) for k, v in graph.items()}) == []
    assert "compress.outputs" in graph.get("compress.loaders", ())  # the graph is the real one


def test_cycle_finder_finds_a_loop():
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
