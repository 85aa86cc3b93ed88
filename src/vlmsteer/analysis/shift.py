"""Fine-tuning shift: concept matching, shift vectors, recovery, consistency (paper §2).

Given features ``A`` (original model) and ``B`` (fine-tuned) of the same samples:

* dictionaries ``U_a``, ``U_b`` are matched one-to-one on cosine cost ``1 − cos`` —
  Hungarian by default, exact optimal transport (POT) as an option that also allows
  unequal K;
* the shift vector of concept k is ``Δ_k = mean_{m ∈ A_k} (b_m − a_m)`` over the samples
  assigned to ``u_a_k``; shifted concepts are ``u_a_k + α·Δ_k``;
* recovery compares shifted concepts with their matched fine-tuned concepts;
* magnitude ``‖Δ_k‖`` and consistency ``mean_m cos(δ_m, Δ_k)`` per concept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlmsteer.concepts.grounding import cosine_matrix
from vlmsteer.errors import VlmsteerError
from vlmsteer.extras import require
from vlmsteer.registry import Registry
from vlmsteer.store import FeatureStore, check_paired


@dataclass
class Matching:
    pairs: list[tuple[int, int]]  # (original concept, fine-tuned concept)
    cosine: list[float]
    method: str

    def target_of(self) -> dict[int, int]:
        return dict(self.pairs)


def _hungarian(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(cost)


def _optimal_transport(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ot = require("ot", "optimal-transport matching")
    k_a, k_b = cost.shape
    plan = ot.emd(np.full(k_a, 1.0 / k_a), np.full(k_b, 1.0 / k_b), cost)
    return np.arange(k_a), plan.argmax(axis=1)


MATCHINGS: Registry = Registry("matching method", "--matching")
MATCHINGS.add("hungarian", _hungarian, "one-to-one assignment minimising the summed cosine cost")
MATCHINGS.add("ot", _optimal_transport, "exact optimal transport with uniform marginals (vlmsteer[ot])")


def match_concepts(u_a: np.ndarray, u_b: np.ndarray, method: str = "hungarian") -> Matching:
    """One-to-one matching minimizing ``Σ (1 − cos)``. ``ot`` solves the exact transport
    problem with uniform marginals (equal to Hungarian when K_a = K_b) and, for unequal K,
    matches each original concept to the fine-tuned concept it sends most mass to."""
    sim = cosine_matrix(u_a, u_b)
    rows, cols = MATCHINGS.get(method)(1.0 - sim)
    pairs = [(int(r), int(c)) for r, c in zip(rows, cols)]
    return Matching(pairs=pairs, cosine=[float(sim[r, c]) for r, c in pairs], method=method)


def aligned_features(store_a: FeatureStore, store_b: FeatureStore, layer: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features of the samples present (with the token found) in both stores, same order, in
    the stores' own dtype (float16 stays float16: the analyses read them in float64 blocks)."""
    if store_a.hidden_size != store_b.hidden_size:
        raise VlmsteerError(f"stores have different hidden sizes ({store_a.hidden_size} vs {store_b.hidden_size}); "
                            "they come from different models")
    check_paired(store_a, store_b, "a fine-tuning shift", same_samples=True)
    layer = store_a.layer_index(layer)
    store_b.layer_index(layer)
    ia = {store_a.records[i]["id"]: int(i) for i in store_a.select()}
    ib = {store_b.records[i]["id"]: int(i) for i in store_b.select()}
    common = [k for k in ia if k in ib]
    if not common:
        raise VlmsteerError(f"{store_a.path} and {store_b.path} have no common samples")
    a = store_a.features(layer, indices=[ia[k] for k in common], dtype=None)
    b = store_b.features(layer, indices=[ib[k] for k in common], dtype=None)
    return a, b, common


BLOCK_ROWS = 4096


def sample_shifts(a: np.ndarray, b: np.ndarray, members: np.ndarray):
    """``b_m − a_m`` in float64, for the rows ``members``, a block at a time."""
    for i in range(0, len(members), BLOCK_ROWS):
        rows = members[i:i + BLOCK_ROWS]
        yield np.asarray(b[rows], dtype=np.float64) - np.asarray(a[rows], dtype=np.float64)


def shift_vectors(a: np.ndarray, b: np.ndarray, assignment: np.ndarray, k: int) -> np.ndarray:
    """``Δ_k`` = mean of ``b_m − a_m`` over samples assigned to concept k (zeros if none)."""
    delta = np.zeros((k, a.shape[1]))
    for c in range(k):
        members = np.flatnonzero(assignment == c)
        if len(members):
            delta[c] = sum(block.sum(0) for block in sample_shifts(a, b, members)) / len(members)
    return delta


def consistency(a: np.ndarray, b: np.ndarray, assignment: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Per concept, mean cosine between each sample's shift ``b_m − a_m`` and ``Δ_k``."""
    out = np.zeros(len(delta))
    for c in range(len(delta)):
        members = np.flatnonzero(assignment == c)
        if len(members):
            cosines = (cosine_matrix(block, delta[c:c + 1]).sum() for block in sample_shifts(a, b, members))
            out[c] = sum(cosines) / len(members)
    return out


def recovery_cosine(u_a: np.ndarray, delta: np.ndarray, u_b: np.ndarray, matching: Matching,
                    alpha: float) -> np.ndarray:
    """Cosine between each shifted concept ``u_a_k + α·Δ_k`` and its matched ``u_b``."""
    shifted = u_a + alpha * delta
    return np.array([cosine_matrix(shifted[i:i + 1], u_b[j:j + 1])[0, 0] for i, j in matching.pairs])


def correlations(x: np.ndarray, y: np.ndarray) -> dict:
    """Pearson and Spearman correlation with p-values (NaN where undefined)."""
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return {"pearson": float("nan"), "pearson_p": float("nan"), "spearman": float("nan"),
                "spearman_p": float("nan")}
    from scipy.stats import pearsonr, spearmanr  # (here: scipy.stats takes 0.5 s to import)

    p = pearsonr(x, y)
    s = spearmanr(x, y)
    return {"pearson": float(p.statistic), "pearson_p": float(p.pvalue), "spearman": float(s.statistic),
            "spearman_p": float(s.pvalue)}
