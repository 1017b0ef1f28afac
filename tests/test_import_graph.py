"""Static checks of the import graph of ``model/``, ``workflows/`` and ``neuroverse_bids/``.

The sources are parsed (``ast``), never imported, and imports inside functions count. Modules
carry project names: ``model.x``, ``workflows.y``, ``neuroverse_bids.z``; relative imports are
resolved as installed (setup.py's package_dir: ``neuroverse_bids.model`` is ``model/``,
``neuroverse_bids.workflows`` is ``workflows/``). ``importlib.import_module`` is not followed.
"""
import ast
from collections import deque, namedtuple
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("model", "workflows", "neuroverse_bids")  # each may import only those before it
INSTALLED = {"neuroverse_bids.model": "model", "neuroverse_bids.workflows": "workflows"}
TRAINING = "model.training"
INFERENCE = ("model.predictor", "model.engine", "model.checkpoint", "model.network", "model.apsp",
             "model.ensemble", "model.selection", "workflows.interfaces.icl",
             "neuroverse_bids.cli.predict", "neuroverse_bids.cli.participant")

#: src imports ``name`` (``""`` for ``import dst``) from module ``frm``; dst: the module reached
#: (``frm.name`` where that is a module file, else ``frm``); line: where, in src's file
Edge = namedtuple("Edge", "src line frm name dst")


def under(name, package):
    return name == package or name.startswith(package + ".")


def project_name(installed):
    """``neuroverse_bids.model.x`` -> ``model.x``; None for a module outside the project."""
    for prefix, short in INSTALLED.items():
        if under(installed, prefix):
            return short + installed[len(prefix):]
    return installed if installed.split(".")[0] in LAYERS else None


def installed_name(name):
    return name if under(name, "neuroverse_bids") else "neuroverse_bids." + name


def find_modules(root):
    """Project name -> source file, for every ``.py`` file of the three packages."""
    found = {}
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_edges(root):
    """(modules, every import of a project module by a project module, lazy ones included)."""
    modules, edges = find_modules(root), []
    for src, path in modules.items():
        package = installed_name(src)
        if path.name != "__init__.py":
            package = package.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges += [Edge(src, node.lineno, dst, "", dst) for alias in node.names
                          if (dst := project_name(alias.name))]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    if node.level > len(parts):
                        raise ValueError(f"{path}:{node.lineno}: relative import beyond the top")
                    base = ".".join(parts[:len(parts) - node.level + 1] + [base] * bool(base))
                frm = project_name(base)
                for alias in node.names if frm else ():
                    sub = f"{frm}.{alias.name}"
                    edges.append(Edge(src, node.lineno, frm, alias.name,
                                      sub if sub in modules else frm))
    return modules, sorted(edges)


def describe(edges, indent=""):
    """One line per import statement: ``src:line: from frm import a, b``."""
    names = {}
    for e in edges:
        names.setdefault((e.src, e.line, e.frm), []).append(e.name)
    return "\n".join(f"{indent}{src}:{line}: " + (f"from {frm} import {', '.join(n)}" if n[0]
                                                   else f"import {frm}")
                     for (src, line, frm), n in names.items())


