"""The package's layout: imports flow one way, down the pipeline, and no module grows past
450 lines; no two modules import each other, even through others (function-level imports
count); choices are registries, never string switches. The layers, lowest first (a module may import its own layer and those below):

    errors, layers, progress                   foundations
    data                                       samples, loaders, answer text, keywords
    positions, loading, model, hooks,           the model and its residual stream
    store, extract, finetune, organisms
    concepts, steer                            dictionaries; vectors and the steerer
    analysis, evaluate                         shift, separability; metrics and runs
    report                                     rendering: HTML reports and plots of results handed to it
    runs                                       compute and publish output folders (the run protocol)
    demo, testing                              the shipped demo; tiny test models
    cli                                        `vlmsteer <command>`
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vlmsteer"
LAYERS = [
    {"errors", "extras", "layers", "progress", "batching", "threads", "outputs", "mapped", "registry"},
    {"data"},
    {"positions", "word_positions", "loading", "model", "head", "hooks", "store", "store_io", "extract", "finetune",
     "organisms"},
    {"concepts", "steer"},
    {"engines"},
    {"analysis", "evaluate"},
    {"report"},
    {"runs"},
    {"demo", "testing"},
    {"cli", "__main__"},
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
MAX_LINES = 450


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""  # "" = the package itself (vlmsteer/__init__)


def forbidden_imports(source: str, module: str) -> list[str]:
    """Imports in ``source`` (module ``vlmsteer.x.y``) that point up the layers; function-level
    imports count too."""
    here = _unit(module)
    bad = []
    for node in ast.walk(ast.parse(source)):
        targets = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "vlmsteer"]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for target in targets:
            if not target.startswith("vlmsteer.") or here == "":
                continue
            there = _unit(target)
            if there in RANK and RANK[there] > RANK[here]:
                bad.append(f"{module} imports {target} ({here} is below {there})")
    return bad


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_top_level_unit_has_a_layer():
    units = {_unit(m) for _, m in _modules()} - {""}
    assert units <= set(RANK), f"place these in LAYERS: {sorted(units - set(RANK))}"


def test_imports_flow_one_way():
    bad = [line for path, module in _modules() for line in forbidden_imports(path.read_text(), module)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source, module, expected", [
    ("from vlmsteer.evaluate.vqa import vqa_accuracy", "vlmsteer.data.sample", 1),
    ("def f():\n    import vlmsteer.cli\n", "vlmsteer.steer.vector", 1),
    ("from vlmsteer import report", "vlmsteer.concepts.grounding", 1),
    ("from vlmsteer.data.text import normalize_answer", "vlmsteer.evaluate.vqa", 0),
    ("from vlmsteer.steer import steer", "vlmsteer.concepts.dictionary", 0),  # same layer
])
def test_the_checker_catches_a_forbidden_import(source, module, expected):
    assert len(forbidden_imports(source, module)) == expected


def test_modules_stay_small():
    big = {m: n for path, m in _modules() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not big, f"split these modules (over {MAX_LINES} lines): {big}"


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (module and function level; ``from pkg import
    name`` counts as importing ``pkg.name`` where that is a module)."""
    modules = dict((m, path) for path, m in _modules())
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[module] |= {t for t in targets if t in modules and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert not cycles(import_graph()), "modules that import each other: " + str(cycles(import_graph()))


def test_the_circle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


SWITCH = re.compile(r"""\b(engine|method|region|selector|fmt)(\.value)?\s*(==|!=|in)\s*[\("']""")


def test_no_string_switches_outside_the_registries():
    """Choices among methods, engines, regions, selectors and formats are made by the registries
    (their entries' attributes), never by comparing names."""
    hits = [f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}" for path, _ in _modules()
            for i, line in enumerate(path.read_text().splitlines(), 1) if SWITCH.search(line)]
    assert not hits, "\n".join(hits)
