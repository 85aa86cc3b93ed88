"""Steering through a dictionary: clamp / scale / splice / zero at one layer and region."""

import numpy as np
import pytest
import torch

from vlmsteer.concepts import make_dictionary
from vlmsteer.errors import VlmsteerError
from vlmsteer.hooks import capture_residual
from vlmsteer.steer.dictionary_edit import DictionarySteering, dictionary_delta


def _sae(dim, latents=12, seed=0):
    z = np.random.default_rng(seed).normal(size=(300, dim)).astype(np.float32)
    return make_dictionary("topk_sae", latents, seed=seed, l0=3, epochs=2, batch_size=64).fit(z)


def test_clamp_scale_splice_zero_follow_their_formulas():
    sae = _sae(16)
    h = torch.randn(2, 5, 16)
    codes = sae.encode_tensor(h.reshape(-1, 16))
    w = sae.tensors()["components_"]
    clamp = dictionary_delta(sae, "clamp", [3, 7], 4.0)(h).reshape(-1, 16)
    torch.testing.assert_close(clamp, (4.0 - codes[:, [3, 7]]) @ w[[3, 7]])
    scale = dictionary_delta(sae, "scale", [3], 2.5)(h).reshape(-1, 16)
    torch.testing.assert_close(scale, 1.5 * codes[:, [3]] @ w[[3]])
    splice = dictionary_delta(sae, "splice")(h)
    torch.testing.assert_close(h + splice, sae.decode_tensor(codes).reshape(h.shape))
    torch.testing.assert_close(h + dictionary_delta(sae, "zero")(h), torch.zeros_like(h))
    km = make_dictionary("kmeans", 3, seed=0).fit(np.random.default_rng(1).normal(size=(60, 16)))
    spliced = (h + dictionary_delta(km, "splice")(h)).reshape(-1, 16).double().numpy()
    np.testing.assert_allclose(spliced, km.components_[km.assign(h.reshape(-1, 16).numpy())], atol=1e-5)


def test_a_clamp_changes_the_model_only_inside_its_region(tiny_vlm):
    vlm = tiny_vlm("llava")
    sae = _sae(vlm.hidden_size)
    batch = vlm.prepare([None, None], ["a red circle", "two blue squares here"])
    steering = DictionarySteering(sae, 1, "clamp", (2,), 50.0, "last_prompt").check(vlm)
    with torch.no_grad(), capture_residual(vlm.layers, [1, 2]) as plain:
        vlm.forward(batch)
    with torch.no_grad(), steering.apply(vlm, batch), capture_residual(vlm.layers, [1, 2]) as steered:
        vlm.forward(batch)
    a, b = plain[2][0], steered[2][0]
    last = batch.prompt_length - 1
    assert torch.equal(a[:, :last], b[:, :last])  # positions before the last prompt token: untouched
    assert (a[:, last] - b[:, last]).abs().max() > 1e-3
    assert steering.describe()["summary"].startswith("topk_sae dictionary at layer 1: latents 2 clamped to 50")
    with torch.no_grad(), capture_residual(vlm.layers, [2]) as again:
        vlm.forward(batch)
    assert torch.equal(again[2][0], a)  # leaving the context restores the model


def test_bad_dictionary_edits_are_refused(tiny_vlm):
    sae = _sae(16)
    km = make_dictionary("kmeans", 3, seed=0).fit(np.random.default_rng(1).normal(size=(60, 16)))
    with pytest.raises(VlmsteerError, match="clamp needs a sparse autoencoder"):
        DictionarySteering(km, 1, "clamp", (0,), 1.0)
    with pytest.raises(VlmsteerError, match="name the latent"):
        DictionarySteering(sae, 1, "clamp", (), 1.0)
    with pytest.raises(VlmsteerError, match="latent 12 out of range"):
        DictionarySteering(sae, 1, "scale", (12,), 1.0)
    with pytest.raises(VlmsteerError, match="hidden size"):
        DictionarySteering(_sae(7), 1, "splice").check(tiny_vlm("llava"))


