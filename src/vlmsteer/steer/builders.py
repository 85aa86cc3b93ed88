"""Builders of steering vectors from feature stores.

* coarse: ``mean(target features) - mean(source features)`` (paper §3, ``s_c``), from two
  filters of one store (e.g. samples answered "yes" vs "no") or from two stores;
* concept pairs: ``concept_shift(u_i -> u_j) = u_j - u_i`` — the vector that moves a
  feature from concept ``i`` toward concept ``j``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from vlmsteer.concepts.sae import SparseAutoencoder
from vlmsteer.errors import VlmsteerError
from vlmsteer.data.filters import Filter, as_filter
from vlmsteer.steer.conditions import concept_indices
from vlmsteer.steer.vector import CONCEPT_SHIFT, SteeringVector
from vlmsteer.store import FeatureStore, check_paired


def coarse_vector(source_store: FeatureStore, source: Filter | str | None, target_store: FeatureStore | None = None,
                  target: Filter | str | None = None, layers: Sequence[int] | None = None,
                  max_samples: int | None = None, seed: int = 0) -> SteeringVector:
    """``mean(target) - mean(source)`` per layer. With one store, ``source`` and ``target``
    are filters of it; with two, an absent filter means all of that store's samples."""
    target_store = target_store or source_store
    source, target = as_filter(source), as_filter(target)
    if source_store.hidden_size != target_store.hidden_size:
        raise VlmsteerError(f"stores differ in hidden size ({source_store.hidden_size} vs {target_store.hidden_size})")
    if target_store is source_store and (source is None or target is None):
        raise VlmsteerError("with one store, give both a source and a target filter")
    if target_store is not source_store:
        check_paired(source_store, target_store, "a coarse vector", same_model=True)
    if layers is not None:
        layers = [source_store.layer_index(layer) for layer in layers]
        for layer in layers:
            target_store.layer_index(layer)
    else:
        layers = sorted(set(source_store.layers) & set(target_store.layers))
    src_idx, tgt_idx = source_store.select(source), target_store.select(target)
    rng = np.random.default_rng(seed)
    if max_samples is not None:
        src_idx = np.sort(rng.permutation(src_idx)[:max_samples])
        tgt_idx = np.sort(rng.permutation(tgt_idx)[:max_samples])
    for name, idx, flt in (("source", src_idx, source), ("target", tgt_idx, target)):
        if len(idx) == 0:
            raise VlmsteerError(f"no samples match the {name} filter ({flt or 'all'})")
    vecs = {}
    for layer in layers:
        a = source_store.features(layer, indices=src_idx, dtype=np.float64).mean(0)
        b = target_store.features(layer, indices=tgt_idx, dtype=np.float64).mean(0)
        vecs[layer] = torch.from_numpy(b - a).float()
    return SteeringVector(
        vecs, model_id=source_store.header.get("model_id"), hidden_size=source_store.hidden_size, method="coarse",
        source=str(source or source_store.path), target=str(target or target_store.path),
        n_source=int(len(src_idx)), n_target=int(len(tgt_idx)),
        options={"selector": source_store.header.get("selector"), "max_samples": max_samples, "seed": seed,
                 "model": source_store.header.get("model"),
                 "source_store": {"path": str(source_store.path.resolve()), "fingerprint": source_store.fingerprint},
                 "target_store": {"path": str(target_store.path.resolve()), "fingerprint": target_store.fingerprint}},
    )


def concept_shift(components: np.ndarray | torch.Tensor, i: int, j: int, layer: int,
                  model_id: str | None = None, labels: Sequence[str] | None = None,
                  model: dict | None = None) -> SteeringVector:
    """The vector from concept ``i`` to concept ``j``: ``u_j - u_i`` (adding it moves a
    feature at ``u_i`` onto ``u_j``)."""
    u = torch.as_tensor(np.asarray(components), dtype=torch.float32)
    if i == j:
        raise VlmsteerError("concept_shift needs two different concepts")
    name = (lambda k: labels[k] if labels else f"concept {k}")
    return SteeringVector({layer: u[j] - u[i]}, model_id=model_id, method=CONCEPT_SHIFT,
                          source=name(i), target=name(j), options={"from": int(i), "to": int(j), "model": model})


