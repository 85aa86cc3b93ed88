"""Every entry of every registry keeps its contract (:mod:`vlmsteer.testing.contracts`), so an
entry is tested from the moment it is registered; and every option that chooses an entry reads
its choices and help from the registry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmsteer.analysis.diffing import paired_features
from vlmsteer.analysis.diffing_methods import DIFF_METHODS
from vlmsteer.concepts.methods import CONCEPT_METHODS
from vlmsteer.data.formats import DATA_FORMATS
from vlmsteer.engines import ENGINES
from vlmsteer.positions import REGIONS, SELECTORS
from vlmsteer.registry import Registry, canonical
from vlmsteer.store_io import import_features
from vlmsteer.testing import contracts


def _features(n=120, dim=16, seed=0):
    g = np.random.default_rng(seed)
    centres = g.normal(size=(4, dim)) * 4
    return (centres[g.integers(0, 4, n)] + g.normal(size=(n, dim))).astype(np.float32)


@pytest.mark.parametrize("name", [e.name for e in CONCEPT_METHODS if not e.value.loads_only])
def test_concept_method_contract(name, tmp_path):
    z = _features()
    contracts.check_concept_method(name, np.abs(z) if name == "nmf" else z, tmp_path)


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    a = _features(200, 16, seed=1)
    planted = np.zeros(16, dtype=np.float32)
    planted[3] = 6.0
    b = a + planted + np.random.default_rng(2).normal(scale=0.05, size=a.shape).astype(np.float32)
    records = root / "r.jsonl"
    records.write_text("".join(json.dumps({"id": str(i)}) + "\n" for i in range(len(a))))
    stores = []
    for name, x in (("a", a), ("b", b)):
        np.save(root / f"{name}.npy", x)
        stores.append(import_features(root / f"{name}.npy", records, 2, root / name, num_layers=4))
    return paired_features(stores[0], stores[1], 2), planted


@pytest.mark.parametrize("name", DIFF_METHODS.names())
def test_diff_method_contract(name, paired):
    from vlmsteer.analysis.dictionary_diffing import DictionaryOptions

    p, planted = paired
    contracts.check_diff_method(name, p, planted, k=3, dictionary=DictionaryOptions(epochs=40))


@pytest.mark.parametrize("region", REGIONS.names())
def test_region_contract(region, tiny_vlm):
    contracts.check_region(tiny_vlm("llava"), region)


@pytest.mark.parametrize("name", SELECTORS.names())
def test_selector_contract(name, tiny_vlm):
    contracts.check_selector(tiny_vlm("llava"), name, word="red" if SELECTORS.get(name).word else None)


@pytest.mark.parametrize("name", DATA_FORMATS.names())
def test_dataset_format_contract(name, tmp_path):
    contracts.check_dataset_format(name, DATA_FORMATS.get(name).example(tmp_path))


def test_registry_refuses_twins_and_names_the_choices():
    from vlmsteer.errors import VlmsteerError

    reg = Registry("thing", "--thing")
    reg.add("a-b", 1, "the first")
    assert reg.get("A_B") == 1 and "a_b" in reg and canonical("A-B") == "a_b"
    with pytest.raises(VlmsteerError, match="registered already"):
        reg.add("a_b", 2, "a twin")
    with pytest.raises(VlmsteerError, match="unknown thing 'c'; choose one of: a-b"):
        reg.get("c")
    with pytest.raises(ValueError):
        reg.add("d", 3, "two\nlines")
    reg.add("a_b", 2, "a plugin's own", replace=True)  # a plugin may replace a built-in on purpose
    assert reg.get("a-b") == 2 and reg.names() == ["a_b"]
    assert reg.help("Pick one.") == "Pick one. a_b: a plugin's own"


@pytest.mark.parametrize("command, registry", [
    (["concepts"], CONCEPT_METHODS), (["diff"], DIFF_METHODS), (["extract"], DATA_FORMATS),
    (["extract"], SELECTORS), (["eval", "vqa"], REGIONS), (["eval", "vqa"], ENGINES)])
def test_help_lists_every_entry_with_its_description(command, registry, capsys):
    from vlmsteer.cli import main

    main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    for entry in registry:
        if registry is CONCEPT_METHODS and entry.value.family == "paired":
            continue
        assert f"{entry.name}: {' '.join(entry.description.split())}" in text, entry.name
