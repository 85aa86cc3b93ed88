"""Sweeps of a coarse vector over layers × alphas × regions × number of samples."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from vlmsteer.data.sample import Sample
from vlmsteer.evaluate.vqa import compare_runs
from vlmsteer.evaluate.vqa_run import run_vqa
from vlmsteer.model import VLM
from vlmsteer.progress import progress_bar
from vlmsteer.regions import Region
from vlmsteer.steer.builders import coarse_vector
from vlmsteer.steer.steerer import steer
from vlmsteer.store import FeatureStore


@dataclass
class SweepGrid:
    layers: Sequence[int]
    alphas: Sequence[float]
    regions: Sequence[Region]
    n_samples: Sequence[int | None]

    def __len__(self) -> int:
        return len(self.layers) * len(self.alphas) * len(self.regions) * len(self.n_samples)


def run_sweep(vlm: VLM, store: FeatureStore, source: dict[str, Any], target: dict[str, Any],
              samples: list[Sample], grid: SweepGrid, source_answer: str | None = None,
              target_answer: str | None = None, batch_size: int = 64, seed: int = 0) -> dict:
    base, base_rep = run_vqa(vlm, samples, batch_size=batch_size, max_new_tokens=3, progress=False)
    rows = []
    with progress_bar("sweep", len(grid)) as advance:
        for layer, n in itertools.product(grid.layers, grid.n_samples):
            vec = coarse_vector(store, source, target=target, layers=[layer], max_samples=n, seed=seed)
            for alpha, region in itertools.product(grid.alphas, grid.regions):
                preds, rep = run_vqa(vlm, samples, batch_size=batch_size, max_new_tokens=3, progress=False,
                                     context=lambda b: steer(vlm, vec, b, alpha=alpha, region=region))
                cmp = compare_runs(base, preds, source=source_answer, target=target_answer)
                rows.append({"layer": layer, "alpha": alpha, "region": region.value, "n_samples": n,
                             "vector_samples": vec.n_source + vec.n_target, "changed": cmp["changed"],
                             "moved_fraction": cmp.get("source_moved_fraction"),
                             "target_after": cmp.get("target", {}).get("after"),
                             "accuracy": rep.per_type,
                             "accuracy_delta": {t: rep.per_type[t] - base_rep.per_type[t] for t in rep.per_type}})
                advance(1)
    return {"baseline_accuracy": base_rep.per_type, "n": len(samples), "rows": rows,
            "target_before": compare_runs(base, base, target=target_answer).get("target", {}).get("before")}


def plot_sweep(result: dict, path: Path, metric: str = "moved_fraction") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_sweep(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(result, indent=2))
    plot_sweep(result, out / "sweep.png")
