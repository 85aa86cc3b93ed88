"""Concept dictionaries on planted structure; text grounding; T-Overlap; files and errors."""

from __future__ import annotations

import numpy as np
import pytest

from vlmsteer.concepts.methods import methods_of

from vlmsteer.concepts import (KMeansConcepts, NMFConcepts, PCAConcepts, SemiNMFConcepts, ground_text,
                               load_dictionary, make_dictionary, mean_pairwise_overlap, t_overlap)
from vlmsteer.concepts.grounding import TextGrounding, cosine_matrix
from vlmsteer.errors import VlmsteerError


def _blobs(k=5, n=60, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 10
    labels = np.repeat(np.arange(k), n)
    return centers[labels] + rng.normal(size=(k * n, d)), labels, centers


def test_kmeans_recovers_planted_clusters():
    z, labels, centers = _blobs()
    d = KMeansConcepts(k=5, seed=0).fit(z)
    sim = cosine_matrix(d.components_, centers)
    assert (sim.max(1) > 0.99).all() and len(set(sim.argmax(1))) == 5
    assign = d.assign(z)
    # each planted cluster maps to exactly one concept
    assert all(len(set(assign[labels == c])) == 1 for c in range(5))
    hard = KMeansConcepts(k=5, seed=0, hard=True).fit(z).encode(z)
    assert set(np.unique(hard)) == {0.0, 1.0} and (hard.sum(1) == 1).all()
    soft = d.encode(z)
    assert ((soft > 0) & (soft <= 1)).all() and (soft.argmax(1) == assign).all()


def test_pca_matches_numpy_svd():
    z, _, _ = _blobs(d=8)
    d = PCAConcepts(k=3).fit(z)
    _, _, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
    for i in range(3):
        assert abs(abs(float(d.components_[i] @ vt[i])) - 1) < 1e-8
    np.testing.assert_allclose(d.decode(d.encode(z)), d.mean_ + (z - d.mean_) @ vt[:3].T @ vt[:3], atol=1e-8)
    # many rows (float16, a shared offset): the chunked covariance gives the SVD's components and variances
    rng = np.random.default_rng(3)
    big = (rng.normal(size=(20000, 16)) * np.linspace(4, 0.5, 16) + 30).astype(np.float16)
    PCAConcepts.CHUNK_ROWS, chunk = 3000, PCAConcepts.CHUNK_ROWS
    try:
        d = PCAConcepts(k=4).fit(big)
    finally:
        PCAConcepts.CHUNK_ROWS = chunk
    b64 = big.astype(np.float64)
    _, s, vt = np.linalg.svd(b64 - b64.mean(0), full_matrices=False)
    for i in range(4):
        assert abs(abs(float(d.components_[i] @ vt[i])) - 1) < 1e-8
    np.testing.assert_allclose(d.explained_variance_, s[:4] ** 2 / (len(big) - 1), rtol=1e-8)
    np.testing.assert_allclose(d.mean_, b64.mean(0), rtol=1e-10)


def test_semi_nmf_codes_nonnegative_and_error_falls_with_k():
    z, _, _ = _blobs(k=4)
    errors = []
    for k in (1, 2, 4, 6):
        d = SemiNMFConcepts(k=k, seed=0).fit(z)
        codes = d.encode(z)
        assert (codes >= 0).all()
        errors.append(d.reconstruction_err_)
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert (d.components_ < 0).any()  # the dictionary itself is real-valued


def test_semi_nmf_in_row_chunks_equals_the_whole_matrix_algorithm():
    """Fit and encode read float16 features in row chunks; they give what the textbook
    updates on the whole float64 matrix give (written out here with numpy)."""
    rng = np.random.default_rng(5)
    z = (rng.normal(size=(6, 24))[rng.integers(6, size=900)] + rng.normal(size=(900, 24)) * 0.3).astype(np.float16)
    z64 = z.astype(np.float64)
    d = SemiNMFConcepts(k=5, seed=0)
    d.CHUNK_ROWS = 128
    d.fit(z)

    v = KMeansConcepts(5, 0, hard=True).fit(z64).encode(z64) + 0.2
    prev = np.inf
    for _ in range(200):
        u = np.linalg.lstsq(v, z64, rcond=None)[0]
        v = SemiNMFConcepts._update_codes(z64 @ u.T, u, v, 1)
        err = np.linalg.norm(z64 - v @ u)
        if abs(prev - err) <= 1e-6 * max(1.0, err):
            break
        prev = err
    u = np.linalg.lstsq(v, z64, rcond=None)[0]
    np.testing.assert_allclose(d.components_, u, atol=1e-6 * np.abs(u).max())
    assert abs(d.reconstruction_err_ / np.linalg.norm(z64 - v @ u) - 1) < 1e-8
    np.testing.assert_allclose(d.encode(z[:50]), SemiNMFConcepts._update_codes(
        z64[:50] @ u.T, u, np.full((50, 5), 0.2), 500, tol=1e-9), atol=1e-6)


def test_nmf_needs_nonnegative_features():
    z = np.abs(_blobs()[0])
    codes = NMFConcepts(k=3).fit(z).encode(z)
    assert (codes >= 0).all()
    with pytest.raises(VlmsteerError, match="non-negative"):
        NMFConcepts(k=3).fit(_blobs()[0])


@pytest.mark.parametrize("method", list(methods_of("clustering")))
def test_deterministic_and_saved(method, tmp_path):
    """The contract every registered method keeps: seeded fits agree, save/load round-trips."""
    z, _, _ = _blobs()
    z = np.abs(z) if method == "nmf" else z
    a = make_dictionary(method, 4, seed=3).fit(z)
    b = make_dictionary(method, 4, seed=3).fit(z)
    assert np.array_equal(a.components_, b.components_)
    a.save(tmp_path / "d.safetensors", layer=2)
    c, meta = load_dictionary(tmp_path / "d.safetensors")
    assert meta == {"layer": 2} and np.array_equal(c.components_, a.components_)
    np.testing.assert_allclose(c.encode(z[:10]), a.encode(z[:10]))


def test_bad_features():
    with pytest.raises(VlmsteerError, match="fewer than"):
        KMeansConcepts(k=10).fit(np.zeros((5, 3)))
    z = np.ones((20, 3))
    z[4, 1] = np.nan
    with pytest.raises(VlmsteerError, match="NaN"):
        KMeansConcepts(k=2).fit(z)
    with pytest.raises(VlmsteerError, match="unknown concept method"):
        make_dictionary("ica", 3)


def test_text_grounding_finds_the_planted_word(tiny_vlm):
    vlm = tiny_vlm("llava")
    tok = vlm.tokenizer
    w = vlm.unembed.weight.detach()
    gain = vlm.norm.weight.detach()
    comps = []
    for word in ("circle", "yellow", "beach"):
        row = w[tok.convert_tokens_to_ids(word)]
        comps.append((row / gain).numpy())  # invert the norm's gain so norm(u) points along the row
    groundings = ground_text(vlm, np.stack(comps), top_n=5)
    assert [g.words[0] for g in groundings] == ["circle", "yellow", "beach"]
    for g in groundings:
        assert len(g.words) == 5 and g.logits == sorted(g.logits, reverse=True)
        assert not {"the", "a", "?", ",", "<image>"} & set(g.words)


def test_t_overlap():
    assert t_overlap(["red", "blue"], ["blue", "green", "x"]) == 50.0
    assert t_overlap([], ["a"]) == 0.0
    gs = [TextGrounding(["a", "b"], [1, 0]), TextGrounding(["b", "c"], [1, 0])]
    assert mean_pairwise_overlap(gs) == 50.0


def test_chunked_torch_kmeans_equals_sklearn_from_the_same_init():
    """The bounded-memory Lloyd (float16 input, row chunks) reaches scikit-learn's inertia
    and labels from the same initial centres; assignment chunked at any size is exact."""
    from sklearn.cluster import KMeans

    from vlmsteer.concepts.kmeans import kmeans_plus_plus, lloyd, nearest

    rng = np.random.default_rng(4)
    centres = rng.normal(size=(12, 64)) * 3
    z = (centres[rng.integers(12, size=3000)] + rng.normal(size=(3000, 64))).astype(np.float16)
    init = kmeans_plus_plus(z, 8, seed=1)
    ours = lloyd(z, init, chunk=700)
    ref = KMeans(8, init=init, n_init=1, algorithm="lloyd").fit(z.astype(np.float32))
    assert abs(ours.inertia / ref.inertia_ - 1) < 1e-4
    assert (ours.labels == ref.labels_).mean() > 0.999
    brute = ((z.astype(np.float64)[:, None] - ours.centers[None]) ** 2).sum(-1)
    labels, dist = nearest(z, ours.centers, chunk=333)
    assert (labels == brute.argmin(1)).all() and np.allclose(dist, brute.min(1), rtol=1e-3)


def test_kmeans_labels_exact_despite_a_large_shared_component():
    """Hidden states share a large component; measured naively in float32 (|x|² − 2 x·c + |c|²
    at |x|² ≫ distances), labels near cluster borders come out wrong and the inertia is off by
    ~1e-4. Lloyd (with its bounds) and ``nearest`` must give the float64 argmin of every row
    that is not a near-tie, and the inertia of their labels; the bounded passes must have
    skipped rows and still agree with plain Lloyd iterations."""
    from vlmsteer.concepts import kmeans

    rng = np.random.default_rng(7)
    centres = rng.normal(size=(30, 128))
    z = (centres[rng.integers(30, size=4000)] + rng.normal(size=(4000, 128)) + 50).astype(np.float16)
    z64 = z.astype(np.float64)
    init = kmeans.kmeans_plus_plus(z, 40, seed=1)
    measured = []
    bounded = kmeans._LloydState.bounded_pass

    def counting(self):
        before = self.upper.clone()
        out = bounded(self)
        measured.append(int((self.upper != before).sum()))
        return out

    kmeans._LloydState.bounded_pass = counting
    try:
        for max_iter in (3, 300):
            result = kmeans.lloyd(z, init, chunk=500, max_iter=max_iter, inertia_tol=0)
            d = ((z64[:, None] - result.centers[None]) ** 2).sum(-1)
            two = np.sort(d, 1)[:, :2]
            clear = two[:, 1] - two[:, 0] > 1e-6 * two[:, 0]
            assert (result.labels == d.argmin(1))[clear].all()
            assert abs(result.inertia / d[np.arange(len(z)), result.labels].sum() - 1) < 1e-6
            labels, dist = kmeans.nearest(z, result.centers, chunk=333)
            assert (labels == d.argmin(1))[clear].all()
            np.testing.assert_allclose(dist, d.min(1), rtol=1e-4)
    finally:
        kmeans._LloydState.bounded_pass = bounded
    assert min(measured[-3:]) < len(z) // 2  # settled rows were skipped
    # from the same centres, the float64 Lloyd iterations (numpy) reach the same partition
    c = init.copy()
    for _ in range(result.n_iter):
        lab = ((z64[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        c = np.stack([z64[lab == j].mean(0) if (lab == j).any() else c[j] for j in range(len(c))])
    assert (lab == result.labels).mean() > 0.999


def test_kmeans_sample_start_reaches_a_lloyd_fixed_point_on_all_rows():
    """With a sample start, the returned centres are the means of their clusters over all rows
    (a fixed point of Lloyd on the whole data, not on the sample), and the inertia is
    scikit-learn's from the same k-means++ centres, within 0.5 %."""
    from sklearn.cluster import KMeans

    from vlmsteer.concepts.kmeans import kmeans_plus_plus, lloyd

    rng = np.random.default_rng(11)
    centres = rng.normal(size=(20, 32)) * 2
    z = (centres[rng.integers(20, size=20000)] + rng.normal(size=(20000, 32))).astype(np.float16)
    init = kmeans_plus_plus(z, 16, seed=0)
    result = lloyd(z, init, sample=2000, tol=0, inertia_tol=0)
    z64 = z.astype(np.float64)
    for j in range(16):
        # (a mean over the sample alone would be ~0.1 off; float32 partial sums drift ~1e-4)
        np.testing.assert_allclose(result.centers[j], z64[result.labels == j].mean(0), atol=1e-3)
    ref = KMeans(16, init=init, n_init=1, algorithm="lloyd").fit(z.astype(np.float32))
    assert result.inertia <= ref.inertia_ * 1.005
    assert lloyd(z, init, sample=0).n_iter > result.n_iter  # the sample took the long first moves


def test_kmeans_backends_agree_and_auto_switches_on_size():
    z, _, _ = _blobs()
    sk = KMeansConcepts(k=4, seed=0, backend="sklearn").fit(z)
    th = KMeansConcepts(k=4, seed=0, backend="torch", n_init=3).fit(z)
    assert abs(th.inertia_ / sk.inertia_ - 1) < 1e-3
    np.testing.assert_allclose(np.sort(sk.components_, axis=0), np.sort(th.components_, axis=0), atol=1e-3)
    assert (th.assign(z) == th.labels_).all()
    np.testing.assert_allclose(th.encode(z[:5]), 1 / (1 + np.sqrt(((z[:5, None] - th.components_[None]) ** 2)
                                                                 .sum(-1))), rtol=1e-6)
    small, big = np.zeros((10, 4)), np.zeros((2 ** 20, 64), dtype=np.float16)
    assert KMeansConcepts().chosen_backend(small) == "sklearn" and KMeansConcepts().chosen_backend(big) == "torch"
    with pytest.raises(VlmsteerError, match="unknown K-Means backend"):
        KMeansConcepts(backend="annoy")


def test_faiss_backend_matches_torch_inertia_and_names_its_extra(monkeypatch):
    """The optional faiss backend starts from the same k-means++ centres, labels every row
    exactly for its centres, and reaches the torch backend's inertia; without faiss it is a
    one-line error naming the extra."""
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    z = (rng.normal(size=(10, 32))[rng.integers(10, size=6000)] * 3 + rng.normal(size=(6000, 32))).astype(np.float16)
    fa = KMeansConcepts(k=8, seed=0, backend="faiss", n_init=1).fit(z)
    th = KMeansConcepts(k=8, seed=0, backend="torch", n_init=1).fit(z)
    assert abs(fa.inertia_ / th.inertia_ - 1) < 5e-3
    z64 = z.astype(np.float64)
    assert (fa.labels_ == ((z64[:, None] - fa.components_[None]) ** 2).sum(-1).argmin(1)).all()
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(VlmsteerError, match=r"vlmsteer\[faiss\]"):
        KMeansConcepts(k=8, backend="faiss").fit(z)


def test_rows_of_a_memory_mapped_file_are_read_without_mapping_the_file(tmp_path):
    """take_rows equals plain indexing (runs, any order, repeats, the last row) and, on Linux,
    reading 8 % of a file's rows at random keeps the file's pages out of this process (read
    through the map, the kernel's fault-around maps neighbouring pages with every row), alone
    and through a store's selection of rows."""
    import json
    import os
    import re

    from vlmsteer.mapped import Rows, release_pages
    from vlmsteer.mapped import take_rows
    from vlmsteer.store_io import import_features

    rng = np.random.default_rng(0)
    path = tmp_path / "z.npy"
    np.save(path, rng.standard_normal((20000, 1024)).astype(np.float16))
    z = np.load(path, mmap_mode="r")
    for rows in (np.array([5, 6, 7, 100, 19999]), np.array([9, 3, 3, 4, 5]), rng.choice(20000, 300)):
        np.testing.assert_array_equal(take_rows(z, rows), z[rows])
    np.testing.assert_array_equal(Rows(z, [1, 7, 8])[1:], z[[7, 8]])
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"id": f"r{i}"}) + "\n" for i in range(20000)))
    store = import_features(path, tmp_path / "r.jsonl", 0, tmp_path / "store")
    picked = rng.choice(20000, 300)
    np.testing.assert_array_equal(store.features(0, picked, dtype=None), z[picked])
    if not os.path.exists("/proc/self/clear_refs"):
        return

    def kib(field: str) -> int:
        return int(re.search(field + r":\s+(\d+)", open("/proc/self/status").read()).group(1))

    release_pages(z)
    for read in (lambda rows: take_rows(z, rows), lambda rows: store.features(0, rows, dtype=None)):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak resident size starts again from the present one
        before = kib("VmRSS")
        read(np.sort(rng.choice(20000, 1600, replace=False)))
        assert kib("VmHWM") - before < 8 * 1024  # the rows alone are 3.2 MB of the 41 MB file
