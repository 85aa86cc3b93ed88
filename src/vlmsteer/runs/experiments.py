"""The paper's applications as reusable experiments: caption style, neutralization
(debiasing), and refusal steering. Each takes a loaded model, samples and a folder, builds
its vectors from the model's own responses, applies them, and returns a JSON-ready result
(the demo page and the benchmarks call these).

* Caption style: ``mean(features of captions asked for the style) - mean(plain captions)``,
  mean over generated tokens (paper §3), added to generated tokens.
* Neutralization: an attribute (gender on real data; colour words in the shapes world) is
  steered away with a paired vector, ``mean(neutral captions) - mean(captions with the
  attribute)`` of the same images. Coarse: every caption is steered; fine-grained: only
  captions whose last-prompt feature falls in the "attribute" concept (nearest of two
  centroids) are.
* Refusal: ``mean(refused prompts) - mean(answered prompts)`` at the last prompt token,
  applied to harmful prompts; attack success rate before/after, and the same steering on
  benign questions (over-refusal) coarse vs fine-grained (only prompts in the "harmful"
  concept).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vlmsteer.data.keywords import KeywordSet
from vlmsteer.data.sample import Sample
from vlmsteer.errors import VlmsteerError
from vlmsteer.evaluate.captions import compare_caption_runs, evaluate_captions
from vlmsteer.evaluate.safety import compare_safety_runs, is_refusal, safety_report
from vlmsteer.extract import ExtractConfig, extract
from vlmsteer.model import VLM
from vlmsteer.positions import Region, Selector
from vlmsteer.runs.captions import run_captions
from vlmsteer.runs.generation import generate_responses
from vlmsteer.steer import Steering
from vlmsteer.steer.builders import coarse_vector
from vlmsteer.steer.conditions import NearestConceptCondition
from vlmsteer.steer.vector import SteeringVector


@dataclass
class GenerationSettings:
    batch_size: int = 64
    max_new_tokens: int = 32
    progress: bool = False


def generated_store(vlm: VLM, samples: list[Sample], out: Path, layers: list[int], selector: str,
                    g: GenerationSettings):
    """Features of the model's own responses to ``samples`` (generation-mode extraction)."""
    cfg = ExtractConfig(layers=layers, selector=Selector(selector), mode="generate",
                        max_new_tokens=g.max_new_tokens, batch_size=g.batch_size)
    store, _ = extract(vlm, samples, out, cfg, progress=g.progress)
    return store


def last_prompt_features(vlm: VLM, samples: list[Sample], out: Path, layer: int, g: GenerationSettings) -> np.ndarray:
    """(N, hidden) float64 features at ``layer``, last prompt token (one forward each: the prompt
    alone decides them, so the teacher-forced answer or caption does not matter)."""
    cfg = ExtractConfig(layers=[layer], selector=Selector("last_prompt"), batch_size=g.batch_size)
    store, _ = extract(vlm, samples, out, cfg, progress=g.progress)
    return store.features(layer, only_found=False, dtype=np.float64)


def style_vector(vlm: VLM, build: list[Sample], style_prompts: dict[str, str], style: str, layers: list[int],
                 out: Path, g: GenerationSettings = GenerationSettings()) -> SteeringVector:
    """``mean(captions asked for the style) - mean(plain captions)`` of the model's captions of
    ``build`` images (mean over generated tokens), for each of ``layers``."""
    samples = [Sample(f"{s.id}-{st}", s.image, style_prompts[st], meta={"style": st})
               for s in build for st in ("plain", style)]
    store = generated_store(vlm, samples, out / f"features-{style}-vs-plain", layers, "mean_response", g)
    vec = coarse_vector(store, "meta.style=plain", target=f"meta.style={style}", layers=layers)
    vec.source, vec.target = "plain captions", f"{style} captions"
    return vec


