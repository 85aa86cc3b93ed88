"""The splice cost of a dictionary ("loss recovered"): cross-entropy bookkeeping checked against
the model's own loss, a lossless dictionary recovering everything, and refused inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlmsteer.concepts.dictionary import ConceptDictionary
from vlmsteer.concepts.sae_methods import TopKSAE
from vlmsteer.data import load_jsonl
from vlmsteer.errors import VlmsteerError
from vlmsteer.evaluate.splice_cost import splice_cost
from vlmsteer.extract import ExtractConfig, append_responses, extract, response_ids
from vlmsteer.positions import Selector


def _store(vlm, root, selector: str, n: int = 12):
    rows = []
    for i in range(n):
        Image.new("RGB", (32, 32), ((i * 37) % 255, (i * 91) % 255, (i * 53) % 255)).save(root / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "prompt": "describe the image .",
                     "answers": [["red circle", "blue square on the grass", "green triangle"][i % 3]]})
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    st, _ = extract(vlm, load_jsonl(root / "d.jsonl"), root / "store",
                    ExtractConfig(layers=[1], selector=Selector(selector)), progress=False)
    return st


@pytest.fixture(scope="module")
def last_prompt_store(tiny_vlm, tmp_path_factory):
    return _store(tiny_vlm("llava"), tmp_path_factory.mktemp("splice"), "last_prompt")


class Lossless(ConceptDictionary):
    """encode = decode = identity: splicing it changes nothing."""
    method = "lossless"

    def fit(self, features):
        return self

    def encode(self, features):
        return np.asarray(features, dtype=np.float64)

    def decode(self, activations):
        return np.asarray(activations, dtype=np.float64)


@torch.no_grad()
def test_clean_cross_entropy_is_the_models_own_loss_and_a_lossless_dictionary_recovers_all(tiny_vlm,
                                                                                          last_prompt_store):
    vlm = tiny_vlm("llava")
    st = last_prompt_store
    cost = splice_cost(vlm, st, Lossless(4), layer=1, n_samples=100, batch_size=5)
    assert cost.n_samples == 12 and cost.positions == "last prompt"
    # the reference: the model's own loss (labels = the response, -100 elsewhere), one sample at a time
    total, tokens = 0.0, 0
    for r in st.records:
        prompt = vlm.prepare([Image.open(r["image"])], [r["prompt"]])
        resp = response_ids(vlm, prompt.texts, [r["response"]])
        full = append_responses(vlm, prompt, resp)
        labels = torch.full_like(full.input_ids, -100)
        labels[0, full.prompt_length:] = torch.tensor(resp[0])
        total += float(vlm.forward(full, labels=labels).loss) * len(resp[0])
        tokens += len(resp[0])
    assert cost.n_tokens == tokens
    assert cost.clean == pytest.approx(total / tokens, rel=1e-5)
    assert cost.spliced == pytest.approx(cost.clean, rel=1e-6) and cost.loss_recovered == pytest.approx(1.0)
    assert cost.zero > cost.clean  # deleting the residual at the answer's position costs something


def test_a_lossy_sae_recovers_part_of_the_loss(tiny_vlm, last_prompt_store):
    st = last_prompt_store
    sae = TopKSAE(2, seed=0, l0=1, epochs=5, batch_size=4).fit(st.features(1))
    cost = splice_cost(tiny_vlm("llava"), st, sae, layer=1, n_samples=6, seed=3).to_dict()
    assert cost["n_samples"] == 6 and cost["clean"] < cost["spliced"]
    assert cost["loss_recovered"] < 1 and np.isfinite(cost["loss_recovered"])


def test_mean_response_store_splices_the_response_tokens(tiny_vlm, tmp_path):
    st = _store(tiny_vlm("llava"), tmp_path, "mean_response", n=3)
    cost = splice_cost(tiny_vlm("llava"), st, Lossless(4), layer=1)
    assert cost.positions == "mean response"
    # the first response token is predicted before the spliced positions: it is not scored
    assert cost.n_tokens == sum(r["n_response_tokens"] - 1 for r in st.records)


def test_refuses_another_model_and_changed_images(tiny_vlm, tmp_path):
    st = _store(tiny_vlm("llava"), tmp_path, "last_prompt", n=2)
    with pytest.raises(VlmsteerError, match="another model"):
        splice_cost(tiny_vlm("qwen2_vl"), st, Lossless(4), layer=1)
    Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp_path / "1.png")
    with pytest.raises(VlmsteerError, match="changed since the features were extracted"):
        splice_cost(tiny_vlm("llava"), st, Lossless(4), layer=1)


def test_imported_features_have_no_splice_cost(tiny_vlm, last_prompt_store, tmp_path):
    from vlmsteer.evaluate.splice_cost import usable_records
    from vlmsteer.store_io import export_features, import_features

    export_features(last_prompt_store, 1, tmp_path / "f.npy", tmp_path / "r.jsonl")
    imported = import_features(tmp_path / "f.npy", tmp_path / "r.jsonl", 1, tmp_path / "s", num_layers=3)
    records, why = usable_records(imported)
    assert records == [] and "imported" in why
    with pytest.raises(VlmsteerError, match="cannot measure the splice cost"):
        splice_cost(tiny_vlm("llava"), imported, Lossless(4), layer=1)
