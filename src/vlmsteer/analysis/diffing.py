"""Model diffing on paired stores (the same samples through an original and a fine-tuned model):
the activation difference lens (ADL, Minder et al. 2025): the mean difference of the two models'
features, over inputs that need not be related to the fine-tuning objective, read through the
model's final norm and unembedding. Its size beside the spread of the features says whether
fine-tuning changed anything there at all (a control fine-tune on unchanged data barely moves
it); its top words say what changed. And the paper's concept shift read the same way: the
original's concepts, each with the mean shift of its samples. The store's selector chooses the
token region (image tokens, prompt text, generated tokens). Every method gives a
:class:`Readout`: how much changed, and the parts of the change, ranked (the crosscoder and the
SAE on differences are in :mod:`vlmsteer.analysis.dictionary_diffing`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlmsteer.analysis.shift import BLOCK_ROWS, aligned_features, sample_shifts, shift_vectors
from vlmsteer.concepts import make_dictionary
from vlmsteer.errors import VlmsteerError
from vlmsteer.store import FeatureStore


@dataclass
class Paired:
    """Two stores' features of the samples present in both (same order), at one layer."""

    original: FeatureStore
    layer: int
    a: np.ndarray  # (n, hidden) the original model's, in the store's dtype
    b: np.ndarray  # (n, hidden) the fine-tuned model's
    ids: list[str]


def paired_features(original: FeatureStore, finetuned: FeatureStore, layer: int) -> Paired:
    a, b, ids = aligned_features(original, finetuned, layer)
    return Paired(original, original.layer_index(layer), a, b, ids)


def _means_and_spread(p: Paired) -> tuple[np.ndarray, np.ndarray, float]:
    """Both models' mean features and the RMS distance of the original's to their mean, in one
    pass of float64 blocks."""
    sum_a, sum_b, sq_a = np.zeros(p.a.shape[1]), np.zeros(p.a.shape[1]), 0.0
    for i in range(0, len(p.a), BLOCK_ROWS):
        xa, xb = np.asarray(p.a[i:i + BLOCK_ROWS], np.float64), np.asarray(p.b[i:i + BLOCK_ROWS], np.float64)
        sum_a += xa.sum(0)
        sum_b += xb.sum(0)
        sq_a += float((xa ** 2).sum())
    n = len(p.ids)
    mean_a = sum_a / n
    return mean_a, sum_b / n, float(np.sqrt(max(sq_a / n - float(mean_a @ mean_a), 0.0)))


NOISE_SPLITS = 20  # random half-splits the noise floor is the 95th percentile of


def noise_floor(p: Paired, seed: int = 0, splits: int = NOISE_SPLITS) -> float:
    """How far the original's mean features move when the inputs are resampled, in units of
    their spread: over ``splits`` random halves of the paired samples, the 95th percentile of
    ‖mean(half) − mean(other half)‖ / spread. A readout below it is within what choosing other
    inputs does to one and the same model: no change worth the name. One pass of float64 blocks
    (every split's half-sums at once); it shrinks as 2/√n with the number of samples."""
    n = len(p.ids)
    if n < 4:
        return float("inf")
    rng = np.random.default_rng(seed)
    halves = np.stack([rng.permutation(n) < n // 2 for _ in range(splits)]).astype(np.float64)  # (splits, n)
    first, total, squares = np.zeros((splits, p.a.shape[1])), np.zeros(p.a.shape[1]), 0.0
    for i in range(0, n, BLOCK_ROWS):
        xa = np.asarray(p.a[i:i + BLOCK_ROWS], np.float64)
        first += halves[:, i:i + len(xa)] @ xa
        total += xa.sum(0)
        squares += float((xa ** 2).sum())
    size = halves.sum(1, keepdims=True)
    gaps = np.linalg.norm(first / size - (total - first) / (n - size), axis=1)
    mean = total / n
    spread = float(np.sqrt(max(squares / n - float(mean @ mean), 0.0)))  # as _means_and_spread, same pass
    return float(np.quantile(gaps, 0.95) / max(spread, 1e-12))


@dataclass
class ActivationDifference:
    layer: int
    n_samples: int
    delta: np.ndarray  # (hidden,) mean(fine-tuned) − mean(original), float64
    spread: float  # RMS distance of the original's features to their mean

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.delta))

    @property
    def relative_norm(self) -> float:
        """‖Δ‖ / spread: how far the mean moved, in units of how far the features spread."""
        return self.norm / max(self.spread, 1e-12)


def activation_difference(p: Paired) -> ActivationDifference:
    """Mean difference (fine-tuned − original) of the paired samples."""
    mean_a, mean_b, spread = _means_and_spread(p)
    return ActivationDifference(p.layer, len(p.ids), mean_b - mean_a, spread)