def latent_direction(components: np.ndarray | torch.Tensor, i: int, layer: int, model_id: str | None = None,
                     labels: Sequence[str] | None = None, model: dict | None = None) -> SteeringVector:
    """A sparse autoencoder latent's decoder direction ``d_i`` (unit norm): adding ``α·d_i``
    adds what latent ``i`` firing at ``α`` would write into the residual."""
    u = torch.as_tensor(np.asarray(components), dtype=torch.float32)
    if not 0 <= i < len(u):
        raise VlmsteerError(f"latent {i} out of range (the dictionary has {len(u)}: 0..{len(u) - 1})", "latent")
    return SteeringVector({layer: u[i]}, model_id=model_id, method="latent", source=None,
                          target=labels[i] if labels else f"latent {i}", options={"latent": int(i), "model": model})


def all_concept_shifts(components, layer: int, model_id: str | None = None,
                       labels: Sequence[str] | None = None, model: dict | None = None) -> dict[str, SteeringVector]:
    """Every ordered pair ``i -> j`` (K·(K−1) vectors), named ``"i->j"``; ``model``: the
    identity of the model whose features the concepts come from."""
    k = len(components)
    return {f"{i}->{j}": concept_shift(components, i, j, layer, model_id, labels, model)
            for i in range(k) for j in range(k) if i != j}


ALL_PAIRS_LIMIT = 64  # concepts beyond which every ordered pair is too many to write unasked


def concept_vectors(dictionary, layer: int, meta: dict, source, pairs: Sequence[str] = (),
                    latents: Sequence[str] = ()) -> dict[str, SteeringVector]:
    """What ``vectors concepts`` writes: the ``pairs`` (``"i->j"``, indices or top words, each
    word naming every concept it labels), the ``latents``' decoder directions (sparse
    autoencoders), or every ordered pair of a dictionary of at most 64 concepts."""
    labels, common = meta.get("labels"), {"model_id": meta.get("model_id"), "model": meta.get("model")}
    u = dictionary.components_

    def named(text: str, option: str) -> list[int]:
        found = concept_indices(text, labels, source)
        bad = [i for i in found if not 0 <= i < len(u)]
        if bad:
            raise VlmsteerError(f"{option} {bad[0]} out of range (the dictionary has {len(u)}: 0..{len(u) - 1})",
                                option)
        return found

    if latents and pairs:
        raise VlmsteerError("give --pair or --latent, not both")
    if latents:
        if not isinstance(dictionary, SparseAutoencoder):
            raise VlmsteerError(f"--latent takes a sparse autoencoder's decoder directions; {dictionary.method} "
                                "concepts are points: use pairs (u_j − u_i)", "latent")
        chosen = sorted({i for a in latents for i in named(a, "latent")})
        return {f"latent:{i}": latent_direction(u, i, layer, labels=labels, **common) for i in chosen}
    if not pairs:
        if len(u) > ALL_PAIRS_LIMIT:
            raise VlmsteerError(f"{source}: {len(u)} concepts make {len(u) * (len(u) - 1)} pair vectors; choose "
                                "pairs (--pair i->j) or latents (--latent i)", "pair")
        return all_concept_shifts(u, layer, labels=labels, **common)
    out = {}
    for text in pairs:
        if "->" not in text:
            raise VlmsteerError(f"pair {text!r}: write it as 'i->j' (indices or top words)", "pair")
        a, b = (part.strip() for part in text.split("->", 1))
        for i in named(a, "pair"):
            for j in named(b, "pair"):
                if i != j:
                    out[f"{i}->{j}"] = concept_shift(u, i, j, layer, labels=labels, **common)
    if not out:
        raise VlmsteerError(f"pairs {', '.join(pairs)} name no two different concepts", "pair")
    return out


def random_control(vector: SteeringVector, seed: int = 0) -> SteeringVector:
    """The random-vector control of ``vector``: at each of its layers a random direction of the
    same norm (seeded by ``seed`` and the layer), its model and options kept, so that steering with
    it exactly as with ``vector`` shows what any push of that size does."""
    from vlmsteer.steer.vector import random_direction

    return SteeringVector({l: random_direction(v, seed * 1_000_003 + l) for l, v in vector.vectors.items()},
                          model_id=vector.model_id, hidden_size=vector.hidden_size, method="random_control",
                          source=vector.source, target=vector.target,
                          options={**vector.options, "control_of": vector.digest(), "control_seed": seed})