def upward_imports(edges):
    """Edges against the layering model <- workflows <- neuroverse_bids."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    return [e for e in edges if rank[e.dst.split(".")[0]] > rank[e.src.split(".")[0]]]


def import_cycles(modules, edges):
    """Strongly connected components (Tarjan) of more than one module, sorted."""
    graph = {m: sorted({e.dst for e in edges if e.src == m and e.dst in modules} - {m})
             for m in modules}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = [stack.pop()]
            while component[-1] != v:
                component.append(stack.pop())
            on_stack.difference_update(component)
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return sorted(found)


def training_imports(modules, edges, entries):
    """Imports of ``model.training*`` by non-training modules reachable from ``entries``, each
    with the import chain from an entry. Importing ``a.b.c`` first runs packages a and a.b."""
    out = {m: [e for e in edges if e.src == m and e.dst in modules] for m in modules}
    for m in modules:
        parent = m.rpartition(".")[0]
        if parent in modules:
            out[m].append(Edge(m, 0, parent, "", parent))
    via = {m: None for m in entries}
    queue = deque(entries)
    while queue:
        for e in out[queue.popleft()]:
            if e.dst not in via:
                via[e.dst] = e
                if not under(e.dst, TRAINING):
                    queue.append(e.dst)
    found = []
    for e in edges:
        if e.src in via and under(e.dst, TRAINING) and not under(e.src, TRAINING):
            chain, m = [], e.src
            while via[m]:
                chain.insert(0, via[m])
                m = via[m].src
            found.append((e, chain))
    return found


def private_imports(edges):
    """``from X import _name`` (not dunder) where X is another project module."""
    return [e for e in edges if e.name.startswith("_") and not e.name.startswith("__")
            and e.frm != e.src]


@pytest.fixture(scope="module")
def graph():
    """(modules, edges) of this repository, parsed once."""
    return import_edges(ROOT)


def test_layers_point_one_way(graph):
    bad = upward_imports(graph[1])
    assert not bad, "model must not import workflows/neuroverse_bids, workflows must not " \
        "import neuroverse_bids:\n" + describe(bad)


def test_no_import_cycles(graph):
    modules, edges = graph
    cycles = import_cycles(modules, edges)
    lines = []
    for cycle in cycles:
        lines.append("cycle: " + ", ".join(cycle))
        lines.append(describe([e for e in edges if e.src in cycle and e.dst in cycle
                               and e.src != e.dst], "    "))
    assert not cycles, "import cycles (lazy imports count):\n" + "\n".join(lines)


def test_inference_never_imports_training(graph):
    modules, edges = graph
    entries = [m for m in modules if any(under(m, e) if e == "model.engine" else m == e
                                         for e in INFERENCE)]
    assert set(INFERENCE) <= set(entries), f"missing entries: {set(INFERENCE) - set(entries)}"
    found = training_imports(modules, edges, entries)
    assert not found, "inference reaches model.training:\n" + "\n".join(
        describe([e]) + "\n    chain: " + " -> ".join(
            [f"{c.src}:{c.line or '(its package)'}" for c in chain + [e]] + [e.dst]) for e, chain in found)


def test_no_private_imports_across_modules(graph):
    bad = private_imports(graph[1])
    assert not bad, "private names imported from another module:\n" + describe(bad)


FAKE = {  # every checker must find exactly what is planted here
    "model/__init__.py": "",
    "model/a.py": "from .b import _hidden, __doc__\n",
    "model/b.py": "_hidden = 1\ndef f():\n    from . import a\n",  # lazy: cycle a <-> b
    "model/c.py": "import neuroverse_bids.cli.run\n",  # upward, absolute
    "model/predictor.py": "from . import c\ndef f():\n    from .training.synth import DEG\n",
    "model/training/__init__.py": "",
    "model/training/synth.py": "DEG = {}\n",
    "workflows/__init__.py": "from ..model import a\n",
    "workflows/x.py": "def g():\n    from ..cli import run\n",  # upward, lazy
    "neuroverse_bids/__init__.py": "",
    "neuroverse_bids/cli/__init__.py": "from ..model.training import synth\n",  # runs first
    "neuroverse_bids/cli/run.py": "from ..model.predictor import f\nfrom ..workflows import x\n",
}


def test_checkers_find_planted_violations(tmp_path):
    for name, text in FAKE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules, edges = import_edges(tmp_path)
    assert {(e.src, e.dst) for e in edges} == {
        ("model.a", "model.b"), ("model.b", "model.a"), ("model.c", "neuroverse_bids.cli.run"),
        ("model.predictor", "model.c"), ("model.predictor", "model.training.synth"),
        ("workflows", "model.a"), ("workflows.x", "neuroverse_bids.cli.run"),
        ("neuroverse_bids.cli.run", "model.predictor"), ("neuroverse_bids.cli.run", "workflows.x"),
        ("neuroverse_bids.cli", "model.training.synth")}
    assert [(e.src, e.dst) for e in upward_imports(edges)] == [
        ("model.c", "neuroverse_bids.cli.run"), ("workflows.x", "neuroverse_bids.cli.run")]
    assert import_cycles(modules, edges) == [
        ["model.a", "model.b"],  # and the cycle through neuroverse_bids.cli.run:
        ["model.c", "model.predictor", "neuroverse_bids.cli.run", "workflows.x"]]
    found = training_imports(modules, edges, ["neuroverse_bids.cli.run"])
    assert [(e.src, e.line, e.name, [c.src for c in chain]) for e, chain in found] == [
        ("model.predictor", 3, "DEG", ["neuroverse_bids.cli.run"]),
        ("neuroverse_bids.cli", 1, "synth", ["neuroverse_bids.cli.run"])]
    assert [(e.src, e.line, e.name) for e in private_imports(edges)] == [("model.a", 1, "_hidden")]
