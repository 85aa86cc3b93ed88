"""Linear separability on a store with planted structure, and ``vlmsteer separability``."""

import json

import numpy as np
import pytest

from vlmsteer.cli import main
from vlmsteer.errors import VlmsteerError
from vlmsteer.analysis.separability import separability
from vlmsteer.store import FeatureStore, StoreWriter


def _store(path, n=120, d=8, seed=0):
    """Layer 0: labels are noise; layer 1: labels are planted, linearly separable."""
    rng = np.random.default_rng(seed)
    labels = [["a", "b", "c"][i % 3] for i in range(n)]
    centers = {"a": np.eye(d)[0] * 6, "b": np.eye(d)[1] * 6, "c": np.eye(d)[2] * 6}
    header = {"model_id": "synthetic", "hidden_size": d, "num_layers": 2, "layers": [0, 1], "dtype": "float32"}
    w = StoreWriter(path, header)
    feats = {0: rng.normal(size=(n, d)), 1: np.stack([centers[y] for y in labels]) + rng.normal(size=(n, d))}
    w.write_shard([{"id": str(i), "answer": y} for i, y in enumerate(labels)],
                  {layer: f.astype(np.float32) for layer, f in feats.items()})
    w.finish()
    return FeatureStore.open(path)


def test_planted_labels_are_separable_only_where_planted(tmp_path):
    res = separability(_store(tmp_path / "s"), label="answer")
    by_layer = {r.layer: r.probe_accuracy for r in res.layers}
    assert by_layer[1] > 95 and by_layer[0] < 60 and res.majority_baseline == pytest.approx(100 / 3)
    assert res.labels == ["a", "b", "c"] and res.counts == {"a": 40, "b": 40, "c": 40}


def test_separability_cli_writes_png_and_json(tmp_path, capsys):
    _store(tmp_path / "s")
    assert main(["separability", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--layer", "-1"]) == 0
    data = json.loads((tmp_path / "o" / "separability.json").read_text())
    assert [r["layer"] for r in data["layers"]] == [1]
    assert (tmp_path / "o" / "probe_accuracy.png").stat().st_size > 1000
    assert (tmp_path / "o" / "pca_layers.png").stat().st_size > 1000
    assert main(["separability", str(tmp_path / "s"), "--out", str(tmp_path / "o2"), "--label", "nothing"]) == 2
    assert "need at least 2 values of 'nothing'" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()  # a failed run publishes nothing
    # the same folder with other settings is refused and the earlier output stays whole
    before = (tmp_path / "o" / "separability.json").read_bytes()
    assert main(["separability", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--folds", "3"]) == 2
    assert "settings.folds" in capsys.readouterr().err
    assert (tmp_path / "o" / "separability.json").read_bytes() == before
    with pytest.raises(VlmsteerError, match="layer 5 is out of range"):
        separability(FeatureStore.open(tmp_path / "s"), layers=[5])


def test_nan_features_are_a_one_line_error(tmp_path, capsys):
    w = StoreWriter(tmp_path / "nan", {"hidden_size": 2, "layers": [0], "num_layers": 1})
    feats = np.ones((12, 2), np.float32)
    feats[3, 1] = np.nan
    w.write_shard([{"id": str(i), "answer": "ab"[i % 2]} for i in range(12)], {0: feats})
    w.finish()
    assert main(["separability", str(tmp_path / "nan"), "--out", str(tmp_path / "o"), "--folds", "2"]) == 2
    assert "layer 0 has NaN or infinite features" in capsys.readouterr().err