def caption_style(vlm: VLM, vector: SteeringVector, held: list[Sample], base_captions: list[str], style: str,
                  layer: int, alphas: list[float], g: GenerationSettings = GenerationSettings(),
                  quality: Callable[[list[str]], dict] | None = None, region: str = "generated") -> dict:
    """Held-out captions steered by ``vector`` at ``layer`` on ``region`` for each alpha: the
    style's share, CIDEr, captions changed; ``quality(captions)`` adds task-specific figures
    (e.g. every shape named). ``best``: the highest CIDEr among alphas raising the share by
    >= 30 points (else the largest rise)."""
    base = evaluate_captions(held, base_captions)
    rows = []
    for alpha in alphas:
        caps = run_captions(vlm, held, batch_size=g.batch_size, max_new_tokens=g.max_new_tokens, progress=g.progress,
                            steering=Steering(vector, alpha, (layer,), region))
        rep = evaluate_captions(held, caps)
        cmp = compare_caption_runs(base_captions, caps, base, rep)
        row = {"alpha": alpha, "share_before": base.style_share[style], "share_after": rep.style_share[style],
               "gained": cmp["styles"][style]["gained"], "cider_before": base.cider, "cider_after": rep.cider,
               "captions_changed": cmp["captions_changed"],
               "other_styles_after": {k: v for k, v in rep.style_share.items() if k != style},
               "example": next(({"before": b, "after": c} for b, c in zip(base_captions, caps) if b != c), None)}
        if quality:
            row.update({f"{k}_before": v for k, v in quality(base_captions).items()})
            row.update({f"{k}_after": v for k, v in quality(caps).items()})
        rows.append(row)

    def best_key(r: dict) -> tuple:
        rise = r["share_after"] - r["share_before"]
        return (True, r["cider_after"] or 0.0) if rise >= 30 else (False, rise)

    best = max(rows, key=best_key)
    return {"style": style, "layer": layer, "region": region, "vector": f"{vector.source} -> {vector.target}",
            "vector_samples": vector.n_source + vector.n_target, "rows": rows, "best": best}


def paired_neutral_vector(vlm: VLM, build: list[Sample], attribute: KeywordSet, neutral_prompt: str, layer: int,
                          out: Path, g: GenerationSettings = GenerationSettings()) -> SteeringVector:
    """``mean(neutral captions) - mean(captions expressing the attribute)`` over the same images:
    the model captions each ``build`` image with its own prompt and with ``neutral_prompt``;
    images whose own caption expresses the attribute and whose neutral one does not are kept
    (mean over generated tokens). Pairing removes what differs between images."""
    samples = [Sample(f"{s.id}|{kind}", s.image, prompt, meta={"kind": kind, "image": s.id})
               for s in build for kind, prompt in (("own", s.prompt), ("neutral", neutral_prompt))]
    store = generated_store(vlm, samples, out / f"features-{attribute.name}-paired", [layer], "mean_response", g)
    by_image: dict[str, dict[str, int]] = {}
    for i, r in enumerate(store.records):
        by_image.setdefault(r["meta"]["image"], {})[r["meta"]["kind"]] = i
    pairs = [(d["own"], d["neutral"]) for d in by_image.values()
             if attribute.matches(store.records[d["own"]]["response"])
             and not attribute.matches(store.records[d["neutral"]]["response"])]
    if not pairs:
        raise VlmsteerError(f"no build image has a caption with {attribute.name} words and a neutral one")
    own = store.features(layer, indices=[a for a, _ in pairs], dtype=np.float64).mean(0)
    neutral = store.features(layer, indices=[b for _, b in pairs], dtype=np.float64).mean(0)
    return SteeringVector({layer: torch.tensor(neutral - own, dtype=torch.float32)}, model_id=vlm.model_id,
                          method="coarse-paired", source=f"captions with {attribute.name} words",
                          target="neutral captions of the same images", n_source=len(pairs), n_target=len(pairs))


def neutralize(vlm: VLM, vector: SteeringVector, build: list[Sample], held: list[Sample], base_captions: list[str],
               attribute: KeywordSet, layer: int, alpha: float, out: Path, g: GenerationSettings = GenerationSettings(),
               faithful: Callable[[str, int], bool] | None = None) -> dict:
    """Turn captions that express ``attribute`` neutral with ``vector`` (e.g. from
    :func:`paired_neutral_vector`); coarse vs fine-grained side by side. The fine-grained
    condition is learnt from the model's captions of ``build``: their last-prompt features,
    grouped by whether the caption expresses the attribute.

    Figures per mode: see :func:`conversion`.
    """
    name = attribute.name
    with_attr, without = f"response~{name}", f"response!~{name}"
    vector.save(out / "vectors" / f"{name}-to-neutral.safetensors")
    prompt_feats = generated_store(vlm, build, out / f"features-{name}-prompts", [layer], "last_prompt", g)
    condition = NearestConceptCondition.from_filters(prompt_feats, layer, {name: with_attr, "neutral": without},
                                                     active=[name])
    before = [attribute.matches(c) for c in base_captions]
    result = {"attribute": name, "layer": layer, "alpha": alpha, "vector": f"{vector.source} -> {vector.target}",
              "vector_samples": vector.n_source + vector.n_target,
              "captions": len(held), "expressing_before": sum(before),
              "expressions_before": sum(len(attribute.find(c)) for c in base_captions)}
    for mode, cond in (("coarse", None), ("fine_grained", condition)):
        caps = run_captions(vlm, held, batch_size=g.batch_size, max_new_tokens=g.max_new_tokens, progress=g.progress,
                            steering=Steering(vector, alpha, region=Region.GENERATED, condition=cond))
        result[mode] = conversion(base_captions, caps, attribute, faithful)
    return result


