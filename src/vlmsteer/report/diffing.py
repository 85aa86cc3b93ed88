"""``vlmsteer diff`` outputs: the readout (``diff.json``: how much changed, ranked words), the
differences as steering vectors and an HTML page, for each diffing method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vlmsteer.analysis.diffing import activation_difference, concept_shifts, paired_features, top_samples
from vlmsteer.concepts.grounding import ground_text
from vlmsteer.errors import VlmsteerError
from vlmsteer.outputs import atomic_write_json
from vlmsteer.report.section import Example, Section, Table, write_section
from vlmsteer.steer.vector import SteeringVector, save_vectors
from vlmsteer.store import FeatureStore

DIFF_METHODS = ("adl", "concepts")


def check_method(method: str) -> None:
    if method not in DIFF_METHODS:
        raise VlmsteerError(f"unknown diffing method {method!r}; choose one of: {', '.join(DIFF_METHODS)}", "method")


def run_diff(method: str, original: FeatureStore, finetuned: FeatureStore, layer: int, out: str | Path, vlm=None,
             top_words: int = 15, k: int = 10, seed: int = 0, top_images: int = 8) -> dict:
    """``method``'s readout between two stores at ``layer``: ``diff.json`` (the change in units
    of the features' spread, the ranked words, the samples that changed most along the readout's
    vector), ``diff.safetensors`` (the difference vectors: ``"adl"``, or ``"shift:i"`` per
    concept) and ``report.html``."""
    check_method(method)
    out = Path(out)
    paired = paired_features(original, finetuned, layer)

    def words(vectors: np.ndarray) -> list:
        if vlm is None:
            return [None] * len(vectors)
        return ground_text(vlm, vectors.astype(np.float32), top_n=top_words)

    def vector(delta: np.ndarray, n: int, target: str) -> SteeringVector:
        return SteeringVector({paired.layer: torch.as_tensor(delta, dtype=torch.float32)},
                              model_id=original.header.get("model_id"), hidden_size=len(delta),
                              method=f"diff-{method}", source="original model", target=target, n_source=n, n_target=n)

    if method == "adl":
        diff = activation_difference(paired)
        relative, spread = diff.relative_norm, diff.spread
        (top,) = words(diff.delta[None])
        direction = diff.delta
        vectors = {"adl": vector(diff.delta, len(paired.ids), "fine-tuned model")}
        rows, columns = [], []
    else:
        shifts = concept_shifts(paired, k=k, seed=seed)
        relative, spread = shifts.relative_norm, shifts.spread
        ranked = words(shifts.deltas[shifts.order])
        top, direction = ranked[0], shifts.deltas[shifts.order[0]]
        vectors = {f"shift:{i}": vector(shifts.deltas[i], int(shifts.sizes[i]), f"fine-tuned model, concept {i}")
                   for i in shifts.order}
        rows = [{"concept": int(i), "size": int(shifts.sizes[i]), "shift": float(np.linalg.norm(shifts.deltas[i])),
                 "words": g.words if g else []} for i, g in zip(shifts.order, ranked)]
        columns = ["rank", "concept", "samples", "‖Δ‖", "words of its shift"]
    result = {"method": method, "layer": paired.layer, "n_samples": len(paired.ids),
              "selector": original.header.get("selector"),
              "relative_norm": relative, "spread": spread, "words": top.words if top else [],
              "logits": top.logits if top else [], "concepts": rows,
              "top_samples": top_samples(paired, direction, top_images),
              "original": str(original.path), "finetuned": str(finetuned.path)}
    save_vectors(out / "diff.safetensors", vectors)
    atomic_write_json(out / "diff.json", result, indent=2)
    write_section(out, _section(result, columns))
    return result


def _section(result: dict, columns: list[str]) -> Section:
    selector = result["selector"]
    where = selector.get("kind", "?") if isinstance(selector, dict) else "the stores' positions"
    what = {"adl": "the mean of the fine-tuned model's features minus the original's (activation difference lens)",
            "concepts": "the original model's concepts (K-Means), each with the mean shift of its samples, ranked "
                        "by samples × shift; the readout is the top concept's shift"}[result["method"]]
    tables = [Table("top words of the readout", ["rank", "word", "logit"],
                    [[i + 1, w, f"{v:.2f}"] for i, (w, v) in enumerate(zip(result["words"], result["logits"]))])]
    if result["concepts"]:
        tables.append(Table("concepts by shift", columns,
                            [[r + 1, c["concept"], c["size"], f"{c['shift']:.3g}", ", ".join(c["words"][:8])]
                             for r, c in enumerate(result["concepts"])]))
    examples = [Example([("sample", str(t["id"])), ("prompt", str(t["prompt"])),
                         ("change along the readout", f"{t['projection']:.3g}")], t["image"], t["image_digest"])
                for t in result["top_samples"]]
    return Section(
        title=f"What fine-tuning changed: {result['method']}, layer {result['layer']}",
        examples=examples, examples_title="Samples that changed most along the readout's vector",
        intro=[f"Over the same {result['n_samples']} samples ({where}): {what}, read through the final norm and "
               f"unembedding. The change is {result['relative_norm']:.3f} of the features' spread "
               f"({result['spread']:.3g}): a fine-tune on unchanged data barely moves it. `diff.safetensors` holds "
               "the differences as steering vectors."],
        tables=tables)
