"""``vlmsteer diff``: a diffing method's readout between two models' stores, published as
``diff.json``, ``diff.safetensors``, the trained dictionary and ``report.html``. :func:`diff` is
the command itself, callable from Python."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from vlmsteer.analysis.dictionary_diffing import DictionaryOptions
from vlmsteer.analysis.diffing import Readout, change_along, noise_floor, paired_features, top_samples
from vlmsteer.analysis.diffing_methods import DIFF_METHODS, DiffSettings
from vlmsteer.concepts.grounding import ground_text
from vlmsteer.outputs import atomic_write_json
from vlmsteer.report.diffing import diff_section
from vlmsteer.report.plots import decoder_norm_plot
from vlmsteer.report.section import write_section
from vlmsteer.errors import VlmsteerError
from vlmsteer.runs.models import grounding_identity, load_head, open_store
from vlmsteer.runs.protocol import RunSpec, claim, publish, run_identity, write_run_json
from vlmsteer.steer.vector import SteeringVector, save_vectors
from vlmsteer.store import FeatureStore, check_paired

SHOWN_PARTS = 30  # parts grounded in words and listed


def readout(method: str, original: FeatureStore, finetuned: FeatureStore, layer: int, k: int = 10, seed: int = 0,
            options: DictionaryOptions | None = None) -> tuple[Readout, object]:
    """``method``'s readout of the two stores at ``layer``, and the paired features it read."""
    chosen = DIFF_METHODS.get(method)
    paired = paired_features(original, finetuned, layer)
    return chosen.readout(paired, DiffSettings(k, seed, options or DictionaryOptions(seed=seed))), paired


def run_diff(method: str, original: FeatureStore, finetuned: FeatureStore, layer: int, out: str | Path, vlm=None,
             top_words: int = 15, k: int = 10, seed: int = 0, top_images: int = 8,
             options: DictionaryOptions | None = None) -> dict:
    """``method``'s readout between two stores at ``layer``: ``diff.json`` (the change in units
    of the features' spread, the ranked parts with their words, the samples where the readout
    acts most), ``diff.safetensors`` (each part as a steering vector, by its name: ``"adl"``,
    ``"shift:i"``, ``"bias"``, ``"latent:j"``), ``dictionary.safetensors`` (the crosscoder or SAE)
    and ``report.html``."""
    out = Path(out)
    r, paired = readout(method, original, finetuned, layer, k=k, seed=seed, options=options)
    shown = r.parts[:SHOWN_PARTS]
    words = ground_text(vlm, np.stack([p.vector for p in shown]).astype(np.float32), top_n=top_words) if vlm \
        else [None] * len(shown)
    scores = r.scores if r.scores is not None else change_along(paired, r.parts[0].vector)
    parts = [{"name": p.name, "size": p.size, "relative_size": p.size / max(r.spread, 1e-12), **p.info,
              "words": g.words if g else []} for p, g in zip(shown, words)]
    floor = noise_floor(paired, seed)
    result = {"method": method, "layer": r.layer, "n_samples": r.n_samples, "selector": original.header.get("selector"),
              "relative_norm": r.relative_norm, "spread": r.spread, "noise_floor": floor,
              "changed": bool(r.relative_norm > floor), "readout": r.parts[0].name,
              "words": words[0].words if words[0] else [], "logits": words[0].logits if words[0] else [],
              "parts": parts, "n_parts": len(r.parts), "top_samples": top_samples(paired, scores, top_images),
              "top_samples_by": "activation" if r.scores is not None else "change along the readout",
              **r.extra, "original": str(original.path), "finetuned": str(finetuned.path)}
    vectors = {p.name: SteeringVector({r.layer: torch.as_tensor(p.vector, dtype=torch.float32)},
                                      model_id=original.header.get("model_id"), hidden_size=len(p.vector),
                                      method=f"diff-{method}", source="original model",
                                      target=f"fine-tuned model ({p.name})", n_source=r.n_samples,
                                      n_target=int(p.info.get("samples", r.n_samples)))
               for p in r.parts}
    save_vectors(out / "diff.safetensors", vectors)
    if r.dictionary is not None:
        r.dictionary.save(out / "dictionary.safetensors", layer=r.layer, original=str(original.path),
                          finetuned=str(finetuned.path))
    figures = []
    if "relative_decoder_norms" in r.extra and decoder_norm_plot(
            r.extra["relative_decoder_norms"], r.extra["finetuned_only_threshold"], out / "decoder_norms.png"):
        figures.append(("decoder_norms.png", "Relative decoder norm of every crosscoder latent"))
    atomic_write_json(out / "diff.json", result, indent=2)
    write_section(out, diff_section(result, figures))
    return result




def diff(original: str | Path, finetuned: str | Path, out: str | Path = Path("runs/diff"), *, method: str = "adl",
         layer: Optional[int] = None, k: int = 10, latents: Optional[int] = None, l0: Optional[int] = None,
         epochs: Optional[int] = None, top_words: int = 15, top_images: int = 8, model: Optional[str] = None,
         no_words: bool = False, seed: int = 0, allow_partial: bool = False, dtype: str = "auto", device: str = "cpu",
         device_map: Optional[str] = None, overwrite: bool = False, progress: bool = True) -> dict:
    """``vlmsteer diff`` from Python: the same options (by the same names and defaults), the same
    published folder and ``run.json``, the same refusals (an option the method does not take, a
    rerun with other settings unless ``overwrite``). Returns the ``diff.json`` record."""
    spec = RunSpec.of_call("vlmsteer diff", {k_: v for k_, v in locals().items() if k_ != "progress"},
                           paths=("original", "finetuned", "out"))
    DIFF_METHODS.check_options(method, {"k": k if k != 10 else None, "latents": latents, "l0": l0, "epochs": epochs})
    a, b = open_store(Path(original), allow_partial), open_store(Path(finetuned), allow_partial)
    absolute = a.layer_index(layer) if layer is not None else max(a.layers)
    b.layer_index(absolute)
    check_paired(a, b, "model diffing", same_samples=True)
    with publish(Path(out), overwrite) as pub:
        name = model or a.header.get("model_id")
        if not (name or no_words):
            raise VlmsteerError(f"{original} names no model to read words with: pass --model or --no-words")
        vlm = None if no_words else load_head(name, dtype, device, device_map)
        claim(pub, run_identity(spec, original=a.fingerprint, finetuned=b.fingerprint,
                                grounding=grounding_identity(vlm, a)))
        result = run_diff(method, a, b, absolute, pub.stage, vlm=vlm, top_words=top_words, k=k, seed=seed,
                          top_images=top_images, options=DictionaryOptions(latents, l0, epochs, seed, progress=progress))
        write_run_json(pub, spec, model_id=a.header.get("model_id"))
    return result