@dataclass
class ConceptShifts:
    """The paper's concept shift as a diffing readout: the original model's concepts (K-Means),
    each with its shift vector (mean fine-tuned − original feature of its samples), ranked by
    size × shift."""

    layer: int
    n_samples: int
    sizes: np.ndarray  # (k,) samples per concept
    deltas: np.ndarray  # (k, hidden) shift vectors
    spread: float
    order: np.ndarray  # concepts, largest size × ‖Δ‖ first

    @property
    def relative_norm(self) -> float:
        """Mean shift size over samples (Σ size·‖Δ‖ / n) in units of the features' spread."""
        moved = float((self.sizes * np.linalg.norm(self.deltas, axis=1)).sum()) / max(1, self.n_samples)
        return moved / max(self.spread, 1e-12)


def concept_shifts(p: Paired, k: int = 10, seed: int = 0) -> ConceptShifts:
    if k > len(p.ids):  # (never clamped in silence: the readout would not be the one asked for)
        raise VlmsteerError(f"{k} concepts need at least {k} paired samples; the stores pair {len(p.ids)}", "k")
    assign = make_dictionary("kmeans", k, seed=seed).fit(p.a).assign(p.a)
    deltas = shift_vectors(p.a, p.b, assign, k)
    sizes = np.bincount(assign, minlength=k)
    order = np.argsort(-(sizes * np.linalg.norm(deltas, axis=1)), kind="stable")
    return ConceptShifts(p.layer, len(p.ids), sizes, deltas, _means_and_spread(p)[2], order)


@dataclass
class Part:
    """One ranked part of what changed."""

    name: str  # "adl", "shift:3" (concept 3's), "latent:17", "bias"
    vector: np.ndarray  # (hidden,) the change it makes where it acts, in the fine-tuned model: a steering vector
    size: float  # its mean size over all samples (‖vector‖ × the share of samples it acts on, or the mean)
    info: dict = field(default_factory=dict)  # the method's own figures (samples, decoder norms, scaling)


@dataclass
class Readout:
    """A diffing method's answer: how much changed (``relative_norm``, in units of the original
    features' spread) and the parts of the change, the readout (``parts[0]``) first."""

    method: str
    layer: int
    n_samples: int
    spread: float
    relative_norm: float
    parts: list[Part]
    scores: np.ndarray | None = None  # (n,) how strongly parts[0] acts per sample (None: the change along it)
    extra: dict = field(default_factory=dict)  # the method's own results (e.g. every latent's decoder norms)
    dictionary: object = None  # the crosscoder or SAE it trained, if any


def adl_readout(p: Paired) -> Readout:
    """The activation difference lens: one part, the mean difference."""
    diff = activation_difference(p)
    return Readout("adl", p.layer, diff.n_samples, diff.spread, diff.relative_norm,
                   [Part("adl", diff.delta, diff.norm)])


def concepts_readout(p: Paired, k: int = 10, seed: int = 0) -> Readout:
    """The paper's concept shift: a part per concept of the original (its samples' mean shift),
    ranked by samples × ‖Δ‖."""
    shifts = concept_shifts(p, k=k, seed=seed)
    norms = np.linalg.norm(shifts.deltas, axis=1)
    parts = [Part(f"shift:{i}", shifts.deltas[i], float(shifts.sizes[i] * norms[i]) / shifts.n_samples,
                  {"samples": int(shifts.sizes[i]), "‖Δ‖": float(norms[i])}) for i in shifts.order]
    return Readout("concepts", p.layer, shifts.n_samples, shifts.spread, shifts.relative_norm, parts)


def change_along(p: Paired, direction: np.ndarray) -> np.ndarray:
    """Per sample, its own change (fine-tuned − original feature) projected on ``direction``."""
    unit = np.asarray(direction, np.float64) / max(float(np.linalg.norm(direction)), 1e-12)
    return np.concatenate([block @ unit for block in sample_shifts(p.a, p.b, np.arange(len(p.ids)))])


def top_samples(p: Paired, scores: np.ndarray, n: int = 8) -> list[dict]:
    """The ``n`` samples of largest ``scores`` (a part's activation, or :func:`change_along`):
    id, score, image, prompt."""
    by_id = {r["id"]: r for r in p.original.records}
    return [{"id": p.ids[m], "score": float(scores[m]), "image": by_id[p.ids[m]].get("image"),
             "image_digest": by_id[p.ids[m]].get("image_digest"), "prompt": by_id[p.ids[m]].get("prompt")}
            for m in np.argsort(-np.asarray(scores), kind="stable")[:n]]