def test_vectors_concepts_writes_latent_directions_and_chosen_pairs(tmp_path, capsys):
    from vlmsteer.cli import main
    from vlmsteer.steer.vector import load_vectors

    sae = _sae(16, latents=80)
    path = tmp_path / "sae.safetensors"
    labels = [f"{i}:{'red' if i in (5, 9) else 'w' + str(i)}" for i in range(80)]
    sae.save(path, layer=2, labels=labels)
    out = tmp_path / "v.safetensors"
    assert main(["vectors", "concepts", "--dictionary", str(path), "--out", str(out), "--latent", "red",
                 "--latent", "3"]) == 0
    vecs = load_vectors(out)
    assert sorted(vecs) == ["latent:3", "latent:5", "latent:9"]
    for i in (3, 5, 9):  # the decoder row, unit norm, at the dictionary's layer
        v = vecs[f"latent:{i}"]
        assert v.layers == [2] and v.method == "latent" and v.target == labels[i]
        np.testing.assert_allclose(v.vectors[2].numpy(), sae.components_[i], rtol=1e-6, atol=1e-7)
        assert abs(float(v.vectors[2].norm()) - 1) < 1e-4
    pairs = tmp_path / "p.safetensors"
    assert main(["vectors", "concepts", "--dictionary", str(path), "--out", str(pairs), "--pair", "red->7"]) == 0
    got = load_vectors(pairs)
    assert sorted(got) == ["5->7", "9->7"]
    np.testing.assert_allclose(got["5->7"].vectors[2].numpy(), sae.components_[7] - sae.components_[5], atol=1e-6)
    capsys.readouterr()
    # 80 concepts: every ordered pair (6320 vectors) is not written unasked; bad names are one line
    for args, msg in ((["--out", str(tmp_path / "all.safetensors")], "choose pairs"),
                      (["--out", str(tmp_path / "x.safetensors"), "--pair", "red"], "write it as 'i->j'"),
                      (["--out", str(tmp_path / "x.safetensors"), "--latent", "80"], "latent 80 out of range"),
                      (["--out", str(tmp_path / "x.safetensors"), "--latent", "blue"], "no concept has the top word")):
        assert main(["vectors", "concepts", "--dictionary", str(path), *args]) == 2
        assert msg in capsys.readouterr().err
    km = make_dictionary("kmeans", 3, seed=0).fit(np.random.default_rng(1).normal(size=(60, 16)))
    km.save(tmp_path / "km.safetensors", layer=2)
    assert main(["vectors", "concepts", "--dictionary", str(tmp_path / "km.safetensors"), "--out",
                 str(tmp_path / "k.safetensors"), "--latent", "0"]) == 2
    assert "concepts are points" in capsys.readouterr().err
    assert main(["vectors", "concepts", "--dictionary", str(tmp_path / "km.safetensors"), "--out",
                 str(tmp_path / "k.safetensors")]) == 0
    assert len(load_vectors(tmp_path / "k.safetensors")) == 6


def test_a_dictionary_of_another_model_or_adapter_is_refused_and_another_layer_said(tiny_vlm, tmp_path, caplog):
    """Issue 37: the model a dictionary was trained on (weights and LoRA adapter, as recorded)
    is checked exactly as for vectors (--allow-other-model lets it through); applied at another
    layer than its training features', it says so."""
    import logging

    from vlmsteer.steer.dictionary_edit import load_dictionary_steering

    vlm = tiny_vlm("llava")
    sae = _sae(vlm.hidden_size)
    here = vlm.identity
    cases = {"own": dict(here), "adapter": {**here, "adapter": "f" * 64}, "weights": {**here, "weights": "0" * 64}}
    for name, model in cases.items():
        sae.save(tmp_path / f"{name}.safetensors", layer=1, model=model)
    assert load_dictionary_steering(tmp_path / "own.safetensors", "splice").check(vlm).layer == 1
    with pytest.raises(VlmsteerError, match="made with adapter ffffffffffff on these weights, but .* no adapter"):
        load_dictionary_steering(tmp_path / "adapter.safetensors", "splice").check(vlm)
    with pytest.raises(VlmsteerError, match="the dictionary was made with another model"):
        load_dictionary_steering(tmp_path / "weights.safetensors", "splice").check(vlm)
    for name in ("adapter", "weights"):
        load_dictionary_steering(tmp_path / f"{name}.safetensors", "splice").check(vlm, allow_other_model=True)
    with caplog.at_level(logging.WARNING, logger="vlmsteer"):
        moved = load_dictionary_steering(tmp_path / "own.safetensors", "splice", layer=-1).check(vlm)
    assert moved.layer == vlm.num_layers - 1
    assert f"trained on layer 1 features; it is applied at layer {vlm.num_layers - 1}, as asked" in caplog.text
