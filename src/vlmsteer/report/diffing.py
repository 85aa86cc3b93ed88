"""``vlmsteer diff`` outputs: the readout (``diff.json``), the difference as a steering vector
and an HTML page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vlmsteer.analysis.diffing import activation_difference
from vlmsteer.concepts.grounding import ground_text
from vlmsteer.outputs import atomic_write_json
from vlmsteer.report.section import Section, Table, write_section
from vlmsteer.steer.vector import SteeringVector, save_vectors
from vlmsteer.store import FeatureStore


def run_adl(original: FeatureStore, finetuned: FeatureStore, layer: int, out: str | Path, vlm=None,
            top_words: int = 15) -> dict:
    """The activation difference lens between two stores at ``layer``: ``diff.json`` (its size
    and top words), ``adl.safetensors`` (the difference as the vector ``"adl"``) and ``report.html``."""
    out = Path(out)
    diff = activation_difference(original, finetuned, layer)
    words = ground_text(vlm, diff.delta[None].astype(np.float32), top_n=top_words)[0] if vlm is not None else None
    selector = original.header.get("selector")
    result = {"method": "adl", "layer": diff.layer, "n_samples": diff.n_samples, "selector": selector,
              "norm": diff.norm, "spread": diff.spread, "relative_norm": diff.relative_norm,
              "words": words.words if words else [], "logits": words.logits if words else [],
              "original": str(original.path), "finetuned": str(finetuned.path)}
    vector = SteeringVector({diff.layer: torch.as_tensor(diff.delta, dtype=torch.float32)},
                            model_id=original.header.get("model_id"), hidden_size=len(diff.delta), method="adl",
                            source="original model", target="fine-tuned model", n_source=diff.n_samples,
                            n_target=diff.n_samples)
    save_vectors(out / "adl.safetensors", {"adl": vector})
    atomic_write_json(out / "diff.json", result, indent=2)
    where = (selector or {}).get("kind", "the stores' positions") if isinstance(selector, dict) else str(selector)
    write_section(out, Section(
        title=f"What fine-tuning changed: activation difference lens, layer {diff.layer}",
        intro=[f"The mean of the fine-tuned model's features minus the original's over the same {diff.n_samples} "
               f"samples ({where}), read through the final norm and unembedding. Its size is "
               f"{diff.relative_norm:.3f} of the features' spread (‖Δ‖ {diff.norm:.3g}, spread {diff.spread:.3g}): "
               "a fine-tune on unchanged data barely moves it. `adl.safetensors` holds it as a steering vector "
               "(add it to the original model to see what the fine-tuned one says)."],
        tables=[Table("top words of the difference", ["rank", "word", "logit"],
                      [[i + 1, w, f"{v:.2f}"] for i, (w, v) in enumerate(zip(result["words"], result["logits"]))])]))
    return result
