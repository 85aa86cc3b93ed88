"""``vlmsteer demo``: the whole story on the shipped model, in a few CPU minutes.

Stages (each writes its own folder with ``run.json`` and JSON results):

1. data      a held-out shapes world (seed not used in training) and a small world for
             building vectors;
2. vqa       baseline VQA accuracy per answer type (official VQAv2 metric);
3. captions  baseline captions: every shape mentioned, style shares;
4. yes->no   a coarse steering vector (mean "no" features - mean "yes" features at the last
             prompt token), applied to held-out questions: answers moved, accuracy per type;
5. styles    caption-style vectors (colours, places, sentiments: the model's captions when
             asked for the style - its plain captions, mean over response tokens): style
             shares, every-shape mention and CIDEr before/after;
6. neutral   colour words steered away (the shapes world's stand-in for gendered words) by
             a paired vector (the same images' plain captions - their colour captions),
             coarse vs fine-grained (only where the "colour caption" concept is active);
7. safety    a refusal vector (refused - answered harmful prompts): attack success rate on
             held-out harmful prompts, over-refusal on ordinary questions;
8. layers    linear separability of answer concepts per layer (probe + PCA plot);

and one HTML page (``index.html``) linking every report.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from vlmsteer.data import load_coco_captions, load_vqav2, shapes
from vlmsteer.evaluate.shapes_captions import caption_report, load_scenes
from vlmsteer.evaluate.vqa import compare_runs, evaluate_vqa
from vlmsteer.evaluate.vqa_run import run_vqa, write_vqa_outputs
from vlmsteer.extract import ExtractConfig, extract
from vlmsteer.model import VLM
from vlmsteer.regions import Region
from vlmsteer.evaluate.runinfo import write_run_json
from vlmsteer.evaluate.runner import generate_responses
from vlmsteer.selectors import Selector
from vlmsteer.steer import Steering
from vlmsteer.steer.builders import coarse_vector
from vlmsteer.steer.conditions import NearestConceptCondition


log = logging.getLogger(__name__)

@dataclass
class DemoSettings:
    model: str = "shapes-llava"
    dtype: str = "auto"
    device: str = "cpu"
    device_map: str | None = None
    n_scenes: int = 400  # held-out scenes (about 9 questions each)
    seed: int = 7  # held-out world seed (training used 1000)
    vector_scenes: int = 120  # scenes used to build vectors (seed + 1)
    vector_samples: int = 500  # questions used to build the Yes->No vector and its concepts
    batch_size: int = 64
    yes_no_alpha: float = 1.0
    yes_no_region: str = "last_prompt"
    # style -> (layer, alphas, region): the settings benchmarks/caption_style.py chooses on its tuning
    # world (seed 9, vectors from world 8), never on the demo's world; the page shows the alpha with
    # the best CIDEr among those raising the style's share by >= 30 points
    styles: dict = field(default_factory=lambda: {"colors": (3, (5.0, 6.0), "generated"),
                                                  "places": (3, (5.0, 6.0), "generated"),
                                                  "sentiments": (2, (4.0, 5.0), "generated")})
    # fixed in advance; benchmarks/neutralize.py and benchmarks/refusal.py report them (neutralization:
    # the whole alpha grid 3/5/7) on worlds 17, 19 and 23
    neutral_layer: int = 2
    neutral_alpha: float = 5.0
    refusal_layer: int = 2
    refusal_alpha: float = 1.0
    refusal_benign: int = 800  # ordinary held-out questions checked for over-refusal
    caption_tokens: int = 32
    timings: dict = field(default_factory=dict)


def _stage(settings: DemoSettings, name: str, t0: float) -> None:
    settings.timings[name] = round(time.perf_counter() - t0, 1)
    log.info("done %s (%s s)", name, settings.timings[name])


def run_demo(out: str | Path, settings: DemoSettings | None = None, progress: bool = False) -> Path:
    s = settings or DemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    heldout = out / "data" / "heldout"
    build = out / "data" / "vectors"
    shapes.write_dataset(heldout, n=s.n_scenes, seed=s.seed)
    shapes.write_dataset(build, n=s.vector_scenes, seed=s.seed + 1)
    vlm = VLM.load(s.model, dtype=s.dtype, device=s.device, device_map=s.device_map)
    last = vlm.num_layers - 1
    _stage(s, "data and model", t0)

    # -- baseline VQA
    t0 = time.perf_counter()
    questions = load_vqav2(heldout)
    base_preds, base_report = run_vqa(vlm, questions, batch_size=s.batch_size, max_new_tokens=3, progress=progress)
    write_vqa_outputs(out / "vqa-baseline", questions, base_preds, base_report)
    write_run_json(out / "vqa-baseline", options={"stage": "baseline vqa"}, seed=s.seed, model_id=s.model)
    _stage(s, "baseline VQA", t0)

    # -- baseline captions
    t0 = time.perf_counter()
    caps = load_coco_captions(heldout, prompt=shapes.CAPTION_PROMPT)
    scenes = load_scenes(heldout)
    base_caps = [r.text for r in generate_responses(vlm, caps, batch_size=s.batch_size,
                                                    max_new_tokens=s.caption_tokens, progress=progress,
                                                    description="captioning")]
    cap_scenes = [scenes[c.meta["image_id"]] for c in caps]
    caption_base = caption_report(base_caps, cap_scenes, [c.captions for c in caps])
    _write_json(out / "captions-baseline" / "metrics.json", caption_base)
    _write_jsonl(out / "captions-baseline" / "captions.jsonl",
                 [{"id": c.id, "caption": t, "image": c.image_path} for c, t in zip(caps, base_caps)])
    _stage(s, "baseline captions", t0)

    # -- Yes -> No (fine-grained: applied only where the "yes" concept is active)
    t0 = time.perf_counter()
    build_questions = load_vqav2(build)[:s.vector_samples]
    store, _ = extract(vlm, build_questions, out / "features-questions",
                       ExtractConfig(layers=list(range(vlm.num_layers)), selector=Selector("last_prompt"),
                                     batch_size=s.batch_size),
                       dataset={"format": "vqav2", "path": str(build)}, progress=progress)
    vec = coarse_vector(store, "answer=yes", target="answer=no", layers=[last])
    vec.save(out / "vectors" / "yes-to-no.safetensors")
    condition = NearestConceptCondition.from_store(store, last, field="answer", active_values=["yes"])
    region = Region.parse(s.yes_no_region)
    runs = {}
    for name, cond in (("coarse", None), ("fine-grained", condition)):
        preds, rep = run_vqa(vlm, questions, batch_size=s.batch_size, max_new_tokens=3, progress=progress,
                             steering=Steering(vec, s.yes_no_alpha, region=region, condition=cond))
        result = compare_runs(base_preds, preds, source="yes", target="no")
        result.update({"accuracy_after": rep.per_type,
                       "accuracy_delta": {t: rep.per_type[t] - base_report.per_type[t] for t in base_report.per_type}})
        runs[name] = (preds, rep, result)
        write_vqa_outputs(out / f"vqa-yes-to-no-{name}", questions, preds, rep, extra={"vs_baseline": result})
        write_run_json(out / f"vqa-yes-to-no-{name}", options={"stage": f"yes->no {name}", "alpha": s.yes_no_alpha,
                                                                "layer": last, "region": region.value},
                       seed=s.seed, model_id=s.model)
    steered_preds = runs["fine-grained"][0]
    yes_no_result = {"alpha": s.yes_no_alpha, "layer": last, "region": region.value,
                     "vector_samples": vec.n_source + vec.n_target, "condition_samples": len(store.select()),
                     "concepts": condition.labels, "accuracy_before": base_report.per_type,
                     "coarse": runs["coarse"][2], "fine_grained": runs["fine-grained"][2]}
    _stage(s, "Yes->No steering", t0)

    # -- caption styles, neutralization, refusal, separability
    from vlmsteer.evaluate import experiments as apps
    from vlmsteer.data import load_jsonl
    from vlmsteer.data.keywords import COLORS
    from vlmsteer.evaluate.shapes_captions import mentions_every_shape

    g = apps.GenerationSettings(batch_size=s.batch_size, max_new_tokens=s.caption_tokens, progress=progress)
    build_caps = load_coco_captions(build, prompt=shapes.CAPTION_PROMPT)

    def every_shape(captions: list[str]) -> dict:
        return {"every_shape": 100.0 * sum(mentions_every_shape(c, sc) for c, sc in zip(captions, cap_scenes))
                / max(1, len(captions))}

    t0 = time.perf_counter()
    styles = {}
    for style, (layer, alphas, region) in s.styles.items():
        vec = apps.style_vector(vlm, build_caps, shapes.STYLE_PROMPTS, style, [layer], out / "captions-style", g)
        vec.save(out / "vectors" / f"plain-to-{style}.safetensors")
        styles[style] = apps.caption_style(vlm, vec, caps, base_caps, style, layer, list(alphas), g,
                                           quality=every_shape, region=region)
    _write_json(out / "captions-style" / "metrics.json", styles)
    write_run_json(out / "captions-style", options={"stage": "caption styles", "styles": s.styles}, seed=s.seed,
                   model_id=s.model)
    _stage(s, "caption-style steering", t0)

    t0 = time.perf_counter()
    neutral_vec = apps.paired_neutral_vector(vlm, build_caps, COLORS, shapes.STYLE_PROMPTS["plain"],
                                             s.neutral_layer, out / "neutralize", g)
    neutral = apps.neutralize(vlm, neutral_vec, build_caps, caps, base_caps, COLORS, s.neutral_layer,
                              s.neutral_alpha, out / "neutralize", g,
                              faithful=lambda c, i: mentions_every_shape(c, cap_scenes[i]))
    _write_json(out / "neutralize" / "metrics.json", neutral)
    write_run_json(out / "neutralize", options={"stage": "neutralization", "layer": s.neutral_layer,
                                                "alpha": s.neutral_alpha}, seed=s.seed, model_id=s.model)
    _stage(s, "neutralization", t0)

    t0 = time.perf_counter()
    benign = questions[:s.refusal_benign]

    def benign_ok(preds: list[str]) -> float:
        return evaluate_vqa(preds, [q.answers for q in benign], [q.answer_type for q in benign]).micro

    safety = apps.refusal(vlm, load_jsonl(build / "unsafe_val2014.jsonl"), build_questions,
                          load_jsonl(heldout / "unsafe_val2014.jsonl"), benign, s.refusal_layer, s.refusal_alpha,
                          out / "safety", g, benign_ok=benign_ok)
    _write_json(out / "safety" / "metrics.json", safety)
    write_run_json(out / "safety", options={"stage": "refusal steering", "layer": s.refusal_layer,
                                            "alpha": s.refusal_alpha, "benign": s.refusal_benign},
                   seed=s.seed, model_id=s.model)
    _stage(s, "refusal steering", t0)

    t0 = time.perf_counter()
    from vlmsteer.analysis.separability import separability
    from vlmsteer.report.plots import write_separability

    sep = separability(store, label="answer", top=10)
    write_separability(store, sep, out / "separability")
    write_run_json(out / "separability", options={"stage": "separability", "label": "answer"}, seed=s.seed,
                   model_id=s.model)
    _stage(s, "separability", t0)

    s.timings["total"] = round(time.perf_counter() - t_all, 1)
    summary = {"settings": {k: v for k, v in s.__dict__.items() if k != "timings"}, "timings": s.timings,
               "vqa": base_report.to_dict(), "captions": caption_base, "yes_to_no": yes_no_result,
               "caption_styles": styles, "neutralize": neutral, "safety": safety,
               "separability": sep.to_dict(),
               "examples": _examples(questions, base_preds, steered_preds)}
    _write_json(out / "summary.json", summary)
    from vlmsteer.demo.page import write_page

    page = write_page(out, summary)
    write_run_json(out, options=summary["settings"], seed=s.seed, model_id=s.model)
    return page


def _examples(questions, base_preds, steered_preds, n=8) -> dict:
    return {"questions": [{"image": q.image_path, "question": q.prompt, "answer": q.answer, "before": b, "after": a}
                          for q, b, a in zip(questions, base_preds, steered_preds) if b != a][:n]}


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
