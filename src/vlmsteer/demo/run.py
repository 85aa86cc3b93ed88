"""``vlmsteer demo``: the whole story on the shipped model, in a few CPU minutes.

Stages (each writes its own folder with ``run.json`` and JSON results):

1. data      a held-out shapes world (seed not used in training) and a small world for
             building vectors;
2. vqa       baseline VQA accuracy per answer type (official VQAv2 metric);
3. captions  baseline captions: every shape mentioned, style shares;
4. yes->no   a coarse steering vector (mean "no" features - mean "yes" features at the last
             prompt token), applied to held-out questions: answers moved, accuracy per type;
5. style     a caption-style vector (colour captions - plain captions, mean over response
             tokens), applied to generated tokens: style shares before/after;

and one HTML page (``index.html``) linking every report.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from vlmsteer.data import load_coco_captions, load_vqav2, shapes
from vlmsteer.data.sample import Sample
from vlmsteer.evaluate.shapes_captions import caption_report, load_scenes
from vlmsteer.evaluate.vqa import compare_runs
from vlmsteer.evaluate.vqa_run import run_vqa, write_vqa_outputs
from vlmsteer.extract import ExtractConfig, extract
from vlmsteer.model import VLM
from vlmsteer.progress import console
from vlmsteer.regions import Region
from vlmsteer.runinfo import write_run_json
from vlmsteer.runner import generate_responses
from vlmsteer.selectors import Selector
from vlmsteer.steer import steer
from vlmsteer.steer.builders import coarse_vector
from vlmsteer.steer.conditions import NearestConceptCondition


@dataclass
class DemoSettings:
    model: str = "shapes-llava"
    n_scenes: int = 400  # held-out scenes (about 9 questions each)
    seed: int = 7  # held-out world seed (training used 1000)
    vector_scenes: int = 120  # scenes used to build vectors (seed + 1)
    vector_samples: int = 500  # questions used to build the Yes->No vector and its concepts
    batch_size: int = 64
    yes_no_alpha: float = 1.0
    yes_no_region: str = "last_prompt"
    style: str = "colors"
    style_layer: int = 2
    style_alpha: float = 4.0
    style_region: str = "generated"
    caption_tokens: int = 32
    timings: dict = field(default_factory=dict)


def _stage(settings: DemoSettings, name: str, t0: float) -> None:
    settings.timings[name] = round(time.perf_counter() - t0, 1)
    console.print(f"[green]done[/green] {name} ({settings.timings[name]} s)")


def run_demo(out: str | Path, settings: DemoSettings | None = None, progress: bool = True) -> Path:
    s = settings or DemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    heldout = out / "data" / "heldout"
    build = out / "data" / "vectors"
    shapes.write_dataset(heldout, n=s.n_scenes, seed=s.seed)
    shapes.write_dataset(build, n=s.vector_scenes, seed=s.seed + 1)
    vlm = VLM.load(s.model)
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
                       ExtractConfig(layers=[last], selector=Selector("last_prompt"), batch_size=s.batch_size),
                       dataset={"format": "vqav2", "path": str(build)}, progress=progress)
    vec = coarse_vector(store, {"answer": "yes"}, target={"answer": "no"}, layers=[last])
    vec.save(out / "vectors" / "yes-to-no.safetensors")
    condition = NearestConceptCondition.from_store(store, last, field="answer", active_values=["yes"])
    region = Region.parse(s.yes_no_region)
    runs = {}
    for name, cond in (("coarse", None), ("fine-grained", condition)):
        preds, rep = run_vqa(vlm, questions, batch_size=s.batch_size, max_new_tokens=3, progress=progress,
                             context=lambda b, c=cond: steer(vlm, vec, b, alpha=s.yes_no_alpha, region=region,
                                                             condition=c))
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

    # -- caption style: vector from the model's own captions when asked for a style vs plain captions
    t0 = time.perf_counter()
    build_caps = load_coco_captions(build, prompt=shapes.CAPTION_PROMPT)
    styled = [Sample(f"{c.id}-{st}", c.image, shapes.STYLE_PROMPTS[st], meta={"style": st})
              for c in build_caps for st in (s.style, "plain")]
    cfg = ExtractConfig(layers=[s.style_layer], selector=Selector("mean_response"), mode="generate",
                        max_new_tokens=s.caption_tokens, batch_size=s.batch_size)
    style_store, _ = extract(vlm, styled, out / f"features-{s.style}-vs-plain", cfg, progress=progress)
    style_vec = coarse_vector(style_store, {"meta.style": "plain"}, target={"meta.style": s.style},
                              layers=[s.style_layer])
    style_vec.source, style_vec.target = "plain captions", f"{s.style} captions"
    style_vec.save(out / "vectors" / f"plain-to-{s.style}.safetensors")
    style_region = Region.parse(s.style_region)
    steered_caps = [r.text for r in generate_responses(
        vlm, caps, batch_size=s.batch_size, max_new_tokens=s.caption_tokens, progress=progress,
        description="steered captioning",
        context=lambda b: steer(vlm, style_vec, b, alpha=s.style_alpha, region=style_region))]
    caption_steered = caption_report(steered_caps, cap_scenes, [c.captions for c in caps])
    style_result = {"style": s.style, "alpha": s.style_alpha, "layer": s.style_layer, "region": style_region.value,
                    "vector_samples": style_vec.n_source + style_vec.n_target,
                    "before": caption_base, "after": caption_steered,
                    "captions_changed": sum(a != b for a, b in zip(base_caps, steered_caps))}
    _write_json(out / "captions-style" / "metrics.json", style_result)
    _write_jsonl(out / "captions-style" / "captions.jsonl",
                 [{"id": c.id, "baseline": a, "steered": b} for c, a, b in zip(caps, base_caps, steered_caps)])
    _stage(s, "caption-style steering", t0)

    s.timings["total"] = round(time.perf_counter() - t_all, 1)
    summary = {"settings": {k: v for k, v in s.__dict__.items() if k != "timings"}, "timings": s.timings,
               "vqa": base_report.to_dict(), "captions": caption_base, "yes_to_no": yes_no_result,
               "caption_style": style_result,
               "examples": _examples(caps, base_caps, steered_caps, questions, base_preds, steered_preds)}
    _write_json(out / "summary.json", summary)
    from vlmsteer.demo.page import write_page

    page = write_page(out, summary)
    write_run_json(out, options=summary["settings"], seed=s.seed, model_id=s.model)
    return page


def _examples(caps, base_caps, steered_caps, questions, base_preds, steered_preds, n=8) -> dict:
    qs = [{"image": q.image_path, "question": q.prompt, "answer": q.answer, "before": b, "after": a}
          for q, b, a in zip(questions, base_preds, steered_preds) if b != a][:n]
    cs = [{"image": c.image_path, "before": b, "after": a} for c, b, a in zip(caps, base_caps, steered_caps)
          if b != a][:n]
    return {"questions": qs, "captions": cs}


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
