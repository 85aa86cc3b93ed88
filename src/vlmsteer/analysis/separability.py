"""Linear separability of concept features across layers (paper §4: deeper = more separable).

For each layer of a feature store: a cross-validated logistic-regression probe predicting a
label (e.g. the answer) from the features, its accuracy against the majority-class baseline,
and a 2-D PCA scatter coloured by label.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vlmsteer.errors import VlmsteerError
from vlmsteer.store import FeatureStore, record_value


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

    def to_dict(self) -> dict:
        return asdict(self)


def labelled_features(store: FeatureStore, label: str, top: int | None = None,
                      min_count: int = 2) -> tuple[np.ndarray, list[str]]:
    """Record indices and labels, keeping the ``top`` most frequent labels with ``min_count``+ samples."""
    idx = store.select()
    labels = [record_value(store.records[i], label) for i in idx]
    keep_pairs = [(i, str(v)) for i, v in zip(idx, labels) if v is not None and v != ""]
    counts = Counter(v for _, v in keep_pairs)
    wanted = [v for v, c in counts.most_common(top) if c >= min_count]
    if len(wanted) < 2:
        raise VlmsteerError(f"{store.path}: need at least 2 values of {label!r} with {min_count}+ samples each, "
                            f"found {len(wanted)}")
    pairs = [(i, v) for i, v in keep_pairs if v in wanted]
    return np.asarray([i for i, _ in pairs]), [v for _, v in pairs]


def separability(store: FeatureStore, label: str = "answer", layers: list[int] | None = None,
                 top: int | None = 10, folds: int = 5, seed: int = 0) -> SeparabilityResult:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    layers = store.layers if layers is None else [store.layer_index(layer) for layer in layers]
    idx, y = labelled_features(store, label, top, min_count=folds)
    counts = Counter(y)
    out = []
    for layer in layers:
        x = store.features(layer, indices=idx, dtype=np.float64)
        if not np.isfinite(x).all():
            raise VlmsteerError(f"{store.path}: layer {layer} has NaN or infinite features")
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        scores = cross_val_score(probe, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
        pca = PCA(2, random_state=seed).fit(x)
        out.append(LayerSeparability(layer, 100.0 * float(scores.mean()), 100.0 * float(scores.std()),
                                     [float(v) for v in pca.explained_variance_ratio_]))
    return SeparabilityResult(label=label, labels=sorted(counts), counts=dict(counts),
                              majority_baseline=100.0 * max(counts.values()) / len(y), folds=folds, layers=out)


def write_separability(store: FeatureStore, result: SeparabilityResult, out: str | Path, seed: int = 0) -> Path:
    """``separability.json``, ``probe_accuracy.png`` and ``pca_layers.png`` in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "separability.json").write_text(json.dumps(result.to_dict(), indent=2))
    layers = [r.layer for r in result.layers]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(layers, [r.probe_accuracy for r in result.layers], "o-", label="linear probe")
    ax.axhline(result.majority_baseline, color="grey", ls="--", label="majority class")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"accuracy predicting {result.label} (%)")
    ax.set_ylim(0, 101)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "probe_accuracy.png", dpi=110)
    plt.close(fig)

    idx, y = labelled_features(store, result.label, len(result.labels), min_count=result.folds)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3.2), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(result.labels) <= 10 else "tab20")
    for ax, layer in zip(axes[0], layers):
        xy = PCA(2, random_state=seed).fit_transform(store.features(layer, indices=idx, dtype=np.float64))
        for k, lab in enumerate(result.labels):
            m = np.asarray([v == lab for v in y])
            ax.scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(k % cmap.N), label=lab)
        ax.set_title(f"layer {layer}")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    fig.savefig(out / "pca_layers.png", dpi=110)
    plt.close(fig)
    return out
