"""The run protocol lives in the library: ``vlmsteer.runs.concepts.concepts`` called from Python
writes the folder the CLI writes (outputs, identity, fingerprint) and refuses a rerun with other
settings exactly as the CLI does."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vlmsteer.cli import main
from vlmsteer.data import load_jsonl
from vlmsteer.errors import VlmsteerError
from vlmsteer.extract import ExtractConfig, extract
from vlmsteer.positions import Selector
from vlmsteer.runs.concepts import concepts


@pytest.fixture(scope="module")
def store(tiny_vlm, tmp_path_factory):
    root = tmp_path_factory.mktemp("apistore")
    rows = []
    for i in range(18):
        Image.new("RGB", (32, 32), ((i * 41) % 255, (i * 13) % 255, (i * 97) % 255)).save(root / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "prompt": "describe the image .",
                     "answers": [["red circle", "blue square", "green triangle"][i % 3]]})
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    st, _ = extract(tiny_vlm("llava"), load_jsonl(root / "d.jsonl"), root / "store",
                    ExtractConfig(layers=[1, 2], selector=Selector("mean_response")), progress=False)
    return st


def _record(folder):
    return json.loads((folder / "run.json").read_text())


def test_python_call_writes_the_clis_folder_and_refuses_alike(store, tiny_folder, tmp_path, capsys):
    model = str(tiny_folder("llava"))
    cli, api = tmp_path / "cli", tmp_path / "api"
    assert main(["concepts", str(store.path), "--out", str(cli), "-k", "3", "--model", model,
                 "--splice-samples", "4"]) == 0
    result = concepts(str(store.path), str(api), k=3, model=model, splice_samples=4, progress=False)
    same = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731 - (a NaN is not equal to itself)
    assert same(result) == same(json.loads((api / "concepts.json").read_text()))
    assert (cli / "concepts.json").read_bytes() == (api / "concepts.json").read_bytes()
    assert (cli / "dictionary.safetensors").read_bytes() == (api / "dictionary.safetensors").read_bytes()
    assert sorted(p.name for p in cli.iterdir()) == sorted(p.name for p in api.iterdir())
    a, b = _record(cli), _record(api)
    assert a["identity"] == b["identity"] and a["fingerprint"] == b["fingerprint"] and len(a["fingerprint"]) == 64
    assert a["identity"]["command"] == "vlmsteer concepts" and a["identity"]["settings"]["k"] == 3
    assert a["identity"]["store"] == store.fingerprint
    # a rerun with other settings: refused by both, naming --overwrite, the folder kept whole
    before = (api / "concepts.json").read_bytes()
    with pytest.raises(VlmsteerError, match="other inputs or settings .settings.k.*overwrite"):
        concepts(store.path, api, k=4, model=model, splice_samples=4, progress=False)
    capsys.readouterr()
    assert main(["concepts", str(store.path), "--out", str(api), "-k", "4", "--model", model,
                 "--splice-samples", "4"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (api / "concepts.json").read_bytes() == before
    # the same settings from the other side: accepted (the folder is the same run)
    assert main(["concepts", str(store.path), "--out", str(api), "-k", "3", "--model", model,
                 "--splice-samples", "4"]) == 0
    concepts(store.path, cli, k=3, model=model, splice_samples=4, progress=False)


def test_diff_from_python_writes_the_clis_folder(store, tmp_path, capsys):
    from vlmsteer.runs.diff import diff

    cli, api = tmp_path / "cli", tmp_path / "api"
    assert main(["diff", "--original", str(store.path), "--finetuned", str(store.path), "--method", "concepts",
                 "-k", "3", "--no-words", "--out", str(cli)]) == 0
    result = diff(str(store.path), str(store.path), str(api), method="concepts", k=3, no_words=True, progress=False)
    assert result["method"] == "concepts" and result["relative_norm"] == 0.0  # a store against itself
    assert (cli / "diff.json").read_bytes() == (api / "diff.json").read_bytes()
    assert (cli / "diff.safetensors").read_bytes() == (api / "diff.safetensors").read_bytes()
    a, b = _record(cli), _record(api)
    assert a["identity"] == b["identity"] and a["fingerprint"] == b["fingerprint"]
    assert a["identity"]["command"] == "vlmsteer diff" and a["identity"]["settings"]["method"] == "concepts"
    # an option the method does not take: refused by both, before anything is written
    with pytest.raises(VlmsteerError, match="does not use --l0"):
        diff(store.path, store.path, tmp_path / "other", method="adl", l0=5)
    capsys.readouterr()
    assert main(["diff", "--original", str(store.path), "--finetuned", str(store.path), "--method", "adl",
                 "--l0", "5", "--out", str(tmp_path / "other")]) == 2
    assert "does not use --l0" in capsys.readouterr().err and not (tmp_path / "other").exists()
