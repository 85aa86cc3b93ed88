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
from vlmsteer.report.section import Section, Table, write_section
from vlmsteer.store import FeatureStore

log = logging.getLogger(__name__)


def pyplot(what: str):
    """``matplotlib.pyplot`` on the file-only Agg backend with the house style, or None (with a
    warning) without matplotlib."""
    if not available("matplotlib"):
        log.warning('matplotlib is not installed: skipping %s (pip install "vlmsteer[plots]")', what)
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


# One style for every figure: readable sizes, a light grid, no top/right frame.
STYLE = {"figure.dpi": 110, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
         "legend.frameon": False}
MAX_COLOURED = 9  # categories with their own colour; the rest are drawn grey as "other"


def integer_ticks(axis) -> None:
    """Ticks at whole numbers only (layers, steps, K): never 0.5 or 1.5."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def categorical_colours(plt, n: int) -> list:
    """``n`` distinguishable colours from a qualitative palette (never a continuous colour bar),
    without its greys, which mean "other"."""
    if n <= 9:
        return [plt.get_cmap("tab10")(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)][:n]
    palette = [plt.get_cmap("tab20")(i) for i in range(20) if i not in (14, 15)]
    return [palette[i % len(palette)] for i in range(n)]


def _save(plt, fig, path: Path, dpi: int | None = None) -> Path:
    """Lay out, write and close one figure."""
    fig.tight_layout()
    fig.savefig(path, **({"dpi": dpi} if dpi else {}))
    plt.close(fig)
    return path


def _category_scatter(plt, ax, xy: np.ndarray, labels: list[str], names: dict[str, str] | None = None,
                      limit: int = MAX_COLOURED) -> None:
    """Points coloured by category: the ``limit`` most frequent each with a colour and a legend
    entry (``names`` may relabel them, and then also orders them), the rest grey as "other"."""
    from collections import Counter

    labels = [str(v) for v in labels]
    order = [v for v, _ in Counter(labels).most_common()]
    shown = order[:limit] if len(order) > limit + 1 else order
    if names:
        shown = [v for v in names if v in shown]
    arr = np.asarray(labels)
    rest = ~np.isin(arr, shown)
    if rest.any():
        ax.scatter(xy[rest, 0], xy[rest, 1], s=6, color="0.75", label=f"other ({len(order) - len(shown)} labels)")
    for colour, value in zip(categorical_colours(plt, len(shown)), shown):
        m = arr == value
        ax.scatter(xy[m, 0], xy[m, 1], s=8, color=colour, label=(names or {}).get(value, value))


def _pca_axes(ax, explained) -> None:
    ax.set_xlabel(f"PC 1 ({100 * explained[0]:.0f} % of variance)")
    ax.set_ylabel(f"PC 2 ({100 * explained[1]:.0f} % of variance)")
    ax.tick_params(labelsize=7)


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
    edit = result.get("edit")
    ax.set_xlabel({"clamp": "clamped value of the latent", "scale": "scale factor of the latent"}.get(
        (edit or {}).get("mode"), "steering strength α"))
    if metric == "moved_fraction":
        ax.set_ylabel("source answers moved to the target (share)")
        ax.set_ylim(0, 1.02)
    else:
        ax.set_ylabel(metric.replace("_", " "))
    what = f"{edit['method']} {edit['mode']} {', '.join(edit['latents'])}" if edit else "answers moved vs α"
    ax.set_title(f"{result.get('source', 'source')} → {result.get('target', 'target')}: {what}")
    ax.legend(title="layer, region, vector samples" if any(k[2] for k in series) else "layer, region")
    return _save(plt, fig, path)


def write_separability(store: FeatureStore, result: SeparabilityResult, out: str | Path, seed: int = 0) -> Path:
    """``separability.json``, ``probe_accuracy.png``, ``pca_layers.png`` and ``report.html`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "separability.json", result.to_dict(), durable=False, indent=2)
    _separability_figures(store, result, out, seed)
    write_section(out, separability_section(result))
    return out


def _separability_figures(store: FeatureStore, result: SeparabilityResult, out: Path, seed: int) -> None:
    from sklearn.decomposition import PCA

    plt = pyplot("probe_accuracy.png, pca_layers.png")
    if plt is None:
        return
    layers = [r.layer for r in result.layers]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.errorbar(layers, [r.probe_accuracy for r in result.layers], yerr=[r.probe_accuracy_std for r in result.layers],
                fmt="o-", capsize=3, label=f"linear probe (mean ± sd over {result.folds} folds)")
    ax.axhline(result.majority_baseline, color="grey", ls="--", label="majority class")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"accuracy predicting {result.label} (%)")
    ax.set_ylim(0, 101)
    integer_ticks(ax.xaxis)
    ax.set_title(f"separability of {result.label} ({result.n_samples} samples, {len(result.labels)} labels)")
    ax.legend(loc="lower right")
    _save(plt, fig, out / "probe_accuracy.png")

    idx, y = labelled_features(store, result.label, len(result.labels), min_count=result.folds)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.3 * len(layers) + 1.6, 3.4), squeeze=False)
    for ax, row in zip(axes[0], result.layers):
        pca = PCA(2, random_state=seed)
        _category_scatter(plt, ax, pca.fit_transform(store.features(row.layer, indices=idx, dtype=np.float64)), y)
        ax.set_title(f"layer {row.layer}: probe {row.probe_accuracy:.0f} %")
        _pca_axes(ax, pca.explained_variance_ratio_)
    axes[0][-1].legend(title=result.label, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    _save(plt, fig, out / "pca_layers.png")


def separability_section(result: SeparabilityResult) -> Section:
    """The report of a separability run: what the probe is, its accuracy per layer, the figures."""
    left_out = result.n_labelled - result.n_samples
    return Section(
        title=f"Linear separability of {result.label!r} across layers",
        intro=[f"A logistic-regression probe ({result.folds}-fold stratified cross-validation, standardized features) "
               f"predicts {result.label!r} from each layer's features of {result.n_samples} samples "
               f"({len(result.labels)} labels; the majority class alone would score "
               f"{result.majority_baseline:.1f} %). Higher accuracy at deeper layers means the concept is more "
               "linearly separable there."
               + (f" {left_out} of {result.n_labelled} samples were left out: their {result.left_out_labels} labels "
                  f"have fewer than {result.folds} samples or are beyond --top." if left_out else "")],
        tables=[Table("probe accuracy per layer", ["layer", "accuracy % (mean ± sd over folds)",
                                                   "PCA variance of the 2 plotted components"],
                      [[r.layer, f"{r.probe_accuracy:.1f} ± {r.probe_accuracy_std:.1f}",
                        f"{100 * sum(r.pca_explained):.0f} %"] for r in result.layers])],
        figures=[("probe_accuracy.png", "probe accuracy per layer (error bars: sd over folds)"),
                 ("pca_layers.png", f"features of each layer in their first two principal components, coloured by "
                                    f"{result.label}")])


def pca_plot(features: np.ndarray, labels: np.ndarray, path: Path, title: str,
             names: dict[int, str] | None = None) -> Path | None:
    """Features in their first two principal components, one colour per concept (``names``: a
    legend label per concept index, e.g. its top word)."""
    plt = pyplot(path.name)
    if plt is None:
        return None

    if len(features) > 2000:  # a seeded sample is enough for a scatter plot, and keeps the SVD small
        keep = np.sort(np.random.default_rng(0).choice(len(features), 2000, replace=False))
        features, labels = features[keep], np.asarray(labels)[keep]
    from sklearn.decomposition import PCA

    # only two components: the randomized solver, not a full SVD (seconds at 2000 × 4096)
    pca = PCA(2, svd_solver="randomized", random_state=0)
    xy = pca.fit_transform(np.asarray(features, dtype=np.float32))
    fig, ax = plt.subplots(figsize=(7, 5))
    _category_scatter(plt, ax, xy, [str(v) for v in labels],
                      {str(k): f"{k}: {v}" for k, v in (names or {}).items()}, limit=18)  # tab20 without its greys
    _pca_axes(ax, pca.explained_variance_ratio_)
    ax.set_title(title)
    ax.legend(title="concept", markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    return _save(plt, fig, path)


def shift_plots(result: dict, out: Path) -> list[str]:
    """The shift figures (recovery vs α, magnitude/consistency, evolution, layer and K
    ablations); their file names."""
    plt = pyplot("the shift figures")
    if plt is None:
        return []

    made = []
    main = result["main"]
    words = "mean_t_overlap" in main["recovery"][0]
    alphas = [r["alpha"] for r in main["recovery"]]
    fig, axes = plt.subplots(1, 2 if words else 1, figsize=(9.5 if words else 5, 3.6), squeeze=False)
    ax = axes[0][0]
    ax.plot(alphas, [r["mean_cosine"] for r in main["recovery"]], "o-", label="shifted original concepts")
    ax.axhline(main["mean_recovery_alpha0"], color="grey", ls="--", label="original concepts (α = 0)")
    ax.set_xlabel("α (original concept + α · shift vector)")
    ax.set_ylabel("cosine to the matched fine-tuned concept")
    ax.set_ylim(0, 1.02)
    ax.set_title("recovery of fine-tuned concepts: directions")
    ax.legend(loc="lower center")
    if words:
        ax = axes[0][1]
        ax.plot(alphas, [r["mean_t_overlap"] for r in main["recovery"]], "s-", color="C1",
                label="shifted original concepts")
        ax.set_xlabel("α (original concept + α · shift vector)")
        ax.set_ylabel("T-Overlap with the matched fine-tuned concept (%)")
        ax.set_ylim(0, 101)
        ax.set_title("recovery of fine-tuned concepts: grounded words")
        if "keyword_share" in main["recovery"][0]:
            ax.plot(alphas, [r["keyword_share"] for r in main["recovery"]], "^-", color="C2",
                    label="keyword share of their words (%)")
        ax.legend(loc="lower center")
    made.append(_save(plt, fig, out / "recovery_vs_alpha.png").name)

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6))
    gain = [c["recovery_cosine_alpha1"] - c["recovery_cosine_alpha0"] for c in main["concepts"]]
    for ax, key, label, corr in ((axes[0], "magnitude", "shift magnitude ‖Δ_k‖", "correlation_magnitude_vs_gain"),
                                 (axes[1], "consistency", "shift consistency (mean cosine of sample shifts to Δ_k)",
                                  "correlation_consistency_vs_gain")):
        ax.scatter([c[key] for c in main["concepts"]], gain, s=24, label="one concept")
        ax.set_xlabel(label)
        ax.set_ylabel("recovery gain (cosine at α = 1 − α = 0)")
        r = main.get(corr) or {}
        ax.set_title(f"gain vs {key}" + (f" (Pearson r = {r['pearson']:.2f})"
                                         if np.isfinite(r.get("pearson", np.nan)) else ""))
        ax.legend(loc="best")
    made.append(_save(plt, fig, out / "magnitude_consistency.png").name)

    if result.get("evolution"):
        rows = result["evolution"]
        words = "mean_t_overlap" in rows[0]
        fig, axes = plt.subplots(1, 2 if words else 1, figsize=(9.5 if words else 5, 3.6), squeeze=False)
        steps = [r["step"] for r in rows]
        ax = axes[0][0]
        ax.plot(steps, [r["mean_cosine"] for r in rows], "o-", label="matched concepts, mean cosine")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("cosine (original vs checkpoint)")
        if words:
            axes[0][1].plot(steps, [r["mean_t_overlap"] for r in rows], "s-", color="C1",
                            label="matched concepts, mean T-Overlap")
            axes[0][1].set_ylim(0, 101)
            axes[0][1].set_ylabel("T-Overlap, original vs checkpoint (%)")
        for ax in axes[0]:
            ax.set_xlabel("fine-tuning step")
            ax.set_xticks(steps)
            ax.set_title("how far the concepts moved during fine-tuning")
            ax.legend(loc="lower left")
        made.append(_save(plt, fig, out / "evolution.png").name)
    for key, name, xlabel in (("layers", "layers.png", "layer"), ("ks", "ks.png", "K (concepts per model)")):
        rows = result.get(key)
        if not rows:
            continue
        x = [r["layer" if key == "layers" else "k"] for r in rows]
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.plot(x, [r["mean_recovery_alpha1"] for r in rows], "o-", label="shifted concepts (α = 1)")
        ax.plot(x, [r["mean_recovery_alpha0"] for r in rows], "s--", label="original concepts (α = 0)")
        ax.set_xlabel(xlabel)
        ax.set_xticks(x)
        ax.set_ylabel("mean cosine to matched fine-tuned concept")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"recovery by {xlabel.split(' ')[0]}")
        ax.legend(loc="lower right")
        made.append(_save(plt, fig, out / name).name)
    return made


def decoder_norm_plot(relative: list[float], finetuned_only: float, path: Path) -> Path | None:
    """The histogram of a crosscoder's relative decoder norms (0: the original's latents, ½:
    shared, 1: the fine-tuned model's), with the fine-tuned-only threshold."""
    plt = pyplot("the decoder-norm histogram")
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.hist(relative, bins=np.linspace(0, 1, 41), color="C0")
    ax.axvline(finetuned_only, color="C3", ls="--", label=f"fine-tuned only (≥ {finetuned_only:g})")
    ax.set_xlabel("relative decoder norm  ½((‖d_ft‖ − ‖d_orig‖) / max + 1)")
    ax.set_ylabel("latents")
    ax.set_yscale("log")
    ax.set_title("whose latents: original (0), shared (½), fine-tuned (1)")
    ax.legend(loc="upper center")
    return _save(plt, fig, path)
