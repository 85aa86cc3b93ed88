"""``vlmsteer demo``: the paper's whole story on the shipped model, in about a minute of CPU.

Stages (each writes its own folder with ``run.json``, its JSON results and a ``report.html``):

1. vqa         baseline VQA accuracy per answer type (official VQAv2 metric) on a held-out world;
2. concepts    a K-Means concept dictionary of last-prompt features, grounded in words (through
               the unembedding) and in images (most activating samples);
3. yes->no     a coarse steering vector (mean "no" − mean "yes" features at the last prompt
               token), applied to every question (coarse) or only where the "yes" concept is
               active (fine-grained): answers moved, accuracy per type;
4. captions    baseline captions, and caption-style vectors (colours, places, sentiments: the
               model's captions when asked for the style − its plain captions): style shares,
               every-shape mention, CIDEr before/after;
5. neutralize  colour words steered away (the shapes world's stand-in for gendered words) by a
               paired vector, coarse vs fine-grained;
6. safety      a refusal vector: attack success rate on held-out harmful prompts, over-refusal
               on ordinary questions;
7. shift       a short LoRA fine-tune toward colour captions; concepts of the original model
               matched to the fine-tuned model's, shift vectors, recovery vs α, evolution over
               checkpoints, an ablation over K;
8. hallucination  the testbed's organism (it learnt that beach scenes hold a yellow and a white circle):
               POPE and CHAIR beside the shipped model's on scenes that break the pattern, before
               and after the paper's coarse vectors (grounded − hallucinated) steer it back;
9. layers      linear separability of the answers per layer (probe + PCA).

``index.html`` links every report; it is written after each stage, so a reader sees the first
sections while the rest run. Each stage runs on a world sized for a first look; the figures
over held-out worlds and seeds are in ``benchmarks/``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlmsteer.data import load_coco_captions, load_jsonl, load_vqav2, shapes
from vlmsteer.data.keywords import COLORS, filter_samples
from vlmsteer.demo import sections
from vlmsteer.demo.page import STAGES, write_page
from vlmsteer.runs import experiments as apps
from vlmsteer.runs.runinfo import write_run_json
from vlmsteer.runs.generation import generate_responses
from vlmsteer.evaluate.shapes_captions import caption_report, load_scenes, mentions_every_shape
from vlmsteer.evaluate.vqa import compare_runs, evaluate_vqa
from vlmsteer.runs.vqa import run_vqa, write_vqa_outputs
from vlmsteer.extract import ExtractConfig, extract
from vlmsteer.model import VLM
from vlmsteer.organisms import HALLUCINATION_RECIPE
from vlmsteer.outputs import atomic_write_json
from vlmsteer.positions import Region
from vlmsteer.report.runs import write_eval_report
from vlmsteer.report.section import write_section
from vlmsteer.positions import Selector
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
    n_scenes: int = 120  # held-out scenes (about 9 questions and one caption each)
    seed: int = 7  # held-out world seed (training used 1000)
    vector_scenes: int = 80  # scenes used to build vectors and concepts (seed + 1)
    vector_samples: int = 500  # questions used to build the Yes->No vector and the concepts
    batch_size: int = 64
    yes_no_alpha: float = 1.0
    yes_no_region: str = "last_prompt"
    concepts_k: int = 12
    # style -> (layer, alphas, region): the settings benchmarks/caption_style.py chooses on its tuning
    # world (seed 9, vectors from world 8), never on the demo's world
    styles: dict = field(default_factory=lambda: {"colors": (3, (6.0,), "generated"),
                                                  "places": (3, (6.0,), "generated"),
                                                  "sentiments": (2, (5.0,), "generated")})
    # fixed in advance; benchmarks/neutralize.py and benchmarks/refusal.py report them (neutralization:
    # the whole alpha grid 3/5/7) on worlds 17, 19 and 23
    neutral_layer: int = 2
    neutral_alpha: float = 5.0
    refusal_layer: int = 2
    refusal_alpha: float = 1.0
    refusal_benign: int = 300  # ordinary held-out questions checked for over-refusal
    caption_tokens: int = 32
    # the fine-tuning shift: LoRA toward colour captions of the vector world, checkpoints every
    # shift_save_every steps; concepts of the held-out captions at shift_layer
    shift_steps: int = 90
    shift_save_every: int = 30
    shift_seed: int = 0
    shift_layer: int = 3
    shift_k: int = 10
    shift_ks: tuple = (5, 10, 15)
    # the hallucination organism's seed; its training and its coarse vectors' settings are
    # organisms.HALLUCINATION_RECIPE (chosen by benchmarks/hallucination.py on its tuning world, 30)
    halluc_seed: int = 14
    halluc_vector_scenes: int = 200  # the co-occurring world the answer vector is built on


def run_demo(out: str | Path, settings: DemoSettings | None = None, progress: bool = False) -> Path:
    """Run every stage into ``out``; returns ``out/index.html``."""
    s = settings or DemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    demo = _Demo(s, out, progress)
    for stage in STAGES:
        t0 = time.perf_counter()
        demo.summary["running"] = stage.key
        write_page(out, demo.summary)
        getattr(demo, stage.key)()
        demo.summary["timings"][stage.title] = round(time.perf_counter() - t0, 1)
        log.info("done %s (%s s)", stage.title, demo.summary["timings"][stage.title])
    demo.summary["timings"]["total"] = round(time.perf_counter() - demo.t_all, 1)
    demo.summary.pop("running")
    atomic_write_json(out / "summary.json", demo.summary, durable=False, indent=2)
    write_run_json(out, options=demo.summary["settings"], seed=s.seed, model_id=s.model)
    return write_page(out, demo.summary)


class _Demo:
    """The stages, in order; each adds its results to ``summary`` and writes its folder."""

    def __init__(self, s: DemoSettings, out: Path, progress: bool):
        self.s, self.out, self.progress = s, out, progress
        self.t_all = time.perf_counter()
        self.summary: dict = {"settings": asdict(s), "timings": {}}
        self.g = apps.GenerationSettings(batch_size=s.batch_size, max_new_tokens=s.caption_tokens, progress=progress)

    def _record(self, folder: str, stage: str, **options) -> None:
        write_run_json(self.out / folder, options={"stage": stage, **options}, seed=self.s.seed, model_id=self.s.model)

    def _load(self, adapter=None) -> VLM:
        s = self.s
        return VLM.load(s.model, adapter=adapter, dtype=s.dtype, device=s.device, device_map=s.device_map)

    def vqa(self) -> None:
        s, out = self.s, self.out
        self.heldout, self.build = out / "data" / "heldout", out / "data" / "vectors"
        shapes.write_dataset(self.heldout, n=s.n_scenes, seed=s.seed)
        shapes.write_dataset(self.build, n=s.vector_scenes, seed=s.seed + 1)
        self.vlm = self._load()
        self.last = self.vlm.num_layers - 1
        self.questions = load_vqav2(self.heldout)
        self.base_preds, self.base_report = run_vqa(self.vlm, self.questions, batch_size=s.batch_size,
                                                    max_new_tokens=3, progress=self.progress)
        write_vqa_outputs(out / "vqa-baseline", self.questions, self.base_preds, self.base_report)
        self._record("vqa-baseline", "baseline vqa")
        write_eval_report(out / "vqa-baseline", "vqa")
        self.summary["vqa"] = self.base_report.to_dict()
        self.summary["world"] = {"questions": len(self.questions), "scenes": s.n_scenes}

    def concepts(self) -> None:
        from vlmsteer.runs.concepts import ConceptRun, run_concepts

        s = self.s
        self.build_questions = load_vqav2(self.build)[:s.vector_samples]
        self.store, _ = extract(self.vlm, self.build_questions, self.out / "features-questions",
                                ExtractConfig(layers=list(range(self.vlm.num_layers)),
                                              selector=Selector("last_prompt"), batch_size=s.batch_size),
                                dataset={"format": "vqav2", "path": str(self.build)}, progress=self.progress)
        result = run_concepts(self.store, self.out / "concepts",
                              ConceptRun(k=s.concepts_k, layer=self.last, seed=s.seed, top_images=6), vlm=self.vlm)
        self._record("concepts", "concepts", k=s.concepts_k, layer=self.last)
        self.summary["concepts"] = {k: v for k, v in result.items() if k != "concepts"} | {
            "concepts": [{"index": c["index"], "size": c["size"], "words": c["words"][:6]} for c in result["concepts"]]}

    def yes_no(self) -> None:
        s, out = self.s, self.out
        vec = coarse_vector(self.store, "answer=yes", target="answer=no", layers=[self.last])
        vec.save(out / "yes-to-no" / "yes-to-no.safetensors")
        condition = NearestConceptCondition.from_store(self.store, self.last, field="answer", active_values=["yes"])
        region = Region.parse(s.yes_no_region)
        runs = {}
        for name, cond in (("coarse", None), ("fine-grained", condition)):
            preds, rep = run_vqa(self.vlm, self.questions, batch_size=s.batch_size, max_new_tokens=3,
                                 progress=self.progress,
                                 steering=Steering(vec, s.yes_no_alpha, region=region, condition=cond))
            result = compare_runs(self.base_preds, preds, source="yes", target="no")
            result.update({"accuracy_after": rep.per_type,
                           "accuracy_delta": {t: rep.per_type[t] - self.base_report.per_type[t]
                                              for t in self.base_report.per_type}})
            runs[name] = (preds, result)
            write_vqa_outputs(out / "yes-to-no" / name, self.questions, preds, rep, extra={"vs_baseline": result})
        result = {"alpha": s.yes_no_alpha, "layer": self.last, "region": region.value,
                  "vector_samples": vec.n_source + vec.n_target, "condition_samples": len(self.store.select()),
                  "concepts": condition.labels, "accuracy_before": self.base_report.per_type,
                  "coarse": runs["coarse"][1], "fine_grained": runs["fine-grained"][1]}
        atomic_write_json(out / "yes-to-no" / "metrics.json", result, durable=False, indent=2)
        self._record("yes-to-no", "yes->no", alpha=s.yes_no_alpha, layer=self.last, region=region.value)
        write_section(out / "yes-to-no", sections.yes_no(result, self.questions, self.base_preds,
                                                          runs["fine-grained"][0]))
        self.summary["yes_to_no"] = result
        self.summary["examples"] = sections.changed_answers(self.questions, self.base_preds, runs["fine-grained"][0],
                                                            n=4)

    def captions(self) -> None:
        s, out = self.s, self.out
        self.caps = load_coco_captions(self.heldout, prompt=shapes.CAPTION_PROMPT)
        scenes = load_scenes(self.heldout)
        self.cap_scenes = [scenes[c.meta["image_id"]] for c in self.caps]
        self.base_caps = [r.text for r in generate_responses(self.vlm, self.caps, batch_size=s.batch_size,
                                                             max_new_tokens=s.caption_tokens, progress=self.progress,
                                                             description="captioning")]
        base = caption_report(self.base_caps, self.cap_scenes, [c.captions for c in self.caps])
        self.build_caps = load_coco_captions(self.build, prompt=shapes.CAPTION_PROMPT)

        def every_shape(captions: list[str]) -> dict:
            return {"every_shape": 100.0 * sum(mentions_every_shape(c, sc) for c, sc in zip(captions, self.cap_scenes))
                    / max(1, len(captions))}

        styles = {}
        for style, (layer, alphas, region) in s.styles.items():
            vec = apps.style_vector(self.vlm, self.build_caps, shapes.STYLE_PROMPTS, style, [layer],
                                    out / "captions", self.g)
            vec.save(out / "captions" / "vectors" / f"plain-to-{style}.safetensors")
            styles[style] = apps.caption_style(self.vlm, vec, self.caps, self.base_caps, style, layer, list(alphas),
                                               self.g, quality=every_shape, region=region)
        atomic_write_json(out / "captions" / "metrics.json", {"baseline": base, "styles": styles}, durable=False,
                          indent=2)
        atomic_write_json(out / "captions" / "baseline-captions.json",
                          [{"id": c.id, "caption": t, "image": c.image_path}
                           for c, t in zip(self.caps, self.base_caps)],
                          durable=False, indent=2)
        self._record("captions", "captions and styles", styles=s.styles)
        write_section(out / "captions", sections.captions(base, styles, self.caps, self.base_caps))
        self.summary["captions"], self.summary["caption_styles"] = base, styles

    def neutralize(self) -> None:
        s, out = self.s, self.out
        vec = apps.paired_neutral_vector(self.vlm, self.build_caps, COLORS, shapes.STYLE_PROMPTS["plain"],
                                         s.neutral_layer, out / "neutralize", self.g)
        result = apps.neutralize(self.vlm, vec, self.build_caps, self.caps, self.base_caps, COLORS, s.neutral_layer,
                                 s.neutral_alpha, out / "neutralize", self.g,
                                 faithful=lambda c, i: mentions_every_shape(c, self.cap_scenes[i]))
        atomic_write_json(out / "neutralize" / "metrics.json", result, durable=False, indent=2)
        self._record("neutralize", "neutralization", layer=s.neutral_layer, alpha=s.neutral_alpha)
        write_section(out / "neutralize", sections.neutralize(result))
        self.summary["neutralize"] = result

    def safety(self) -> None:
        s, out = self.s, self.out
        benign = self.questions[:s.refusal_benign]

        def benign_ok(preds: list[str]) -> float:
            return evaluate_vqa(preds, [q.answers for q in benign], [q.answer_type for q in benign]).micro

        result = apps.refusal(self.vlm, load_jsonl(self.build / "unsafe_val2014.jsonl"), self.build_questions,
                              load_jsonl(self.heldout / "unsafe_val2014.jsonl"), benign, s.refusal_layer,
                              s.refusal_alpha, out / "safety", self.g, benign_ok=benign_ok)
        atomic_write_json(out / "safety" / "metrics.json", result, durable=False, indent=2)
        self._record("safety", "refusal steering", layer=s.refusal_layer, alpha=s.refusal_alpha,
                     benign=s.refusal_benign)
        write_section(out / "safety", sections.safety(result))
        self.summary["safety"] = result

    def shift(self) -> None:
        from vlmsteer.finetune import FinetuneConfig, finetune
        from vlmsteer.runs.shift import ShiftConfig, run_shift

        s, out = self.s, self.out / "shift"
        training = filter_samples(self.build_caps, COLORS, "captions")
        tuned = finetune(self._load(), training, out / "finetune",
                         FinetuneConfig(steps=s.shift_steps, save_every=s.shift_save_every, seed=s.shift_seed,
                                        target="caption"), progress=self.progress)
        config = ExtractConfig(layers=[s.shift_layer], selector=Selector("mean_response"), mode="generate",
                               batch_size=s.batch_size, max_new_tokens=s.caption_tokens)

        def features(name: str, vlm: VLM):
            return extract(vlm, self.caps, out / "stores" / name, config, progress=self.progress,
                           dataset={"format": "coco", "path": str(self.heldout)})[0]

        original = features("original", self.vlm)
        steps = list(range(s.shift_save_every, s.shift_steps, s.shift_save_every))
        checkpoints = {step: features(f"step-{step}", self._load(out / "finetune" / f"checkpoint-{step}"))
                       for step in steps}
        checkpoints[s.shift_steps] = final = features("final", self._load(out / "finetune" / "final"))
        result = run_shift(original, final, out, ShiftConfig(layer=s.shift_layer, k=s.shift_k, seed=s.shift_seed,
                                                             keywords=COLORS),
                           vlm=self.vlm, checkpoints=checkpoints, ks=s.shift_ks)
        self._record("shift", "fine-tuning shift", steps=s.shift_steps, layer=s.shift_layer, k=s.shift_k)
        main = result["main"]
        self.summary["shift"] = {
            "training_texts": tuned["samples"], "steps": s.shift_steps,
            "loss": [tuned["first_loss"], tuned["last_loss"]],
            "layer": main["layer"], "k": main["k"], "images": main["n_common"],
            "recovery": [{k: r[k] for k in ("alpha", "mean_cosine", "mean_t_overlap", "keyword_share") if k in r}
                         for r in main["recovery"]],
            "keyword_share_original": main["keyword_share_original"],
            "evolution": [{k: e[k] for k in ("step", "mean_cosine", "mean_t_overlap") if k in e}
                          for e in result.get("evolution", [])],
            "ks": [{k: a[k] for k in ("k", "mean_recovery_alpha0", "mean_recovery_alpha1")} for a in result["ks"]],
            "plots": result["plots"]}

    def hallucination(self) -> None:
        from vlmsteer.demo.hallucination import run_hallucination

        result, mended = run_hallucination(self)
        atomic_write_json(self.out / "hallucination" / "metrics.json", {**result, "mended": mended}, durable=False,
                          indent=2)
        self._record("hallucination", "hallucination", seed=self.s.halluc_seed, **asdict(HALLUCINATION_RECIPE))
        write_section(self.out / "hallucination", sections.hallucination(result, mended))
        self.summary["hallucination"] = result

    def layers(self) -> None:
        from vlmsteer.analysis.separability import separability
        from vlmsteer.report.plots import write_separability

        sep = separability(self.store, label="answer", seed=self.s.seed)
        write_separability(self.store, sep, self.out / "separability", seed=self.s.seed)
        self._record("separability", "separability", label="answer")
        self.summary["separability"] = sep.to_dict()
