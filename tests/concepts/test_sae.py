"""Sparse autoencoders as concept dictionaries: training, checkpoints, SAELens's format."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from vlmsteer.concepts import load_dictionary, make_dictionary
from vlmsteer.concepts.methods import methods_of
from vlmsteer.concepts.sae_methods import TopKSAE
from vlmsteer.concepts.sae_training import autograd_loss, written_step
from vlmsteer.concepts.saelens import load_saelens, save_saelens
from vlmsteer.errors import VlmsteerError

TRAINED = [m for m in methods_of("sae") if m != "relu_sae"]


def _sparse_data(n=4000, dim=32, atoms=64, active=4, seed=0):
    """Rows that are sums of ``active`` of ``atoms`` unit directions (positive weights) + offset."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(atoms, dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    codes = np.zeros((n, atoms))
    for i in range(n):
        codes[i, rng.choice(atoms, active, replace=False)] = rng.uniform(1, 3, active)
    return (codes @ u + 2.0 + 0.01 * rng.normal(size=(n, dim))).astype(np.float16), u


def _fvu(d, z):
    x = np.asarray(z, dtype=np.float64)
    r = d.decode(d.encode(x))
    return float(((x - r) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_topk_sae_learns_a_sparse_dictionary_deterministically():
    z, atoms = _sparse_data()
    a = make_dictionary("topk_sae", 128, seed=1, l0=4, epochs=60, batch_size=256).fit(z)
    b = make_dictionary("topk_sae", 128, seed=1, l0=4, epochs=60, batch_size=256).fit(z)
    assert np.array_equal(a.components_, b.components_) and np.array_equal(a.W_enc_, b.W_enc_)
    assert _fvu(a, z) < 0.1
    codes = a.encode(z[:500])
    assert ((codes > 0).sum(1) <= 4).all() and (codes >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(a.components_, axis=1), 1, atol=1e-5)
    # most true directions have a decoder row pointing along them
    best = (atoms @ a.components_.T).max(1)
    assert (best > 0.9).mean() > 0.8, np.sort(best)


@pytest.mark.parametrize("method", TRAINED)
def test_every_sae_reaches_its_l0_and_explains_most_variance(method):
    z, _ = _sparse_data(n=2000)
    d = make_dictionary(method, 128, seed=0, l0=4, epochs=40, batch_size=256).fit(z)
    l0 = float((d.encode(z) > 0).sum(1).mean())
    assert 2 <= l0 <= 6, l0
    assert _fvu(d, z) < 0.35
    assert d.history_ and {"loss", "fvu", "l0", "dead"} <= set(d.history_[-1])


def test_checkpoint_resumes_to_the_uninterrupted_result(tmp_path):
    z, _ = _sparse_data(n=1500)
    options = dict(seed=2, l0=4, epochs=4, batch_size=128, chunk_rows=512)
    whole = make_dictionary("batchtopk_sae", 64, **options).fit(z)

    class Stop(Exception):
        pass

    def stop_at(stats):
        if stats.step == 25:
            raise Stop

    ckpt = tmp_path / "ckpt.safetensors"
    with pytest.raises(Stop):
        make_dictionary("batchtopk_sae", 64, checkpoint=ckpt, checkpoint_every=10, **options).fit(z, callback=stop_at)
    assert ckpt.is_file()
    resumed = make_dictionary("batchtopk_sae", 64, checkpoint=ckpt, checkpoint_every=10, **options)
    steps = []
    resumed.fit(z, callback=lambda s: steps.append(s.step))
    assert steps[0] == 20  # from the last checkpoint, not from the start
    assert not ckpt.exists()
    for name, value in whole.state().items():
        np.testing.assert_allclose(resumed.state()[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    z, _ = _sparse_data(n=600)
    ckpt = tmp_path / "ckpt.safetensors"
    other = make_dictionary("topk_sae", 32, seed=0, l0=3, epochs=2, batch_size=100, checkpoint=ckpt,
                            checkpoint_every=3)

    def stop(stats):
        if stats.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        other.fit(z, callback=stop)
    steps = []
    make_dictionary("topk_sae", 32, seed=0, l0=2, epochs=2, batch_size=100, checkpoint=ckpt).fit(
        z, callback=lambda s: steps.append(s.step))
    assert steps[0] == 0


def test_sae_settings_are_checked():
    with pytest.raises(VlmsteerError, match="l0"):
        TopKSAE(k=8, l0=9)
    with pytest.raises(VlmsteerError, match="dtype"):
        TopKSAE(k=8, l0=2, dtype="float8")
    for lr in (float("inf"), 1e30, float("nan"), 0.0, -1.0):
        with pytest.raises(VlmsteerError, match="learning rate must be a number in"):
            TopKSAE(k=8, l0=2, lr=lr)


@pytest.mark.parametrize("broken", ["loss", "weight"])
def test_training_stops_at_the_first_non_finite_loss_or_weight(broken, tmp_path, monkeypatch):
    """Issue 37: a loss or weight that turns non-finite stops training in one line naming the
    step and the likely cause; the checkpoint left behind holds finite weights only, and a
    checkpoint holding a NaN (an older or damaged file) is started over, never trained on."""
    import vlmsteer.concepts.sae_training as training

    z, _ = _sparse_data(n=600)
    ckpt = tmp_path / "ckpt.safetensors"
    real = training.written_step

    def step(sae, x, t, train, *args):
        stats, grads = real(sae, x, t, train, *args)
        if stats.step == 7:
            if broken == "loss":
                stats.loss = float("nan")
            else:
                grads["b_dec"] = torch.full_like(grads["b_dec"], float("inf"))
        return stats, grads

    monkeypatch.setattr(training, "written_step", step)
    sae = make_dictionary("topk_sae", 32, seed=0, l0=3, epochs=3, batch_size=100, checkpoint=ckpt, checkpoint_every=3)
    at = 8 if broken == "loss" else 9  # a weight made non-finite at step 8 shows in step 9's loss
    with pytest.raises(VlmsteerError, match=rf"topk_sae training stopped at step {at} of 18: .*learning rate "
                                            r"\(.*\) is likely too large.*last checkpoint .* finite weights only"):
        sae.fit(z)
    from safetensors.torch import load_file

    saved = load_file(str(ckpt))
    assert all(bool(torch.isfinite(v).all()) for v in saved.values() if v.is_floating_point())
    # a checkpoint with a NaN weight: a warning, and training from step 0
    monkeypatch.setattr(training, "written_step", real)
    saved["param.b_dec"][0] = float("nan")
    from safetensors import safe_open
    from safetensors.torch import save_file as save_torch

    with safe_open(str(ckpt), framework="pt") as f:
        meta = f.metadata()
    save_torch(saved, str(ckpt), metadata=meta)
    steps = []
    make_dictionary("topk_sae", 32, seed=0, l0=3, epochs=3, batch_size=100, checkpoint=ckpt,
                    checkpoint_every=3).fit(z, callback=lambda s: steps.append(s.step))
    assert steps[0] == 0


def _saelens_folder(path, arch, d_in=12, d_sae=20, apply_b_dec=True, seed=0, **fields):
    """An SAELens folder written without vlmsteer: weights from numpy, cfg as SAELens 6 writes it
    (``fields`` added to it)."""
    rng = np.random.default_rng(seed)
    w = {"W_enc": rng.normal(size=(d_in, d_sae)).astype(np.float32),
         "b_enc": rng.normal(size=d_sae).astype(np.float32) * 0.1,
         "W_dec": rng.normal(size=(d_sae, d_in)).astype(np.float32),
         "b_dec": rng.normal(size=d_in).astype(np.float32)}
    if arch == "jumprelu":
        w["threshold"] = rng.uniform(0.0, 1.0, size=d_sae).astype(np.float32)
    path.mkdir()
    save_file(w, str(path / "sae_weights.safetensors"))
    cfg = {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": apply_b_dec, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"model_name": "shapes-llava", "hook_name": "blocks.2.hook_resid_post", "hook_layer": 2,
                        "sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12"}}
    if arch == "topk":
        cfg["k"] = 5
    cfg.update(fields)
    (path / "cfg.json").write_text(json.dumps(cfg))
    return w, cfg


def _formula(w, cfg, x):
    """SAELens's encode (saes/*_sae.py), in numpy."""
    pre = (x - w["b_dec"] * cfg["apply_b_dec_to_input"]) @ w["W_enc"] + w["b_enc"]
    if cfg.get("rescale_acts_by_decoder_norm") and cfg["architecture"] == "topk":
        pre = pre * np.linalg.norm(w["W_dec"], axis=1)
    if cfg["architecture"] == "standard":
        return np.maximum(pre, 0)
    if cfg["architecture"] == "jumprelu":
        return np.maximum(pre, 0) * (pre > w["threshold"])
    out = np.zeros_like(pre)
    top = np.argsort(-pre, axis=1)[:, :cfg["k"]]
    rows = np.arange(len(pre))[:, None]
    out[rows, top] = np.maximum(pre[rows, top], 0)
    return out


def _decode_formula(w, cfg, codes):
    """SAELens's decode: TopK with rescale_acts_by_decoder_norm divides the codes by the norms."""
    if cfg.get("rescale_acts_by_decoder_norm") and cfg["architecture"] == "topk":
        codes = codes / np.linalg.norm(w["W_dec"], axis=1)
    return codes @ w["W_dec"] + w["b_dec"]


@pytest.mark.parametrize("rescale", [False, True])
def test_saelens_topk_rescaled_by_decoder_norm_and_its_default_k_read_exactly(tmp_path, rescale):
    """Issue 37: a TopK folder saved with rescale_acts_by_decoder_norm (its decoder rows not of
    unit norm) encodes and decodes as SAELens does; a TopK config without k takes SAELens's
    default of 100."""
    w, cfg = _saelens_folder(tmp_path / "sae", "topk", d_sae=160, rescale_acts_by_decoder_norm=rescale)
    w["W_dec"] *= np.random.default_rng(1).uniform(0.1, 5.0, size=(160, 1)).astype(np.float32)
    save_file(w, str(tmp_path / "sae" / "sae_weights.safetensors"))
    x = np.random.default_rng(5).normal(size=(60, 12)) * 2
    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    sae, _ = load_dictionary(tmp_path / "sae")
    codes, recon = _formula(w64, cfg, x), _decode_formula(w64, cfg, _formula(w64, cfg, x))
    # to 1e-5 of each result's scale (float32 weights: sums of terms near 100 cancel)
    np.testing.assert_allclose(sae.encode(x), codes, atol=1e-5 * np.abs(codes).max())
    np.testing.assert_allclose(sae.decode(codes), recon, atol=1e-5 * np.abs(recon).max())
    np.testing.assert_allclose(sae.decode(sae.encode(x)), recon, atol=1e-5 * np.abs(recon).max())
    del cfg["k"]
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps(cfg))
    sae, _ = load_dictionary(tmp_path / "sae")
    assert sae.l0 == 100
    codes = _formula(w64, {**cfg, "k": 100}, x)
    np.testing.assert_allclose(sae.encode(x), codes, atol=1e-5 * np.abs(codes).max())


def test_a_pre_6_saelens_config_is_read_as_saelens_reads_it(tmp_path):
    """Before SAELens 6: hook_point, activation_fn 'topk' with activation_fn_kwargs.k, metadata at
    the top level; read with SAELens 6's renames and defaults."""
    w, _ = _saelens_folder(tmp_path / "old", "topk")
    old = {"d_in": 12, "d_sae": 20, "dtype": "float32", "device": "cpu", "activation_fn_str": "topk",
           "activation_fn_kwargs": {"k": 4}, "hook_point": "blocks.3.hook_resid_post", "hook_layer": 3,
           "model_name": "gpt2", "normalize_activations": False, "apply_b_dec_to_input": False}
    (tmp_path / "old" / "cfg.json").write_text(json.dumps(old))
    sae, meta = load_dictionary(tmp_path / "old")
    assert meta == {"layer": 3, "model_id": "gpt2", "hook_name": "blocks.3.hook_resid_post",
                    "source": str(tmp_path / "old")}
    x = np.random.default_rng(2).normal(size=(40, 12))
    expected = _formula({k: v.astype(np.float64) for k, v in w.items()},
                        {"architecture": "topk", "k": 4, "apply_b_dec_to_input": False}, x)
    np.testing.assert_allclose(sae.encode(x), expected, atol=1e-5)


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_an_saelens_folder_loads_and_encodes_as_its_formula(tmp_path, arch, apply_b_dec):
    w, cfg = _saelens_folder(tmp_path / "sae", arch, apply_b_dec=apply_b_dec)
    x = np.random.default_rng(5).normal(size=(50, 12)).astype(np.float32) * 2
    sae, meta = load_dictionary(tmp_path / "sae")  # the loader every command uses
    assert meta["layer"] == 2 and meta["model_id"] == "shapes-llava"
    expected = _formula({k: v.astype(np.float64) for k, v in w.items()}, cfg, x.astype(np.float64))
    np.testing.assert_allclose(sae.encode(x), expected, atol=1e-5)
    np.testing.assert_allclose(sae.decode(expected), expected @ w["W_dec"] + w["b_dec"], atol=1e-5)
    np.testing.assert_allclose(sae.components_, w["W_dec"])


@pytest.mark.parametrize("method", TRAINED)
def test_our_saes_saved_in_saelens_format_load_back_equal(tmp_path, method):
    z, _ = _sparse_data(n=500)
    d = make_dictionary(method, 32, seed=0, l0=3, epochs=2, batch_size=100).fit(z)
    save_saelens(d, tmp_path / "out", layer=3, model_id="shapes-llava")
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert cfg["architecture"] in ("topk", "jumprelu") and cfg["d_in"] == 32
    # SAELens 6's layout: it reads version-6 metadata as is (hook_name and model_name kept)
    assert cfg["metadata"]["sae_lens_version"] == "6.0.0" and cfg["metadata"]["hook_layer"] == 3
    assert cfg["metadata"]["hook_name"] == "model.layers.3" and cfg["metadata"]["model_name"] == "shapes-llava"
    back, meta = load_dictionary(tmp_path / "out")
    assert back.method == method and meta["layer"] == 3
    x = np.asarray(z[:100], dtype=np.float32)
    np.testing.assert_allclose(back.encode(x), d.encode(x), atol=1e-6)
    for name, value in d.state().items():
        np.testing.assert_array_equal(back.state()[name], value)
    # and the same folder, read as a plain SAELens SAE (our method record removed): the same function
    cfg.pop("vlmsteer")
    (tmp_path / "out" / "cfg.json").write_text(json.dumps(cfg))
    plain, _ = load_saelens(tmp_path / "out")
    np.testing.assert_allclose(plain.encode(x), d.encode(x), atol=1e-5)


def test_bad_saelens_folders_are_one_line_errors(tmp_path):
    _saelens_folder(tmp_path / "gated", "jumprelu")
    cfg = json.loads((tmp_path / "gated" / "cfg.json").read_text())
    (tmp_path / "gated" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(VlmsteerError, match="architecture 'gated' is not supported"):
        load_dictionary(tmp_path / "gated")
    _saelens_folder(tmp_path / "nothr", "standard")
    (tmp_path / "nothr" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "jumprelu", "d_sae": 20}))
    with pytest.raises(VlmsteerError, match="missing threshold"):
        load_dictionary(tmp_path / "nothr")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "cfg.json").write_text("{")
    with pytest.raises(VlmsteerError, match="unreadable SAELens config"):
        load_dictionary(tmp_path / "broken")
    _saelens_folder(tmp_path / "scaled", "topk")
    c = json.loads((tmp_path / "scaled" / "cfg.json").read_text())
    (tmp_path / "scaled" / "cfg.json").write_text(json.dumps({**c, "normalize_activations": "layer_norm"}))
    with pytest.raises(VlmsteerError, match="normalize_activations 'layer_norm'"):
        load_dictionary(tmp_path / "scaled")
    # every other field that changes encode or decode, named; weights that are not finite floats
    cases = [({"reshape_activations": "hook_z"}, "reshape_activations 'hook_z' is not supported"),
             ({"normalize_activations": "expected_average_only_in"}, "normalize_activations"),
             ({"metadata": {}, "activation_fn_str": "tanh-relu", "architecture": "standard"},
              "activation_fn 'tanh-relu' is not supported"),
             ({"metadata": {}, "finetuning_scaling_factor": True}, "finetuning_scaling_factor"),
             ({"k": 0}, "k must be a positive integer")]
    for i, (fields, needle) in enumerate(cases):
        _saelens_folder(tmp_path / f"case{i}", "topk", **fields)
        with pytest.raises(VlmsteerError, match=needle):
            load_dictionary(tmp_path / f"case{i}")
    cfg = json.loads((tmp_path / "case0" / "cfg.json").read_text())
    (tmp_path / "case0" / "cfg.json").write_text(json.dumps({**cfg, "reshape_activations": "none", "d_in": 13}))
    with pytest.raises(VlmsteerError, match="says d_in 13 but the weights have 12"):
        load_dictionary(tmp_path / "case0")
    w, _ = _saelens_folder(tmp_path / "ints", "topk")
    save_file({**w, "W_dec": w["W_dec"].astype(np.int32)}, str(tmp_path / "ints" / "sae_weights.safetensors"))
    with pytest.raises(VlmsteerError, match="W_dec has dtype int32; weights must be floating point"):
        load_dictionary(tmp_path / "ints")
    w["b_enc"][3] = np.nan
    save_file(w, str(tmp_path / "ints" / "sae_weights.safetensors"))
    with pytest.raises(VlmsteerError, match=r"b_enc holds 1 non-finite value \(NaN or infinite\) of 20"):
        load_dictionary(tmp_path / "ints")
    os.mkfifo(tmp_path / "fifo")
    _saelens_folder(tmp_path / "fifo-weights", "topk")
    (tmp_path / "fifo-weights" / "sae_weights.safetensors").unlink()
    os.mkfifo(tmp_path / "fifo-weights" / "sae_weights.safetensors")
    with pytest.raises(VlmsteerError, match="not a regular file"):  # and never blocks on open()
        load_dictionary(tmp_path / "fifo-weights")


