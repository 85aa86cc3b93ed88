"""Planted shifts: B = A + Δ per cluster gives the planted shift vectors, a perfect matching and
recovery cosine 1 at α = 1; Hungarian and OT agree on square problems."""

import numpy as np
import pytest

from vlmsteer.concepts import KMeansConcepts
from vlmsteer.errors import VlmsteerError
from vlmsteer.analysis.shift import (consistency, correlations, match_concepts, recovery_cosine, shift_vectors)


def _planted(k=4, n=50, d=12, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 10
    labels = np.repeat(np.arange(k), n)
    a = centers[labels] + rng.normal(size=(k * n, d))
    planted = rng.normal(size=(k, d)) * 3
    b = a + planted[labels]
    return a, b, labels, planted


def test_planted_shifts_are_recovered():
    a, b, labels, planted = _planted()
    da = KMeansConcepts(k=4, seed=0).fit(a)
    db = KMeansConcepts(k=4, seed=0).fit(b)
    assign = da.assign(a)
    delta = shift_vectors(a, b, assign, 4)
    # concept c of A holds exactly one planted cluster
    for c in range(4):
        cluster = np.bincount(labels[assign == c]).argmax()
        np.testing.assert_allclose(delta[c], planted[cluster], atol=1e-9)
    matching = match_concepts(da.components_, db.components_)
    # perfect matching: each matched pair covers the same samples
    for i, j in matching.pairs:
        assert set(np.nonzero(assign == i)[0]) == set(np.nonzero(db.assign(b) == j)[0])
    rec1 = recovery_cosine(da.components_, delta, db.components_, matching, alpha=1.0)
    rec0 = recovery_cosine(da.components_, delta, db.components_, matching, alpha=0.0)
    np.testing.assert_allclose(rec1, 1.0, atol=1e-9)
    assert (rec0 < rec1).all()
    np.testing.assert_allclose(consistency(a, b, assign, delta), 1.0, atol=1e-9)


def test_shift_statistics_of_float16_features_in_blocks(monkeypatch):
    """Stores keep float16: shift vectors and consistency read them in float64 blocks (no
    float64 copy of all the features, no float16 arithmetic) and equal the float64
    computation; blocks smaller than a concept change nothing."""
    import vlmsteer.analysis.shift as shift

    a, b, labels, _ = _planted(n=300, d=16)
    a16, b16 = (a + 300).astype(np.float16), (b + 300).astype(np.float16)  # a large shared component
    a64, b64 = a16.astype(np.float64), b16.astype(np.float64)
    ref_delta = np.stack([(b64[labels == c] - a64[labels == c]).mean(0) for c in range(4)])
    monkeypatch.setattr(shift, "BLOCK_ROWS", 70)
    delta = shift_vectors(a16, b16, labels, 4)
    np.testing.assert_allclose(delta, ref_delta, rtol=1e-10, atol=1e-10)
    diffs = b64 - a64
    ref = [np.mean(diffs[labels == c] @ ref_delta[c] / np.linalg.norm(diffs[labels == c], axis=1)
                   / np.linalg.norm(ref_delta[c])) for c in range(4)]
    np.testing.assert_allclose(consistency(a16, b16, labels, delta), ref, rtol=1e-10)
    # numpy's own float16 mean would be rounded to float16
    assert np.abs((b16[labels == 0] - a16[labels == 0]).mean(0) - ref_delta[0]).max() > 1e-5


def test_hungarian_and_ot_agree_on_square_problems():
    rng = np.random.default_rng(1)
    for _ in range(5):
        u_a = rng.normal(size=(6, 8))
        u_b = u_a[rng.permutation(6)] + rng.normal(size=(6, 8)) * 0.3
        h = match_concepts(u_a, u_b, "hungarian")
        o = match_concepts(u_a, u_b, "ot")
        assert sorted(h.pairs) == sorted(o.pairs)


def test_ot_allows_unequal_k_and_errors():
    rng = np.random.default_rng(2)
    m = match_concepts(rng.normal(size=(3, 5)), rng.normal(size=(5, 5)), "ot")
    assert len(m.pairs) == 3
    with pytest.raises(VlmsteerError, match="unknown matching"):
        match_concepts(np.eye(2), np.eye(2), "greedy")


def test_correlations():
    x = np.arange(10.0)
    c = correlations(x, 2 * x + 1)
    assert c["pearson"] == pytest.approx(1.0) and c["spearman"] == pytest.approx(1.0) and c["pearson_p"] < 1e-6


def _store(path, ids, dim):
    from vlmsteer.store import FeatureStore, StoreWriter

    w = StoreWriter(path, {"hidden_size": dim, "layers": [0], "num_layers": 1})
    w.write_shard([{"id": i, "found": True} for i in ids], {0: np.ones((len(ids), dim), np.float32)})
    w.finish()
    return FeatureStore.open(path)


def test_alignment_errors(tmp_path):
    from vlmsteer.analysis.shift import aligned_features

    a = _store(tmp_path / "a", ["1", "2", "3"], 4)
    b = _store(tmp_path / "b", ["3", "2", "9"], 4)
    fa, fb, common = aligned_features(a, b, 0)
    assert common == ["2", "3"] and fa.shape == fb.shape == (2, 4)
    with pytest.raises(VlmsteerError, match="different hidden sizes"):
        aligned_features(a, _store(tmp_path / "c", ["1"], 5), 0)
    with pytest.raises(VlmsteerError, match="no common samples"):
        aligned_features(a, _store(tmp_path / "d", ["7"], 4), 0)


def test_shift_cli_end_to_end(tmp_path, capsys):
    import json

    from vlmsteer.cli import main
    from vlmsteer.store import StoreWriter

    a, b, labels, planted = _planted(k=3, n=20, d=8)
    for name, arr in (("a", a), ("b", b), ("c", a + 0.5 * (b - a))):
        w = StoreWriter(tmp_path / name, {"hidden_size": 8, "layers": [1], "num_layers": 2, "model_id": "x"})
        w.write_shard([{"id": str(i), "found": True} for i in range(len(arr))], {1: arr.astype(np.float32)})
        w.finish()
    assert main(["shift", "--original", str(tmp_path / "a"), "--finetuned", str(tmp_path / "b"), "-k", "3",
                 "--no-words", "--checkpoint", f"5={tmp_path / 'c'}", "--checkpoint", f"10={tmp_path / 'b'}",
                 "--ks", "2,3", "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "shift.json").read_text())
    assert result["main"]["mean_recovery_alpha1"] == pytest.approx(1.0)
    assert result["main"]["mean_recovery_alpha0"] < 1.0
    assert [r["step"] for r in result["evolution"]] == [5, 10] and len(result["ks"]) == 2
    concept = result["main"]["concepts"][0]
    assert len(concept["top_samples"]) == min(6, result["main"]["n_common"]) and concept["matched_top_samples"]
    assert "most activating samples, original model" in (tmp_path / "out" / "report.html").read_text()
    for name in ("report.html", "recovery_vs_alpha.png", "magnitude_consistency.png", "evolution.png"):
        assert (tmp_path / "out" / name).exists()
    capsys.readouterr()
    w = StoreWriter(tmp_path / "wide", {"hidden_size": 9, "layers": [1], "num_layers": 2})
    w.write_shard([{"id": "0", "found": True}], {1: np.ones((1, 9), np.float32)})
    w.finish()
    assert main(["shift", "--original", str(tmp_path / "a"), "--finetuned", str(tmp_path / "wide"), "-k", "3",
                 "--no-words", "--out", str(tmp_path / "o2")]) == 2
    assert "different hidden sizes" in capsys.readouterr().err
