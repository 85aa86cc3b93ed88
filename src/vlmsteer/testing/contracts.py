"""The contract every registry entry keeps, as functions a test calls with an entry: the suite runs
them over every registered entry (``tests/test_registries.py``), and a plugin's own tests call
them for its entries. Each raises ``AssertionError`` naming what broke.

- :func:`check_concept_method`: fits, seeded fits agree, encode/decode shapes, save/load
  round-trips through the loader every command uses;
- :func:`check_diff_method`: a finite, ranked readout of the hidden size, the same for the same
  seed, whose readout names a planted change;
- :func:`check_region`: steered generation with the KV cache equals it without, token for token,
  on a left-padded batch, and changes it; the engine's view of the region (one unpadded request,
  any chunking) equals the steerer's;
- :func:`check_selector`: positions inside the sequence, of the kind the entry says;
- :func:`check_dataset_format`: samples with unique ids and prompts, through ``load_samples``,
  the seeded subset stable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def check_concept_method(name: str, features: np.ndarray, tmp: Path, **options) -> None:
    from vlmsteer.concepts.methods import CONCEPT_METHODS, load_dictionary, make_dictionary

    cls = CONCEPT_METHODS.get(name)
    k = options.pop("k", 4)
    if "l0" in cls.FIT_OPTIONS:  # a sparse autoencoder: a short training
        options = {"l0": 2, "epochs": 3, "batch_size": 32, **options}
    a = make_dictionary(name, k, seed=3, **options).fit(features)
    b = make_dictionary(name, k, seed=3, **options).fit(features)
    assert a.components_.shape == (k, features.shape[1]), f"{name}: components_ {a.components_.shape}"
    assert np.isfinite(a.components_).all(), f"{name}: non-finite components"
    assert np.array_equal(a.components_, b.components_), f"{name}: two fits with one seed differ"
    codes = a.encode(features[:10])
    assert codes.shape == (10, k), f"{name}: codes of shape {codes.shape}"
    assert a.decode(codes).shape == (10, features.shape[1]), f"{name}: decode shape"
    path = a.save(tmp / f"{name}.safetensors", layer=2)
    c, meta = load_dictionary(path)
    assert type(c) is type(a) and meta.get("layer") == 2, f"{name}: loaded as {type(c).__name__}"
    np.testing.assert_allclose(c.encode(features[:10]), codes, rtol=1e-5, atol=1e-6, err_msg=name)


def check_diff_method(name: str, paired, planted: np.ndarray | None = None, **settings) -> None:
    """``paired``: two models' features (:class:`~vlmsteer.analysis.diffing.Paired`); with
    ``planted`` (the direction added to the fine-tuned features), the readout must point along it."""
    from vlmsteer.analysis.diffing_methods import DIFF_METHODS, DiffSettings

    method = DIFF_METHODS.get(name)
    first, again = (method.readout(paired, DiffSettings(**settings)) for _ in range(2))
    hidden = paired.a.shape[1]
    assert first.parts, f"{name}: no parts"
    assert first.layer == paired.layer and first.n_samples == len(paired.ids), f"{name}: layer or sample count"
    assert np.isfinite(first.relative_norm) and first.relative_norm >= 0, f"{name}: relative norm"
    for part in first.parts:
        assert part.vector.shape == (hidden,) and np.isfinite(part.vector).all(), f"{name}: part {part.name}"
        assert np.isfinite(part.size), f"{name}: part {part.name}'s size"
    assert [p.name for p in first.parts] == [p.name for p in again.parts], f"{name}: not deterministic"
    if planted is not None:
        v = first.parts[0].vector
        cos = float(v @ planted / (np.linalg.norm(v) * np.linalg.norm(planted) + 1e-12))
        assert abs(cos) > 0.5, f"{name}: the readout {first.parts[0].name} is not along the planted change " \
                               f"(cosine {cos:.2f})"


def check_region(vlm, region, prompts=("what colour is the square ?", "is there a circle ?"), alpha: float = 40.0,
                 max_new_tokens: int = 5) -> None:
    """On ``vlm`` (any VLM; tests use tiny ones), for a left-padded batch of two image prompts."""
    from PIL import Image

    from vlmsteer.positions import Region, positions_in_region, region_mask
    from vlmsteer.steer import SteeringVector, steer

    region = Region.parse(region)
    images = [Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (20, 30, 220))]
    batch = vlm.prepare(images, [prompts[0], prompts[1] + " and what else , in a few words ?"])
    layer = 0  # (image tokens act on the answer through the layers above)
    vec = SteeringVector({layer: torch.randn(vlm.hidden_size, generator=torch.Generator().manual_seed(0))})
    plain = vlm.generate(batch, max_new_tokens=max_new_tokens).tokens
    with steer(vlm, vec, batch, alpha=alpha, region=region):
        cached = vlm.generate(batch, max_new_tokens=max_new_tokens, use_cache=True).tokens
    with steer(vlm, vec, batch, alpha=alpha, region=region):
        uncached = vlm.generate(batch, max_new_tokens=max_new_tokens, use_cache=False).tokens
    assert torch.equal(cached, uncached), f"region {region}: cached and uncached steered generation differ"
    covers = bool(batch.regions.mask(region).any()) or region.covers_generated
    if covers:
        assert not torch.equal(cached, plain), f"region {region}: steering changed nothing"
    prompt_mask = batch.regions.mask(region)
    assert not bool((prompt_mask & batch.regions.padding).any()), f"region {region} covers padding"
    # the engine's view of one request equals the steerer's, whole or in chunks
    row = 1
    keep = ~batch.regions.padding[row]
    prompt = batch.input_ids[row][keep].tolist()
    single = vlm.prepare([images[row]], [prompts[1] + " and what else , in a few words ?"])
    total = len(prompt) + 4
    want = region_mask(single.regions, region, torch.arange(total))[0]
    ids = torch.tensor(sorted(vlm.image_token_ids))
    chunks = torch.cat([positions_in_region(region, prompt, a, min(3, total - a), ids) for a in range(0, total, 3)])
    assert torch.equal(positions_in_region(region, prompt, 0, total, ids), want), f"region {region}: engine view"
    assert torch.equal(chunks, want), f"region {region}: engine view in chunks"


def check_selector(vlm, name: str, word: str | None = None) -> None:
    """The selector's positions for a teacher-forced batch lie inside each row's sequence."""
    from PIL import Image

    from vlmsteer.extract import append_responses, response_ids
    from vlmsteer.positions import Selector

    selector = Selector(name, word=word)
    prompts = ["what colour is the square ?", "is there a circle ?"]
    batch = vlm.prepare([Image.new("RGB", (32, 32), (200, 30, 30))] * 2, prompts)
    responses = response_ids(vlm, batch.texts, ["red", "yes"])
    full = append_responses(vlm, batch, responses)
    for row in range(2):
        got = selector.positions(full.regions, row, responses[row], vlm.tokenizer)
        assert all(0 <= p < full.input_ids.shape[1] for p in got), f"selector {name}: {got} outside the sequence"
        assert all(bool(full.attention_mask[row, p]) for p in got), f"selector {name}: a padding position"


def check_dataset_format(name: str, path: Path, **options) -> None:
    from vlmsteer.data import load_samples

    samples = load_samples(name, path, **options)
    assert samples, f"format {name}: no samples"
    ids = [s.id for s in samples]
    assert len(set(ids)) == len(ids), f"format {name}: duplicate ids"
    assert all(isinstance(s.prompt, str) and s.prompt for s in samples), f"format {name}: a sample without a prompt"
    assert all(s.digest for s in samples), f"format {name}: samples without their content digest"
    if len(samples) > 1:
        a = load_samples(name, path, limit=len(samples) - 1, seed=5, **options)
        b = load_samples(name, path, limit=len(samples) - 1, seed=5, **options)
        assert [s.id for s in a] == [s.id for s in b], f"format {name}: the seeded subset changes"
