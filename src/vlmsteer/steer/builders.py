"""Builders of steering vectors from feature stores.

* coarse: ``mean(target features) - mean(source features)`` (paper §3, ``s_c``), from two
  filters of one store (e.g. samples answered "yes" vs "no") or from two stores;
* concept pairs: ``concept_shift(u_i -> u_j) = u_j - u_i`` — the vector that moves a
  feature from concept ``i`` toward concept ``j``.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import torch

from vlmsteer.errors import VlmsteerError
from vlmsteer.data.text import normalize_answer
from vlmsteer.steer.vector import SteeringVector
from vlmsteer.store import FeatureStore, record_value


def parse_filter(text: str) -> dict[str, Any]:
    """``"response=yes"``, ``"answer_type=number,response=1|one"`` or a keyword condition
    ``"response~colors"`` (contains a word of the keyword set, whole-word) / ``"response!~colors"``
    (contains none) -> {field: value or [values]}; keyword conditions keep ``~`` / ``!~`` in the key."""
    out: dict[str, Any] = {}
    for part in [p for p in re.split(r",(?=[^,=~]+(?:=|!?~))", text) if p.strip()]:
        m = re.fullmatch(r"\s*([^=~!]+?)\s*(=|!~|~)(.*)", part)
        if not m:
            raise VlmsteerError(f"filter {text!r}: expected field=value or field~keywords, got {part!r}")
        k, op, v = m.groups()
        if op != "=":
            from vlmsteer.data.keywords import keyword_set

            keyword_set(v.strip())  # unknown set: one-line error now
            out[k + op] = v.strip()
            continue
        values = [x.strip() for x in v.split("|")]
        out[k] = values if len(values) > 1 else values[0]
    if not out:
        raise VlmsteerError(f"empty filter {text!r}")
    return out


def select_records(store: FeatureStore, flt: dict[str, Any]) -> np.ndarray:
    """Record indices matching ``flt``; answer-like fields compare normalized answers."""
    from vlmsteer.data.keywords import keyword_condition, keyword_condition_holds

    def norm(field: str, value):
        if field in ("response", "answer") and value is not None:
            return normalize_answer(str(value))
        return value

    conditions = {k: keyword_condition(k) for k in flt}
    wanted = {k: ({norm(k, x) for x in v} if isinstance(v, list) else {norm(k, v)})
              for k, v in flt.items() if not conditions[k]}

    def keep(r: dict) -> bool:
        for k, v in flt.items():
            cond = conditions[k]
            ok = (keyword_condition_holds(record_value(r, cond[0]), v, cond[1]) if cond
                  else norm(k, record_value(r, k)) in wanted[k])
            if not ok:
                return False
        return True

    return store.select(where=keep)


def describe_filter(flt: dict[str, Any]) -> str:
    return ", ".join(f"{k}{v}" if k.endswith("~") else f"{k}={'|'.join(v) if isinstance(v, list) else v}"
                     for k, v in flt.items())


def coarse_vector(source_store: FeatureStore, source: dict[str, Any] | None, target_store: FeatureStore | None = None,
                  target: dict[str, Any] | None = None, layers: Sequence[int] | None = None,
                  max_samples: int | None = None, seed: int = 0) -> SteeringVector:
    """``mean(target) - mean(source)`` per layer. With one store, ``source`` and ``target``
    are filters of it; with two, an absent filter means all of that store's samples."""
    target_store = target_store or source_store
    if source_store.hidden_size != target_store.hidden_size:
        raise VlmsteerError(f"stores differ in hidden size ({source_store.hidden_size} vs {target_store.hidden_size})")
    if target_store is source_store and (source is None or target is None):
        raise VlmsteerError("with one store, give both a source and a target filter")
    if layers is not None:
        layers = [source_store.layer_index(layer) for layer in layers]
        for layer in layers:
            target_store.layer_index(layer)
    else:
        layers = sorted(set(source_store.layers) & set(target_store.layers))
    src_idx = select_records(source_store, source) if source else source_store.select()
    tgt_idx = select_records(target_store, target) if target else target_store.select()
    rng = np.random.default_rng(seed)
    if max_samples is not None:
        src_idx = np.sort(rng.permutation(src_idx)[:max_samples])
        tgt_idx = np.sort(rng.permutation(tgt_idx)[:max_samples])
    for name, idx, flt in (("source", src_idx, source), ("target", tgt_idx, target)):
        if len(idx) == 0:
            raise VlmsteerError(f"no samples match the {name} filter ({describe_filter(flt) if flt else 'all'})")
    vecs = {}
    for layer in layers:
        a = source_store.features(layer, indices=src_idx, dtype=np.float64).mean(0)
        b = target_store.features(layer, indices=tgt_idx, dtype=np.float64).mean(0)
        vecs[layer] = torch.from_numpy(b - a).float()
    return SteeringVector(
        vecs, model_id=source_store.header.get("model_id"), hidden_size=source_store.hidden_size, method="coarse",
        source=describe_filter(source) if source else str(source_store.path),
        target=describe_filter(target) if target else str(target_store.path),
        n_source=int(len(src_idx)), n_target=int(len(tgt_idx)),
        options={"selector": source_store.header.get("selector"), "max_samples": max_samples, "seed": seed},
    )


def concept_shift(components: np.ndarray | torch.Tensor, i: int, j: int, layer: int,
                  model_id: str | None = None, labels: Sequence[str] | None = None) -> SteeringVector:
    """The vector from concept ``i`` to concept ``j``: ``u_j - u_i`` (adding it moves a
    feature at ``u_i`` onto ``u_j``)."""
    u = torch.as_tensor(np.asarray(components), dtype=torch.float32)
    if i == j:
        raise VlmsteerError("concept_shift needs two different concepts")
    name = (lambda k: labels[k] if labels else f"concept {k}")
    return SteeringVector({layer: u[j] - u[i]}, model_id=model_id, method="concept_shift",
                          source=name(i), target=name(j), options={"from": int(i), "to": int(j)})


def all_concept_shifts(components, layer: int, model_id: str | None = None,
                       labels: Sequence[str] | None = None) -> dict[str, SteeringVector]:
    """Every ordered pair ``i -> j`` (K·(K−1) vectors), named ``"i->j"``."""
    k = len(components)
    return {f"{i}->{j}": concept_shift(components, i, j, layer, model_id, labels)
            for i in range(k) for j in range(k) if i != j}