def conversion(base_captions: list[str], captions: list[str], attribute: KeywordSet,
               faithful: Callable[[str, int], bool] | None = None) -> dict:
    """How steering changed captions w.r.t. ``attribute``: captions **converted** (the
    baseline expresses it, the steered caption does not; ``converted_faithful``: and still
    describes the image, by ``faithful(caption, index)``), expressions left, and how many of
    the captions that did not express it changed anyway."""
    before = [attribute.matches(c) for c in base_captions]
    converted = [i for i, (b, c) in enumerate(zip(before, captions)) if b and not attribute.matches(c)]
    ok = [i for i in converted if faithful is None or faithful(captions[i], i)]
    untouched = [i for i, b in enumerate(before) if not b]
    return {"converted": len(converted), "converted_faithful": len(ok),
            "expressions_after": sum(len(attribute.find(c)) for c in captions),
            "neutral_captions_changed": sum(base_captions[i] != captions[i] for i in untouched),
            "neutral_captions": len(untouched),
            "examples": [{"before": base_captions[i], "after": captions[i]} for i in ok[:4]]}


def refusal(vlm: VLM, build_unsafe: list[Sample], build_benign: list[Sample], held_unsafe: list[Sample],
            held_benign: list[Sample], layer: int, alpha: float, out: Path, g: GenerationSettings = GenerationSettings(),
            benign_ok: Callable[[list[str]], float] | None = None) -> dict:
    """Refusal vector from the model's refused vs answered harmful prompts; ASR on held-out
    harmful prompts, and over-refusal on benign prompts, coarse vs fine-grained."""
    unsafe_store = generated_store(vlm, build_unsafe, out / "features-unsafe", [layer], "last_prompt", g)
    vec = coarse_vector(unsafe_store, "response!~refusal", target="response~refusal", layers=[layer])
    vec.source, vec.target = "answered harmful prompts", "refused harmful prompts"
    vec.save(out / "vectors" / "answer-to-refusal.safetensors")
    # the "harmful request" concept vs ordinary questions, at the same layer and position
    benign = last_prompt_features(vlm, build_benign, out / "features-benign", layer, g)
    cents = np.stack([unsafe_store.features(layer, dtype=np.float64).mean(0), benign.mean(0)])
    condition = NearestConceptCondition(torch.tensor(cents, dtype=torch.float32), [0], ["harmful", "benign"])

    def answer(samples, cond=None, steered=True):
        steering = Steering(vec, alpha, region=Region.LAST_PROMPT, condition=cond) if steered else None
        return [r.text for r in generate_responses(vlm, samples, batch_size=g.batch_size, max_new_tokens=12,
                                                   steering=steering, progress=g.progress, description="answering")]

    base_unsafe, base_benign = answer(held_unsafe, steered=False), answer(held_benign, steered=False)
    cats = [s.meta.get("category") for s in held_unsafe]
    result = {"layer": layer, "alpha": alpha, "region": "last_prompt",
              "vector_samples": vec.n_source + vec.n_target, "harmful_prompts": len(held_unsafe),
              "benign_prompts": len(held_benign), "before": safety_report(base_unsafe, cats).to_dict(),
              "benign_refused_before": sum(map(is_refusal, base_benign))}
    if benign_ok:
        result["benign_accuracy_before"] = benign_ok(base_benign)
    for mode, cond in (("coarse", None), ("fine_grained", condition)):
        unsafe, benign = answer(held_unsafe, cond), answer(held_benign, cond)
        row = {"after": safety_report(unsafe, cats).to_dict(), "vs_baseline": compare_safety_runs(base_unsafe, unsafe),
               "benign_refused": sum(map(is_refusal, benign))}
        if benign_ok:
            row["benign_accuracy"] = benign_ok(benign)
        result[mode] = row
    return result
