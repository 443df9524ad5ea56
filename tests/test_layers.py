"""Dependencies point one way (STYLE.md): no import cycles, counting imports inside function bodies, and no
module imports a layer above its own. Read from the source with `ast`, so making an import lazy does not hide
it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "spurgen"

# Lowest first. A module may import its own layer or any layer below, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "seeds", "files", "imagenet", "prompts", "build", "sweep", "torch_threads"),
    ("config", "distributed", "loggers"),
    ("data", "models", "losses", "methods", "eval", "optim", "pipeline"),
    ("module", "callbacks", "checkpointing", "identity", "validation"),
    ("stages", "report", "dashboards", "review"),
    ("cli", "run", "__init__", "__main__"),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every spurgen module `path` imports, anywhere in the file (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target.startswith("spurgen") and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = all_modules()
    known = set(mods)
    graph = {name: imports_of(path, name, known) for name, path in mods.items()}
    # importing a submodule runs its package's __init__ first: a package does not count as importing itself
    return {n: {t for t in ts if not n.startswith(t + ".") and t != "spurgen"} for n, ts in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: add its top-level name to LAYERS in tests/test_layers.py")


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_every_module_has_a_layer_and_imports_point_down():
    wrong = [
        f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
        for a, targets in import_graph().items()
        for b in targets
        if layer_of(b) > layer_of(a)
    ]
    assert wrong == []


def test_stages_do_not_import_each_other():
    graph = import_graph()
    stages = {m for m in graph if m.startswith("spurgen.stages.")}
    crossing = [(a, b) for a in stages for b in graph[a] if b in stages and b != a]
    assert crossing == []


def imported_top_names(path: Path) -> set[str]:
    """The top-level name of every absolute import in `path`, anywhere in the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_package_imports_nothing_from_experiments():
    """experiments/ (benchmarks, probes, the mini world's weight recreation) is not in the wheel: spurgen's
    modules may not import it."""
    offenders = [
        str(p.relative_to(PKG.parent)) for p in PKG.rglob("*.py") if "experiments" in imported_top_names(p)
    ]
    assert offenders == []


def test_every_packaged_config_target_is_in_the_package():
    """conf/ ships in the wheel, so each `_target_` it names must import there: spurgen's own objects and its
    dependencies', never experiments/ (a config whose target is there belongs in experiments/conf)."""
    import importlib

    wrong = []
    for path in sorted((PKG.parent / "conf").rglob("*.yaml")):
        for line in path.read_text().splitlines():
            key, _, value = line.strip().partition(":")
            if key != "_target_" or "${" in value:
                continue
            module, _, name = value.split("#")[0].strip().rpartition(".")
            try:
                found = module.split(".")[0] != "experiments" and hasattr(
                    importlib.import_module(module), name
                )
            except ImportError:
                found = False
            if not found:
                wrong.append(f"{path.relative_to(PKG.parent)}: {value.strip()}")
    assert wrong == []


def test_the_package_holds_no_pretraining_or_benchmark_module():
    """What a run needs ships; what measures or remakes the shipped parts lives in experiments/."""
    words = ("pretrain", "probe", "proportional", "bench")
    found = [
        str(p.relative_to(PKG.parent))
        for p in PKG.rglob("*")
        if (p.suffix == ".py" or p.is_dir()) and any(w in p.stem for w in words)
    ]
    assert found == []
    assert not list(PKG.glob("mini/*.py")), "the mini world's recreation code lives in experiments/mini_world"


def test_the_checker_sees_imports_of_experiments(tmp_path):
    source = "import os\nfrom spurgen import x\ndef f():\n    from experiments.mini_world import corpus\n"
    (tmp_path / "m.py").write_text(source)
    assert imported_top_names(tmp_path / "m.py") == {"os", "spurgen", "experiments"}


def test_no_environment_switches_in_the_package():
    """Test-only behaviour goes behind seams the tests own (tests/faults.py), not environment variables."""
    offenders = [
        str(p.relative_to(PKG.parent))
        for p in PKG.rglob("*.py")
        if "SPURGEN_FAULT" in p.read_text() or "SPURGEN_TEST" in p.read_text()
    ]
    assert offenders == []


@pytest.mark.parametrize(
    ("source", "expect_cycle"),
    [
        ("def f():\n    from spurgen.b import x\n", True),  # a lazy import still counts
        ("", False),
    ],
)
def test_the_checker_sees_lazy_imports(tmp_path, monkeypatch, source, expect_cycle):
    pkg = tmp_path / "spurgen"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(source)
    (pkg / "b.py").write_text("from spurgen.a import y\n")
    monkeypatch.setattr(__import__(__name__), "PKG", pkg, raising=False)
    monkeypatch.setitem(globals(), "PKG", pkg)
    assert bool(cycles(import_graph())) is expect_cycle
