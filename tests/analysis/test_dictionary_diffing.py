"""Model diffing with dictionaries: the BatchTopK crosscoder (relative decoder norms, latent
scaling) and the SAE on differences, on paired features whose change is planted."""

import json

import numpy as np
import pytest
import torch

from vlmsteer.analysis.dictionary_diffing import (DictionaryOptions, LatentScaling, PairRows, crosscoder_readout,
                                                  relative_decoder_norms, sae_diff_readout)
from vlmsteer.analysis.diffing import Paired
from vlmsteer.cli import main

N, D, SHARED = 2000, 32, 24
FAST = {"latents": 64, "l0": 4, "seed": 0, "epochs": 60}


class _Records:
    records = [{"id": str(i)} for i in range(N)]


def _planted(seed: int = 1):
    """Original features: sparse sums of shared directions. Fine-tuned: the same plus noise, plus
    one new direction on a third of the rows and another on a second third."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((SHARED, D))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    a = ((rng.random((N, SHARED)) < 0.08) * rng.uniform(1, 3, (N, SHARED))) @ dirs
    new = rng.standard_normal((2, D))
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    which = rng.integers(0, 3, N)
    b = a + 0.05 * rng.standard_normal((N, D)) + np.outer(which == 0, 2 * new[0]) + np.outer(which == 1, 1.5 * new[1])
    paired = Paired(_Records(), 0, a.astype(np.float32), b.astype(np.float32), [str(i) for i in range(N)])
    return paired, new, which


def _cosines(vector: np.ndarray, new: np.ndarray) -> np.ndarray:
    return np.abs(new @ (vector / np.linalg.norm(vector)))


def test_pair_rows_read_differences_and_side_by_side_rows_on_demand():
    a = np.arange(12, dtype=np.float16).reshape(4, 3)
    b = a * 2
    diff, both = PairRows(a, b, "difference"), PairRows(a, b, "side_by_side")
    assert diff.shape == (4, 3) and both.shape == (4, 6) and diff.dtype == np.float32
    np.testing.assert_array_equal(diff[np.array([3, 1])], (b - a)[[3, 1]])
    np.testing.assert_array_equal(np.asarray(both), np.concatenate([a, b], 1))
    with pytest.raises(ValueError):
        PairRows(a, b, "sum")


def test_crosscoder_finds_the_fine_tuned_only_directions_and_their_rows():
    paired, new, which = _planted()
    r = crosscoder_readout(paired, DictionaryOptions(**FAST))
    latents = [p for p in r.parts if p.name.startswith("latent:")]
    # the two planted directions are the two largest parts, each a fine-tuned-only latent
    assert [p.name for p in r.parts[:2]] == [p.name for p in latents[:2]]
    assert sorted(np.argmax([_cosines(p.vector, new) for p in latents[:2]], axis=1).tolist()) == [0, 1]
    assert all(_cosines(p.vector, new).max() > 0.98 for p in latents[:2])
    for p in latents[:2]:
        assert p.info["relative decoder norm"] > 0.95 and abs(p.info["ν^ε"]) < 0.05
    # every other latent active on 5 % of the rows is shared (the original's features live in both
    # models); fine-tuned-only ones beyond the planted two fire rarely (the fine-tuned model's noise)
    relative, fired = np.asarray(r.extra["relative_decoder_norms"]), np.asarray(r.extra["fired"])
    common = set(np.flatnonzero(fired > 0.05 * N)) - {int(p.name.split(":")[1]) for p in latents[:2]}
    assert len(common) > 20 and all(relative[j] < 0.9 for j in common) and r.extra["fvu"] < 0.05
    assert all(p.size < 0.03 for p in r.parts[2:])  # (the bias, and those rare latents)
    # the samples ranked by the readout's activation are the rows that carry its direction
    planted = int(np.argmax(_cosines(r.parts[0].vector, new)))
    top = np.argsort(-r.scores)[:N // 4]
    assert (which[top] == planted).mean() > 0.98
    assert r.relative_norm == pytest.approx(r.parts[0].size / r.spread)


def test_crosscoder_on_two_identical_models_has_no_fine_tuned_only_latent():
    paired, _, _ = _planted()
    same = Paired(paired.original, 0, paired.a, paired.a.copy(), paired.ids)
    r = crosscoder_readout(same, DictionaryOptions(**FAST))
    assert r.extra["kept_after_scaling"] == 0 and [p.name for p in r.parts] == ["bias"]
    assert np.abs(np.asarray(r.extra["relative_decoder_norms"]) - 0.5).max() < 0.3  # every latent is shared
    assert r.relative_norm < 0.01


def test_latent_scaling_tells_a_new_latent_from_one_the_original_has_elsewhere():
    """ν^ε: 0 when the original's error holds nothing along the latent, 1 when it holds as much
    as the fine-tuned model's; ν^r likewise for the reconstructions."""
    d = torch.tensor([[1.0, 0.0]])
    f = torch.tensor([[2.0], [1.0], [0.0]])
    codes = f
    xb = torch.tensor([[2.0, 0.0], [1.0, 0.5], [0.0, 1.0]])
    recon_b = f * d  # the fine-tuned model: the latent reconstructs its part
    for original_error, nu in ((torch.zeros(3, 2), 0.0), (f * d, 1.0), (0.5 * f * d, 0.5)):
        xa = torch.zeros(3, 2) + original_error  # the original's features: only the error (recon 0)
        scaling = LatentScaling(np.array([0]), d.numpy())
        scaling.add(torch.cat([xa, xb], 1), codes, torch.cat([torch.zeros(3, 2), recon_b], 1))
        nu_error, nu_recon = scaling.ratios()
        assert nu_error[0] == pytest.approx(nu) and nu_recon[0] == pytest.approx(0.0)
    assert relative_decoder_norms(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])).tolist() == [0.0, 0.5, 1.0]