def test_a_saved_dictionary_with_a_non_finite_weight_is_refused(tmp_path):
    z, _ = _sparse_data(n=300)
    d = make_dictionary("topk_sae", 16, seed=0, l0=2, epochs=1, batch_size=100).fit(z)
    path = d.save(tmp_path / "d.safetensors", layer=1)
    load_dictionary(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    state["W_enc"][0, 0] = np.inf
    save_file(state, str(path), metadata=meta)
    with pytest.raises(VlmsteerError, match="W_enc holds 1 non-finite value"):
        load_dictionary(path)


def test_sae_encoding_is_chunked_and_torch_equal():
    z, _ = _sparse_data(n=300)
    d = make_dictionary("topk_sae", 32, seed=0, l0=3, epochs=1, batch_size=100).fit(z)
    x = np.asarray(z, dtype=np.float32)
    np.testing.assert_allclose(d.encode(x), d.encode_tensor(torch.from_numpy(x)).numpy())
    assert (d.assign(x) == d.encode(x).argmax(1)).all()


@pytest.mark.parametrize("rows_in_order, nnz", [(True, 40), (False, 40), (False, 20000)])
@pytest.mark.parametrize("kind", ["sparse", "dense t_mm", "dense"])
def test_products_over_positions_equal_the_dense_matrix(rows_in_order, nnz, kind, monkeypatch):
    """Training's products over positions (bag sums, a sampled product, a shared column sort;
    ``Sᵀ·M`` by sort or through the dense matrix) equal the dense matrix's, duplicates and all.
    20,000 positions take the padded radix sort."""
    from vlmsteer.concepts import sparse_ops
    from vlmsteer.concepts.sparse_ops import SparsePattern

    g = torch.Generator().manual_seed(0)
    n_rows, n_cols, dim = (9, 13, 6) if nnz < 100 else (64, 1000, 6)
    rows, cols = torch.randint(n_rows, (nnz,), generator=g), torch.randint(n_cols, (nnz,), generator=g)
    if rows_in_order:
        rows = rows.sort().values
    values = torch.randn(nnz, generator=g, dtype=torch.float64)
    matrix = torch.zeros(n_rows, n_cols, dtype=torch.float64).index_put((rows, cols), values, accumulate=True)
    inf = float("inf")
    levels = {"sparse": (inf, inf), "dense t_mm": (0.0, inf), "dense": (0.0, 0.0)}[kind]
    for name, level in zip(("DENSE_T_MM", "DENSE_ALL"), levels):
        monkeypatch.setattr(sparse_ops, name, level)
    pattern = SparsePattern(rows, cols, n_rows, n_cols)
    m, m_t = (torch.randn(n, dim, generator=g, dtype=torch.float64) for n in (n_cols, n_rows))
    a = torch.randn(n_rows, dim, generator=g, dtype=torch.float64)
    assert torch.allclose(pattern.mm(values, m), matrix @ m)
    assert torch.allclose(pattern.t_mm(values, m_t), matrix.T @ m_t)
    assert torch.allclose(pattern.dots(a, m), (a @ m.T)[rows, cols])
    other = SparsePattern(rows, cols, n_rows, n_cols).with_rows(rows + n_rows, 2 * n_rows)
    assert torch.allclose(other.t_mm(values, torch.cat([m_t, m_t])), matrix.T @ m_t)


def _reference_loss(sae, t, x, train, dead_rows, aux_k):
    """The step's loss written densely, for autograd (the trainer's path for architectures
    without written-out gradients), on a copy of the training state."""
    return autograd_loss(sae, t, x, {**train, "since_fired": train["since_fired"].clone()}, dead_rows, aux_k)[0]


@pytest.mark.parametrize("method", TRAINED)
@pytest.mark.parametrize("kind, aux_k", [("sparse", 2), ("sparse", 64), ("dense", 2), ("dense", 64)])
def test_training_gradients_equal_autograd_of_the_dense_loss(method, kind, aux_k, monkeypatch):
    """The written-out gradients of a step (products over the selected positions, AuxK on the
    dead columns, Matryoshka's nested losses, JumpReLU's straight-through threshold) equal
    autograd's of the same loss written densely, with either kind of products, AuxK on some or
    all of the dead latents."""
    from vlmsteer.concepts import sparse_ops

    for name in ("DENSE_T_MM", "DENSE_ALL"):
        monkeypatch.setattr(sparse_ops, name, 0.0 if kind == "dense" else float("inf"))
    g = torch.Generator().manual_seed(3)
    b, dim, latents = 8, 10, 48
    sae = make_dictionary(method, latents, seed=0, l0=4, aux_k=aux_k)
    x = torch.randn(b, dim, generator=g) + 0.5
    t = {"W_enc": torch.randn(latents, dim, generator=g) * 0.5, "b_enc": torch.randn(latents, generator=g) * 0.1,
         "components_": torch.nn.functional.normalize(torch.randn(latents, dim, generator=g), dim=1),
         "b_dec": torch.randn(dim, generator=g) * 0.1}
    if method == "jumprelu_sae":
        t["log_threshold"] = (torch.rand(latents, generator=g) + 1.5).log()
    train = {"since_fired": torch.where(torch.arange(latents) % 3 > 0, 1000, 0), "threshold": None}
    leaves = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    want = torch.autograd.grad(_reference_loss(sae, leaves, x, train, 100, aux_k), list(leaves.values()))
    stats, got = written_step(sae, x, t, {**train, "since_fired": train["since_fired"].clone()}, 100, aux_k, 0)
    assert stats.dead * latents >= 3
    for name, w in zip(leaves, want):
        assert torch.allclose(got[name], w, rtol=1e-4, atol=1e-6), name
    assert abs(stats.loss - float(_reference_loss(sae, leaves, x, train, 100, aux_k).detach())) < 1e-5


def test_latents_whose_weights_cannot_fit_are_refused_before_allocating(monkeypatch):
    import vlmsteer.concepts.sae_training as training

    z, _ = _sparse_data(n=300)
    monkeypatch.setattr(training, "available_bytes", lambda device: 10 * 2**20)  # 10 MiB free
    with pytest.raises(VlmsteerError, match=r"20000 latents of 32 dimensions need about 20 MiB for the weights and "
                                            r"their optimizer state; cpu has 10 MiB available: use fewer latents"):
        make_dictionary("topk_sae", 20000, seed=0, l0=3, epochs=1, batch_size=100).fit(z)  # 19.5 MiB
    make_dictionary("topk_sae", 64, seed=0, l0=3, epochs=1, batch_size=100).fit(z)  # 64 × 32: 64 KiB
    assert training.available_bytes(torch.device("cpu")) == 10 * 2**20


def test_a_full_disk_while_saving_a_dictionary_or_checkpoint_is_one_line(tmp_path, monkeypatch):
    """Issue 37: safetensors reports a full disk as a SafetensorError (not an OSError): it
    becomes the one line every other write gives, and the half-written file goes."""
    import vlmsteer.concepts.dictionary as dictionary
    from safetensors import SafetensorError

    def full(tensors, path, metadata=None):
        open(path, "wb").write(b"half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(dictionary, "save_file", full)
    d = make_dictionary("kmeans", 2, seed=0).fit(np.random.default_rng(0).normal(size=(20, 4)))
    with pytest.raises(VlmsteerError, match=r"d.safetensors: cannot write \(no space left on the device\)"):
        d.save(tmp_path / "d.safetensors")
    assert not (tmp_path / "d.safetensors").exists()
