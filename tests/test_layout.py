"""The package's layout: imports flow one way, down the pipeline, and no module grows past
~400 lines. The layers, lowest first (a module may import its own layer and those below):

    errors, layers, progress                   foundations
    data                                       samples, loaders, answer text, keywords
    regions, selectors, loading, model, hooks, the model and its residual stream
    store, extract, finetune, organisms
    concepts, steer                            dictionaries; vectors and the steerer
    analysis, evaluate                         shift, separability; metrics and runs
    report                                     HTML reports and plots
    demo, testing                              the shipped demo; tiny test models
    cli                                        `vlmsteer <command>`
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vlmsteer"
LAYERS = [
    {"errors", "extras", "layers", "progress", "batching", "threads", "outputs", "mapped"},
    {"data"},
    {"regions", "selectors", "loading", "model", "head", "hooks", "store", "store_io", "extract", "finetune",
     "organisms"},
    {"concepts", "steer"},
    {"engines"},
    {"analysis", "evaluate"},
    {"report"},
    {"demo", "testing"},
    {"cli", "__main__"},
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
MAX_LINES = 400


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