def test_sae_on_differences_recovers_each_planted_change():
    paired, new, which = _planted()
    r = sae_diff_readout(paired, DictionaryOptions(latents=16, seed=0, epochs=60))  # default L0: 1 on differences
    assert r.extra["l0"] == 1
    top = r.parts[:2]
    assert all(p.name.startswith("latent:") for p in top)
    assert sorted(np.argmax([_cosines(p.vector, new) for p in top], axis=1).tolist()) == [0, 1]
    assert all(_cosines(p.vector, new).max() > 0.98 for p in top)
    # a part's size is its mean contribution: the planted sizes 2 and 1.5 on a third of the rows each
    assert top[0].size == pytest.approx(2 / 3, rel=0.1) and top[1].size == pytest.approx(1.5 / 3, rel=0.1)


def _import(tmp_path, name: str, features: np.ndarray, model: str):
    np.save(tmp_path / f"{name}.npy", features.astype(np.float16))
    (tmp_path / "records.jsonl").write_text("".join(json.dumps({"id": str(i)}) + "\n" for i in range(len(features))))
    out = tmp_path / name
    assert main(["store", "import", "--features", str(tmp_path / f"{name}.npy"), "--records",
                 str(tmp_path / "records.jsonl"), "--layer", "2", "--num-layers", "3", "--model", model,
                 "--out", str(out)]) == 0
    return out


def test_diff_crosscoder_and_sae_diff_from_the_command_line(tiny_folder, tmp_path, capsys):
    from vlmsteer.concepts import load_dictionary
    from vlmsteer.steer.vector import load_vectors

    paired, new, _ = _planted()
    model = str(tiny_folder("llava"))  # hidden size 32, as the planted features
    a, b = (_import(tmp_path, n, x[:1500], model) for n, x in (("a", paired.a), ("b", paired.b)))
    for method, latents in (("crosscoder", "64"), ("sae-diff", "16")):
        out = tmp_path / method
        assert main(["diff", "--original", str(a), "--finetuned", str(b), "--method", method, "--latents", latents,
                     *(["--l0", "4"] if method == "crosscoder" else []), "--out", str(out)]) == 0
        result = json.loads((out / "diff.json").read_text())
        assert result["readout"].startswith("latent:") and len(result["words"]) == 15
        assert result["top_samples_by"] == "activation" and len(result["top_samples"]) == 8
        vectors = load_vectors(out / "diff.safetensors")
        assert set(vectors) >= {"bias", result["readout"]}
        assert _cosines(vectors[result["readout"]].vectors[2].numpy(), new).max() > 0.95
        dictionary, meta = load_dictionary(out / "dictionary.safetensors")
        assert dictionary.k == int(latents) and meta["layer"] == 2
        page = (out / "report.html").read_text()
        assert result["readout"] in page and "words" in page
    cc = json.loads((tmp_path / "crosscoder" / "diff.json").read_text())
    assert len(cc["relative_decoder_norms"]) == 64 and cc["parts"][0]["relative decoder norm"] > 0.9
    assert (tmp_path / "crosscoder" / "decoder_norms.png").is_file()
    page = (tmp_path / "crosscoder" / "report.html").read_text()
    assert "decoder_norms.png" in page and "relative decoder norm" in page and "ν^ε" in page
    # a crosscoder is trained by diff, not by concepts
    capsys.readouterr()
    assert main(["concepts", str(a), "--method", "batchtopk-crosscoder", "--no-words",
                 "--out", str(tmp_path / "c")]) == 2
    assert "use vlmsteer diff --method crosscoder" in capsys.readouterr().err


def test_the_noise_floor_is_what_resampling_the_inputs_moves_and_the_verdict_follows_it():
    """Issue 37: diff's verdict compares the readout with a floor measured from the data — how
    far the original's mean moves between random halves of the samples (2/√n of the spread for
    independent rows) — not a constant: a change of 2 × the floor is called changed, half of
    it unchanged."""
    from vlmsteer.analysis.diffing import adl_readout, noise_floor

    rng = np.random.default_rng(3)
    for n in (200, 2000):
        a = rng.standard_normal((n, D))
        paired = Paired(_Records(), 0, a.astype(np.float32), a.astype(np.float32), [str(i) for i in range(n)])
        floor = noise_floor(paired)
        assert 0.9 * 2 / np.sqrt(n) < floor < 1.6 * 2 / np.sqrt(n), (n, floor)
        assert adl_readout(paired).relative_norm == 0 < floor  # the same model: unchanged
        direction = rng.standard_normal(D)
        direction /= np.linalg.norm(direction)
        spread = np.sqrt(D)  # unit variance in every dimension
        for factor, changed in ((2.0, True), (0.5, False)):
            b = a + factor * floor * spread * direction
            r = adl_readout(Paired(_Records(), 0, a.astype(np.float32), b.astype(np.float32), paired.ids))
            assert (r.relative_norm > noise_floor(paired)) == changed, (n, factor, r.relative_norm, floor)
