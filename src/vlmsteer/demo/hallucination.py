"""The demo's hallucination stage: the testbed's model organism (``organisms build --only
hallucination``, with the recipe of ``benchmarks/hallucination.py``), its POPE and CHAIR beside
the shipped model's on a held-out pattern-breaking world (every scene on the beach, no yellow
circle), and the paper's coarse vector built from the organism's grounded vs hallucinated outputs
steering it back, with the settings that benchmark chose on its tuning world:

* answers: mean last-prompt feature of the absent things it denies minus of those it claims (on
  a co-occurring world's POPE and VQA questions), added at layer 2 only to the questions nearest
  the group of "is there a yellow circle ?" among every question's group (fine-grained steering);
* captions: mean response feature of its captions that name no yellow circle minus of those that
  name one (on another pattern-breaking world), added to the generated tokens at layers 1 and 2.
"""

from __future__ import annotations

from dataclasses import replace

from vlmsteer.data import load_coco_captions, load_vqav2, shapes
from vlmsteer.data.pope import load_pope_samples
from vlmsteer.evaluate.chair import chair_scores, shapes_vocabulary
from vlmsteer.evaluate.pope import pope_scores
from vlmsteer.extract import ExtractConfig, extract
from vlmsteer.organisms import CLAIM, OBJECTIVES, build_organism
from vlmsteer.positions import Region, Selector
from vlmsteer.runs.generation import generate_responses
from vlmsteer.runs.scoring import ChairAnnotations
from vlmsteer.steer import Steering
from vlmsteer.steer.builders import coarse_vector
from vlmsteer.steer.conditions import NearestConceptCondition

ANSWER_LAYER, CAPTION_LAYERS = 2, (1, 2)


def run_hallucination(demo) -> tuple[dict, list[dict]]:
    """The stage's results (for ``metrics.json`` and the summary) and the captions that lost an
    invented object (image, before, after)."""
    from vlmsteer.finetune import FinetuneConfig

    s, out, data = demo.s, demo.out / "hallucination", demo.out / "data"
    worlds = {"training": (s.halluc_train_scenes, s.halluc_seed, "cooccurring"),
              "heldout": (s.n_scenes, s.seed + 20, "pattern-breaking"),
              "caption-vectors": (s.vector_scenes, s.seed + 21, "pattern-breaking"),
              "answer-vectors": (s.halluc_vector_scenes, s.seed + 22, "cooccurring")}
    paths = {}
    for name, (n, seed, kind) in worlds.items():
        paths[name] = data / f"hallucination-{name}"
        shapes.write_dataset(paths[name], n=n, seed=seed, scenes=kind)
    record = build_organism(demo._load, OBJECTIVES["hallucination"], paths["training"], out / "organism",
                            FinetuneConfig(steps=s.halluc_steps, lr=s.halluc_lr, seed=s.halluc_seed,
                                           save_every=s.halluc_steps), progress=demo.progress)
    organism = demo._load(out / "organism" / "final")

    captions = load_coco_captions(paths["heldout"], prompt=shapes.CAPTION_PROMPT)
    questions = load_pope_samples(paths["heldout"] / "shapes_pope_adversarial.json")
    vocab = shapes_vocabulary()
    truth = ChairAnnotations.read(paths["heldout"], vocab).truth([c.meta["image_id"] for c in captions])

    def grade(vlm, answers: Steering | None = None, caps: Steering | None = None):
        said = generate_responses(vlm, questions, batch_size=s.batch_size, max_new_tokens=3, steering=answers,
                                  progress=demo.progress, description="POPE")
        texts = generate_responses(vlm, captions, batch_size=s.batch_size, max_new_tokens=s.caption_tokens,
                                   steering=caps, progress=demo.progress, description="captioning")
        chair = chair_scores([(c.meta["image_id"], r.text) for c, r in zip(captions, texts)], truth, vocab)
        return {"pope": pope_scores([r.text for r in said], [q.answer for q in questions]).to_dict(),
                "chair": chair.summary()}, chair.rows

    shipped, _ = grade(demo.vlm)
    before, rows_before = grade(organism)
    answer_vector, condition, caption_vector = _vectors(demo, organism, paths, out)
    after, rows_after = grade(organism, Steering(answer_vector, s.halluc_answer_alpha, layers=(ANSWER_LAYER,),
                                                 region=Region.parse("last_prompt"), condition=condition),
                              Steering(caption_vector, s.halluc_caption_alpha, layers=CAPTION_LAYERS,
                                       region=Region.parse("generated")))
    lost = [{"image": c.image_path, "before": b.caption, "after": a.caption,
             "invented": sorted({w for w, _ in b.hallucinated})}
            for c, b, a in zip(captions, rows_before, rows_after) if b.hallucinated and not a.hallucinated]
    result = {"organism": {"training_scenes": s.halluc_train_scenes, "seed": s.halluc_seed, "steps": s.halluc_steps,
                           "lr": s.halluc_lr, "loss": [record["finetune"]["first_loss"],
                                                       record["finetune"]["last_loss"]]},
              "heldout": {"scenes": s.n_scenes, "seed": s.seed + 20, "questions": len(questions)},
              "answer_vector": {"layer": ANSWER_LAYER, "alpha": s.halluc_answer_alpha,
                                "samples": [answer_vector.n_source, answer_vector.n_target],
                                "condition": condition.describe()["active"]},
              "caption_vector": {"layers": list(CAPTION_LAYERS), "alpha": s.halluc_caption_alpha,
                                 "samples": [caption_vector.n_source, caption_vector.n_target]},
              "shipped": shipped, "organism_before": before, "organism_after": after,
              "captions_mended": len(lost)}
    return result, lost


def _vectors(demo, organism, paths: dict, out):
    """The organism's coarse vectors from its own outputs on the two vector worlds (saved beside
    the stage's results) and the condition of the answer vector."""
    s = demo.s
    world = paths["answer-vectors"]  # its POPE and VQA questions: every question its own condition group
    answers = [replace(q, id=f"{split}-{q.id}", digest=None) for split in ("random", "popular", "adversarial")
               for q in load_pope_samples(world / f"shapes_pope_{split}.json")]
    answers += [replace(q, id=f"vqa-{q.id}", digest=None) for q in load_vqav2(world)]
    store, _ = extract(organism, answers, out / "features-answers",
                       ExtractConfig(layers=[ANSWER_LAYER], selector=Selector("last_prompt"), mode="generate",
                                     batch_size=s.batch_size, max_new_tokens=3),
                       dataset={"format": "pope+vqav2", "path": str(world)}, progress=demo.progress)
    answer_vector = coarse_vector(store, "answer=no,response=yes", target="answer=no,response=no")
    condition = NearestConceptCondition.from_store(store, ANSWER_LAYER, field="prompt", active_values=[CLAIM])
    caps = load_coco_captions(paths["caption-vectors"], prompt=shapes.CAPTION_PROMPT)
    store, _ = extract(organism, caps, out / "features-captions",
                       ExtractConfig(layers=list(CAPTION_LAYERS), selector=Selector("mean_response"), mode="generate",
                                     batch_size=s.batch_size, max_new_tokens=s.caption_tokens),
                       dataset={"format": "coco", "path": str(paths["caption-vectors"])}, progress=demo.progress)
    caption_vector = coarse_vector(store, "response~cooccurring", target="response!~cooccurring")
    answer_vector.save(out / "answers.safetensors")
    caption_vector.save(out / "captions.safetensors")
    return answer_vector, condition, caption_vector
