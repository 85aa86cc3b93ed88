"""``vlmsteer concepts`` end to end: files, an HTML report that renders in headless Chromium,
escaped captions, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from vlmsteer.cli import main
from vlmsteer.data import load_jsonl
from vlmsteer.extract import ExtractConfig, extract
from vlmsteer.positions import Selector
from vlmsteer.store import FeatureStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def store(tiny_vlm, tmp_path_factory):
    root = tmp_path_factory.mktemp("cstore")
    rows = []
    for i in range(24):
        Image.new("RGB", (32, 32), ((i * 37) % 255, (i * 91) % 255, (i * 53) % 255)).save(root / f"{i}.png")
        answer = EVIL if i == 0 else ["red circle", "blue square", "green triangle"][i % 3]
        rows.append({"id": str(i), "image": f"{i}.png", "prompt": "describe the image .", "answers": [answer]})
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = load_jsonl(root / "d.jsonl")
    st, _ = extract(tiny_vlm("llava"), samples, root / "store",
                    ExtractConfig(layers=[1, 2], selector=Selector("mean_response")), progress=False)
    return st


def _chromium(*args, timeout=60):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=timeout)


def test_concepts_cli_writes_report(store, tiny_folder, tmp_path, capsys):
    out = tmp_path / "concepts"
    # the store was made by a model loaded from this folder: ground words with it
    assert main(["concepts", str(store.path), "--out", str(out), "-k", "3", "--layer", "-1",
                 "--model", str(tiny_folder("llava")), "--top-images", "24"]) == 0
    result = json.loads((out / "concepts.json").read_text())
    assert len(result["concepts"]) == 3 and sum(c["size"] for c in result["concepts"]) == 24
    assert all(len(c["words"]) == 15 and len(c["top_samples"]) == 24 for c in result["concepts"])
    for name in ("dictionary.safetensors", "pca.png", "report.html", "run.json"):
        assert (out / name).exists()
    html = (out / "report.html").read_text()
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "http://" not in html and "https://" not in html  # opens from disk with no network


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(store, tmp_path):
    out = tmp_path / "c"
    assert main(["concepts", str(store.path), "--out", str(out), "-k", "3", "--no-words", "--top-images", "24"]) == 0
    page = (out / "report.html").resolve().as_uri()
    shot = tmp_path / "shot.png"
    res = _chromium(f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1300,1400", page)
    assert shot.exists(), res.stderr
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.std() > 5  # not a blank page
    dom = _chromium(f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", page).stdout
    assert dom.count('class="card concept"') == 3
    assert dom.count('class="sample"') == 72 and dom.count("data:image/png;base64,") >= 72
    assert "<script>alert(1)</script>" not in dom and "alert(1)" in dom  # shown as text, not run


def test_errors(store, tmp_path, capsys):
    assert main(["concepts", str(store.path), "--out", str(tmp_path / "a"), "-k", "50", "--no-words"]) == 2
    assert "fewer than the 50 concepts" in capsys.readouterr().err
    assert main(["concepts", str(store.path), "--out", str(tmp_path / "b"), "--layer", "0", "--no-words"]) == 2
    assert "layer 0 not in this store" in capsys.readouterr().err
    bad = FeatureStore.open(store.path)
    arr = np.load(bad.path / "shard-00000.layer-2.npy")
    nan_store = tmp_path / "nan"
    shutil.copytree(store.path, nan_store)
    arr[3, 0] = np.nan
    np.save(nan_store / "shard-00000.layer-2.npy", arr)
    assert main(["concepts", str(nan_store), "--out", str(tmp_path / "c"), "-k", "3", "--no-words"]) == 2
    err = capsys.readouterr().err
    assert "NaN" in err and len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_concepts_cli_trains_an_sae_measures_it_on_held_out_rows_and_writes_saelens(store, tiny_folder, tmp_path):
    from vlmsteer.concepts import load_dictionary

    out = tmp_path / "sae"
    assert main(["concepts", str(store.path), "--out", str(out), "--method", "topk-sae", "--latents", "8",
                 "--l0", "2", "--epochs", "30", "--batch-size", "8", "--layer", "-1", "--saelens",
                 "--model", str(tiny_folder("llava")), "--top-images", "3"]) == 0
    result = json.loads((out / "concepts.json").read_text())
    q = result["quality"]
    assert result["method"] == "topk_sae" and len(result["concepts"]) == 8 and result["n_train"] == 22
    # two held-out rows of a random tiny model: their FVU is measured (finite), not meaningful;
    # the training rows show the SAE learnt
    assert q["rows"] == "held-out" and q["n_rows"] == 2 and 0 < q["l0"] <= 2 and 0 <= q["fvu"] < 10
    assert result["training"] and result["training"][-1]["fvu"] < 0.5
    d, meta = load_dictionary(out / "dictionary.safetensors")
    s, smeta = load_dictionary(out / "saelens")
    assert smeta["layer"] == meta["layer"] == result["layer"]
    np.testing.assert_array_equal(s.components_, d.components_)
    # the splice cost: the store's 24 responses re-read by the whole model, clean / spliced / zeroed
    c = result["splice"]
    assert c["n_samples"] == 24 and c["positions"] == "mean response" and c["zero"] > c["clean"] >= 0
    assert c["loss_recovered"] == pytest.approx((c["zero"] - c["spliced"]) / (c["zero"] - c["clean"]))
    html = (out / "report.html").read_text()
    assert "FVU" in html and "loss recovered" in html
    # the clustering methods report the same figures on their held-out rows
    km = tmp_path / "km"
    assert main(["concepts", str(store.path), "--out", str(km), "-k", "3", "--no-words", "--held-out", "0.25"]) == 0
    result = json.loads((km / "concepts.json").read_text())
    q = result["quality"]
    assert q["rows"] == "held-out" and q["n_rows"] == 6 and q["l0"] == 1.0 and q["fvu"] > 0
    assert result["splice"] is None  # --no-words: no model loaded
    assert main(["concepts", str(store.path), "--out", str(tmp_path / "x"), "-k", "3", "--latents", "4"]) == 2
