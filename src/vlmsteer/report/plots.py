"""Every figure vlmsteer draws (matplotlib, PNG), and the writers of outputs that include one.

matplotlib is optional (the ``plots`` extra): without it each figure is skipped with one
warning naming the extra, and the JSON next to it is still written.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from vlmsteer.analysis.separability import SeparabilityResult, labelled_features
from vlmsteer.extras import available
from vlmsteer.outputs import atomic_write_json
from vlmsteer.store import FeatureStore

log = logging.getLogger(__name__)


def pyplot(what: str):
    """``matplotlib.pyplot`` on the file-only Agg backend, or None (with a warning) without matplotlib."""
    if not available("matplotlib"):
        log.warning('matplotlib is not installed: skipping %s (pip install "vlmsteer[plots]")', what)
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path, dpi: int | None = None) -> Path:
    """Lay out, write and close one figure."""
    fig.tight_layout()
    fig.savefig(path, **({"dpi": dpi} if dpi else {}))
    plt.close(fig)
    return path


def write_sweep(result: dict, out: str | Path) -> None:
    """``sweep.json`` and ``sweep.png`` (share of source answers moved, per layer/region/samples, vs alpha)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "sweep.json", result, durable=False, indent=2)
    plot_sweep(result, out / "sweep.png")


def plot_sweep(result: dict, path: Path, metric: str = "moved_fraction") -> Path | None:
    plt = pyplot(path.name)
    if plt is None:
        return None

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=110)
    series: dict[tuple, list[tuple[float, float]]] = {}
    for r in result["rows"]:
        value = r[metric] if r[metric] is not None else float(r["changed"]) / result["n"]
        series.setdefault((r["layer"], r["region"], r["n_samples"]), []).append((r["alpha"], value))
    for (layer, region, n), pts in sorted(series.items(), key=lambda kv: str(kv[0])):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                label=f"layer {layer}, {region}" + (f", n={n}" if n else ""))
    ax.set_xlabel("alpha")
    ax.set_ylabel("share of source answers moved to the target" if metric == "moved_fraction" else metric)
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def write_separability(store: FeatureStore, result: SeparabilityResult, out: str | Path, seed: int = 0) -> Path:
    """``separability.json``, ``probe_accuracy.png`` and ``pca_layers.png`` in ``out``."""
    from sklearn.decomposition import PCA

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "separability.json", result.to_dict(), durable=False, indent=2)
    plt = pyplot("probe_accuracy.png, pca_layers.png")
    if plt is None:
        return out
    layers = [r.layer for r in result.layers]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(layers, [r.probe_accuracy for r in result.layers], "o-", label="linear probe")
    ax.axhline(result.majority_baseline, color="grey", ls="--", label="majority class")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"accuracy predicting {result.label} (%)")
    ax.set_ylim(0, 101)
    ax.legend()
    _save(plt, fig, out / "probe_accuracy.png", dpi=110)

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
    _save(plt, fig, out / "pca_layers.png", dpi=110)
    return out


def pca_plot(features: np.ndarray, labels: np.ndarray, path: Path, title: str) -> Path | None:
    plt = pyplot(path.name)
    if plt is None:
        return None

    if len(features) > 2000:  # a seeded sample is enough for a scatter plot, and keeps the SVD small
        keep = np.sort(np.random.default_rng(0).choice(len(features), 2000, replace=False))
        features, labels = features[keep], np.asarray(labels)[keep]
    from sklearn.decomposition import PCA

    # only two components: the randomized solver, not a full SVD (seconds at 2000 × 4096)
    xy = PCA(2, svd_solver="randomized", random_state=0).fit_transform(np.asarray(features, dtype=np.float32))
    fig, ax = plt.subplots(figsize=(6, 5), dpi=110)
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab20", s=8)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    fig.colorbar(sc, ax=ax, label="concept")
    return _save(plt, fig, path)


def shift_plots(result: dict, out: Path) -> list[str]:
    """The shift figures (recovery vs alpha, magnitude/consistency, evolution, layers); their names."""
    plt = pyplot("the shift figures")
    if plt is None:
        return []

    made = []
    main = result["main"]
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=110)
    alphas = [r["alpha"] for r in main["recovery"]]
    ax.plot(alphas, [r["mean_cosine"] for r in main["recovery"]], marker="o", label="cosine to matched fine-tuned")
    if "mean_t_overlap" in main["recovery"][0]:
        ax2 = ax.twinx()
        ax2.plot(alphas, [r["mean_t_overlap"] for r in main["recovery"]], marker="s", color="C1", label="T-Overlap")
        ax2.set_ylabel("T-Overlap")
    ax.set_xlabel("alpha")
    ax.set_ylabel("mean recovery cosine")
    ax.set_title("recovery of fine-tuned concepts vs alpha")
    made.append(_save(plt, fig, out / "recovery_vs_alpha.png").name)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), dpi=110)
    gain = [c["recovery_cosine_alpha1"] - c["recovery_cosine_alpha0"] for c in main["concepts"]]
    axes[0].scatter([c["magnitude"] for c in main["concepts"]], gain)
    axes[0].set_xlabel("shift magnitude ‖Δ_k‖")
    axes[0].set_ylabel("recovery gain (cos at α=1 − α=0)")
    axes[1].scatter([c["consistency"] for c in main["concepts"]], gain)
    axes[1].set_xlabel("shift consistency")
    made.append(_save(plt, fig, out / "magnitude_consistency.png").name)

    if result.get("evolution"):
        fig, ax = plt.subplots(figsize=(5.5, 4), dpi=110)
        steps = [r["step"] for r in result["evolution"]]
        key = "mean_t_overlap" if "mean_t_overlap" in result["evolution"][0] else "mean_cosine"
        ax.plot(steps, [r[key] for r in result["evolution"]], marker="o")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel(key.replace("_", " "))
        ax.set_title("matched concepts: original vs checkpoint")
        made.append(_save(plt, fig, out / "evolution.png").name)
    if result.get("layers"):
        fig, ax = plt.subplots(figsize=(5.5, 4), dpi=110)
        rows = result["layers"]
        ax.plot([r["layer"] for r in rows], [r["mean_recovery_alpha1"] for r in rows], marker="o", label="α = 1")
        ax.plot([r["layer"] for r in rows], [r["mean_recovery_alpha0"] for r in rows], marker="s", label="α = 0")
        ax.set_xlabel("layer")
        ax.set_ylabel("mean recovery cosine")
        ax.legend()
        made.append(_save(plt, fig, out / "layers.png").name)
    return made
