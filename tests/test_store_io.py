"""Features from other tools: ``store import`` / ``store export`` round trip, float16 kept,
and the imported store feeding concepts and vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmsteer.cli import main
from vlmsteer.store import FeatureStore


def _write(tmp_path, n=300, d=16, dtype=np.float16):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, d)) * 4
    which = rng.integers(3, size=n)
    feats = (centres[which] + rng.normal(size=(n, d))).astype(dtype)
    np.save(tmp_path / "f.npy", feats)
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "answer": ["a", "b", "c"][w]}) + "\n"
                                              for i, w in enumerate(which)))
    return feats, which


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_import_export_round_trip(tmp_path, dtype):
    feats, _ = _write(tmp_path, dtype=dtype)
    assert main(["store", "import", "--features", str(tmp_path / "f.npy"), "--records", str(tmp_path / "r.jsonl"),
                 "--layer", "12", "--num-layers", "32", "--out", str(tmp_path / "s")]) == 0
    st = FeatureStore.open(tmp_path / "s")
    assert st.layers == [12] and st.layer_index(-20) == 12 and len(st) == 300
    got = st.features(12, dtype=None)
    assert got.dtype == dtype and np.array_equal(got, feats)
    assert [r["id"] for r in st.records[:2]] == ["q0", "q1"]
    for ext in ("npy", "safetensors"):
        assert main(["store", "export", str(tmp_path / "s"), "--layer", "12", "--features",
                     str(tmp_path / f"out.{ext}"), "--records", str(tmp_path / f"out-{ext}.jsonl")]) == 0
    # an existing file is not replaced unless asked
    assert main(["store", "export", str(tmp_path / "s"), "--layer", "12", "--features", str(tmp_path / "out.npy"),
                 "--records", str(tmp_path / "out-npy.jsonl")]) == 2
    assert main(["store", "export", str(tmp_path / "s"), "--layer", "12", "--features", str(tmp_path / "out.npy"),
                 "--records", str(tmp_path / "out-npy.jsonl"), "--overwrite"]) == 0
    assert np.array_equal(np.load(tmp_path / "out.npy"), feats) and np.load(tmp_path / "out.npy").dtype == dtype
    from safetensors.numpy import load_file

    assert np.array_equal(load_file(str(tmp_path / "out.safetensors"))["features"], feats)
    assert (tmp_path / "out-npy.jsonl").read_text() == (tmp_path / "r.jsonl").read_text()


def test_imported_store_feeds_concepts_and_vectors(tmp_path):
    feats, which = _write(tmp_path)
    from safetensors.numpy import save_file

    save_file({"x": feats}, str(tmp_path / "f.safetensors"))
    assert main(["store", "import", "--features", str(tmp_path / "f.safetensors"), "--records",
                 str(tmp_path / "r.jsonl"), "--layer", "3", "--out", str(tmp_path / "s")]) == 0
    assert main(["concepts", str(tmp_path / "s"), "--layer", "3", "-k", "3", "--no-words", "--backend", "torch",
                 "--out", str(tmp_path / "c")]) == 0
    sizes = sorted(c["size"] for c in json.loads((tmp_path / "c" / "concepts.json").read_text())["concepts"])
    assert sizes == sorted(np.bincount(which).tolist())  # three well-separated blobs found exactly
    assert main(["vectors", "coarse", "--store", str(tmp_path / "s"), "--source", "answer=a", "--target", "answer=b",
                 "--out", str(tmp_path / "v.safetensors")]) == 0
    # without --layer, concepts use the store's deepest layer (here the only one, 3)
    assert main(["concepts", str(tmp_path / "s"), "-k", "3", "--no-words", "--out", str(tmp_path / "c2")]) == 0
    assert json.loads((tmp_path / "c2" / "concepts.json").read_text())["layer"] == 3


@pytest.mark.parametrize("records, message", [
    ("", "0 records for 300 feature rows"),
    ('{"id": "a"}\n' * 300, "duplicate id 'a' (line 1 and line 2)"),
    ('{"x": 1}\n' * 300, "line 1 has no string 'id'"),
])
def test_bad_imports_are_one_line_errors(tmp_path, capsys, records, message):
    _write(tmp_path)
    (tmp_path / "r.jsonl").write_text(records)
    assert main(["store", "import", "--features", str(tmp_path / "f.npy"), "--records", str(tmp_path / "r.jsonl"),
                 "--layer", "1", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "s").exists()


def test_negative_layer_needs_the_depth(tmp_path, capsys):
    _write(tmp_path)
    assert main(["store", "import", "--features", str(tmp_path / "f.npy"), "--records", str(tmp_path / "r.jsonl"),
                 "--layer", "-1", "--out", str(tmp_path / "s")]) == 2
    assert "(option --num-layers)" in capsys.readouterr().err


@pytest.mark.parametrize("rows, message", [
    ("empty", "holds no features (shape (0, 8)): nothing to import"),
    ("one-nan", "row 117 contains NaN or infinite values"),
    ("three-nan", "row 2 and 2 more rows contain NaN or infinite values"),
])
def test_an_import_names_its_bad_rows_or_emptiness(tmp_path, capsys, rows, message):
    """Issue 37: zero rows are one line, not a traceback; a NaN row is named by its number, not
    the whole shard's range."""
    arr = np.random.default_rng(0).normal(size=(0 if rows == "empty" else 120, 8)).astype(np.float32)
    if rows == "one-nan":
        arr[117, 3] = np.nan
    elif rows == "three-nan":
        arr[[2, 50, 90], 0] = np.inf
    np.save(tmp_path / "f.npy", arr)
    (tmp_path / "r.jsonl").write_text("".join(f'{{"id": "{i}"}}\n' for i in range(len(arr))))
    assert main(["store", "import", "--features", str(tmp_path / "f.npy"), "--records", str(tmp_path / "r.jsonl"),
                 "--layer", "1", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and message in err and "Traceback" not in err, err
