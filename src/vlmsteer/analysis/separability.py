"""Linear separability of concept features across layers (paper §4: deeper = more separable).

For each layer of a feature store: a cross-validated logistic-regression probe predicting a
label (e.g. the answer) from the features, its accuracy against the majority-class baseline,
and a 2-D PCA scatter coloured by label.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from vlmsteer.errors import VlmsteerError
from vlmsteer.data.filters import record_value
from vlmsteer.store import FeatureStore


@dataclass
class LayerSeparability:
    layer: int
    probe_accuracy: float  # mean cross-validated accuracy, %
    probe_accuracy_std: float
    pca_explained: list[float]  # variance ratio of the two plotted components


@dataclass
class SeparabilityResult:
    label: str
    labels: list[str]
    counts: dict[str, int]
    majority_baseline: float  # % of the most frequent label
    folds: int
    layers: list[LayerSeparability]
    n_samples: int = 0  # samples the probe saw
    n_labelled: int = 0  # samples with a value of the label; the rest of them were left out (rare labels)
    left_out_labels: int = 0  # labels left out: beyond --top, or fewer than --folds samples

    def to_dict(self) -> dict:
        return asdict(self)


def labelled_features(store: FeatureStore, label: str, top: int | None = None,
                      min_count: int = 2) -> tuple[np.ndarray, list[str]]:
    """Record indices and labels, keeping the ``top`` most frequent labels (all when None) with
    ``min_count``+ samples."""
    return _kept(*_labelled(store, label), store, label, top, min_count)


def _kept(keep_pairs: list[tuple[int, str]], counts: Counter, store: FeatureStore, label: str, top: int | None,
          min_count: int) -> tuple[np.ndarray, list[str]]:
    wanted = [v for v, c in counts.most_common(top) if c >= min_count]
    if len(wanted) < 2:
        raise VlmsteerError(f"{store.path}: need at least 2 values of {label!r} with {min_count}+ samples each, "
                            f"found {len(wanted)}")
    pairs = [(i, v) for i, v in keep_pairs if v in wanted]
    return np.asarray([i for i, _ in pairs]), [v for _, v in pairs]


def _labelled(store: FeatureStore, label: str) -> tuple[list[tuple[int, str]], Counter]:
    idx = store.select()
    labels = [record_value(store.records[i], label) for i in idx]
    pairs = [(i, str(v)) for i, v in zip(idx, labels) if v is not None and v != ""]
    return pairs, Counter(v for _, v in pairs)


def separability(store: FeatureStore, label: str = "answer", layers: list[int] | None = None,
                 top: int | None = None, folds: int = 5, seed: int = 0) -> SeparabilityResult:
    """Probe accuracy per layer over the samples whose label is one of the ``top`` most frequent
    (all when None) with at least ``folds`` samples; the result says how many were left out."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    layers = store.layers if layers is None else [store.layer_index(layer) for layer in layers]
    labelled, all_counts = _labelled(store, label)
    idx, y = _kept(labelled, all_counts, store, label, top, folds)
    counts = Counter(y)
    out = []
    for layer in layers:
        x = store.features(layer, indices=idx, dtype=np.float64)
        if not np.isfinite(x).all():
            raise VlmsteerError(f"{store.path}: layer {layer} has NaN or infinite features")
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        # one BLAS thread: the probe's small products run ~10x slower when OpenBLAS spreads them
        # over threads (measured: 4.1 s vs 0.4 s for 496 x 128 features, 22 labels)
        with threadpool_limits(1, user_api="blas"):
            scores = cross_val_score(probe, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
        pca = PCA(2, random_state=seed).fit(x)
        out.append(LayerSeparability(layer, 100.0 * float(scores.mean()), 100.0 * float(scores.std()),
                                     [float(v) for v in pca.explained_variance_ratio_]))
    return SeparabilityResult(label=label, labels=sorted(counts), counts=dict(counts),
                              majority_baseline=100.0 * max(counts.values()) / len(y), folds=folds, layers=out,
                              n_samples=len(y), n_labelled=len(labelled), left_out_labels=len(all_counts) - len(counts))


