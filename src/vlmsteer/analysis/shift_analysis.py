"""The fine-tuning shift analysis of two (or more) feature stores: per layer and K, both models'
dictionaries, their matching, shift vectors, recovery over α, and the evolution over checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from vlmsteer.analysis.shift import (aligned_features, consistency, correlations, match_concepts, recovery_cosine,
                                     shift_vectors)
from vlmsteer.concepts import make_dictionary
from vlmsteer.concepts.grounding import ground_text, t_overlap
from vlmsteer.data.keywords import KeywordSet
from vlmsteer.store import FeatureStore

DEFAULT_ALPHAS = tuple(np.round(np.arange(0, 2.01, 0.25), 2).tolist())


@dataclass
class ShiftConfig:
    layer: int
    k: int = 10
    method: str = "kmeans"
    matching: str = "hungarian"
    alphas: Sequence[float] = DEFAULT_ALPHAS
    seed: int = 0
    top_words: int = 15
    top_images: int = 6
    keywords: KeywordSet | None = None
    extra: dict = field(default_factory=dict)


def analyse(store_a: FeatureStore, store_b: FeatureStore, cfg: ShiftConfig, vlm=None) -> dict:
    """One layer, one K: dictionaries, matching, shift vectors, recovery over alphas."""
    a, b, common = aligned_features(store_a, store_b, cfg.layer)
    da = make_dictionary(cfg.method, cfg.k, seed=cfg.seed).fit(a)
    db = make_dictionary(cfg.method, cfg.k, seed=cfg.seed).fit(b)
    matching = match_concepts(da.components_, db.components_, cfg.matching)
    assign = da.assign(a)
    delta = shift_vectors(a, b, assign, cfg.k)
    magnitude = np.linalg.norm(delta, axis=1)
    consist = consistency(a, b, assign, delta)
    words_a = words_b = None
    if vlm is not None:
        words_a = [g.words for g in ground_text(vlm, da, cfg.top_words)]
        words_b = [g.words for g in ground_text(vlm, db, cfg.top_words)]
    recovery = []
    for alpha in cfg.alphas:
        cos = recovery_cosine(da.components_, delta, db.components_, matching, alpha)
        row = {"alpha": alpha, "cosine": cos.tolist(), "mean_cosine": float(cos.mean())}
        if vlm is not None:
            shifted = [g.words for g in ground_text(vlm, da.components_ + alpha * delta, cfg.top_words)]
            ov = [t_overlap(shifted[i], words_b[j]) for i, j in matching.pairs]
            row.update({"t_overlap": ov, "mean_t_overlap": float(np.mean(ov)), "shifted_words": shifted})
            if cfg.keywords is not None:
                kw = [100.0 * sum(cfg.keywords.matches(w) for w in ws) / max(1, len(ws)) for ws in shifted]
                row["keyword_share"] = float(np.mean(kw))
        recovery.append(row)
    at1 = next((r for r in recovery if abs(r["alpha"] - 1.0) < 1e-9), recovery[-1])
    at0 = next((r for r in recovery if abs(r["alpha"]) < 1e-9), recovery[0])
    gain = np.asarray(at1["cosine"]) - np.asarray(at0["cosine"])
    concepts = []
    target = matching.target_of()
    top_a = _top_samples(da.encode(a), store_a, common, cfg.top_images)
    top_b = _top_samples(db.encode(b), store_b, common, cfg.top_images)
    for i in range(cfg.k):
        c = {"index": i, "matched": target.get(i), "size": int((assign == i).sum()),
             "magnitude": float(magnitude[i]), "consistency": float(consist[i]),
             "recovery_cosine_alpha0": at0["cosine"][i], "recovery_cosine_alpha1": at1["cosine"][i],
             "top_samples": top_a[i], "matched_top_samples": top_b[target[i]] if i in target else []}
        if words_a is not None:
            c.update({"words": words_a[i], "matched_words": words_b[target[i]] if i in target else [],
                      "shifted_words": at1["shifted_words"][i],
                      "t_overlap_matched": t_overlap(words_a[i], words_b[target[i]]) if i in target else None})
        concepts.append(c)
    return {
        "layer": cfg.layer, "k": cfg.k, "method": cfg.method, "matching": cfg.matching, "n_common": len(common),
        "matched_cosine": matching.cosine, "concepts": concepts,
        "recovery": [{k: v for k, v in r.items() if k != "shifted_words"} for r in recovery],
        "mean_recovery_alpha0": at0["mean_cosine"], "mean_recovery_alpha1": at1["mean_cosine"],
        "correlation_magnitude_vs_gain": correlations(magnitude, gain),
        "correlation_consistency_vs_gain": correlations(consist, gain),
        "keyword_share_original": (float(np.mean([100.0 * sum(cfg.keywords.matches(w) for w in ws) / max(1, len(ws))
                                                  for ws in words_a])) if (words_a and cfg.keywords) else None),
    }


def _top_samples(acts: np.ndarray, store: FeatureStore, ids: list[str], n: int) -> list[list[dict]]:
    """Per concept, the ``n`` most activating of the aligned samples: id, image, response."""
    by_id = {r["id"]: r for r in store.records}
    out = []
    for k in range(acts.shape[1]):
        order = np.argsort(-acts[:, k], kind="stable")[:n]
        out.append([{"id": ids[m], "activation": float(acts[m, k]), "image": by_id[ids[m]].get("image"),
                     "image_digest": by_id[ids[m]].get("image_digest"), "response": by_id[ids[m]].get("response")}
                    for m in order])
    return out


def evolution(store_a: FeatureStore, checkpoints: dict[int, FeatureStore], cfg: ShiftConfig, vlm=None) -> list[dict]:
    """Matched-concept cosine and T-Overlap of the original vs each checkpoint, by step."""
    rows = []
    for step, st in sorted(checkpoints.items()):
        a, b, _ = aligned_features(store_a, st, cfg.layer)
        da = make_dictionary(cfg.method, cfg.k, seed=cfg.seed).fit(a)
        db = make_dictionary(cfg.method, cfg.k, seed=cfg.seed).fit(b)
        m = match_concepts(da.components_, db.components_, cfg.matching)
        row = {"step": step, "cosine": m.cosine, "mean_cosine": float(np.mean(m.cosine))}
        if vlm is not None:
            wa = [g.words for g in ground_text(vlm, da, cfg.top_words)]
            wb = [g.words for g in ground_text(vlm, db, cfg.top_words)]
            ov = [t_overlap(wa[i], wb[j]) for i, j in m.pairs]
            row.update({"t_overlap": ov, "mean_t_overlap": float(np.mean(ov))})
        rows.append(row)
    return rows


def with_changes(cfg: ShiftConfig, **changes) -> ShiftConfig:
    return ShiftConfig(**{**cfg.__dict__, **changes})
