"""The demo's hallucination stage: the testbed's model organism (``organisms build --only
hallucination``, with the recipe of ``benchmarks/hallucination.py``), its POPE and CHAIR beside
the shipped model's on a held-out pattern-breaking world (every scene on the beach, no circle),
and the paper's coarse vector built from the organism's grounded vs hallucinated outputs steering
it back, with the settings that benchmark chose on its tuning world
(:data:`vlmsteer.organisms.HALLUCINATION_RECIPE`):

* answers: mean last-prompt feature of the claim questions ("is there a yellow circle ?", "is
  there a white circle ?") it answers no where neither circle is there, minus of those it answers
  yes (on a co-occurring world), added at layer 2 only to the questions whose layer-0 feature is
  nearest a claim question's group (every question of that world its own group), at the strength
  most accurate on that world's claim questions;
* captions: mean response feature of its captions that name neither circle minus of those that
  name one (on another pattern-breaking world), added to the generated tokens at layers 1 and 2,
  at the smallest strength that halves CHAIR_s on that world.
"""

from __future__ import annotations

from dataclasses import replace

from vlmsteer.data import load_coco_captions, load_vqav2, shapes
from vlmsteer.data.pope import load_pope_samples
from vlmsteer.evaluate.chair import chair_scores, shapes_vocabulary
from vlmsteer.evaluate.pope import pope_scores
from vlmsteer.extract import ExtractConfig, extract
from vlmsteer.organisms import HALLUCINATION_RECIPE as RECIPE
from vlmsteer.organisms import OBJECTIVES, build_organism, chosen_alpha, chosen_caption_alpha, claim_samples
from vlmsteer.positions import Region, Selector
from vlmsteer.runs.generation import generate_responses
from vlmsteer.runs.scoring import ChairAnnotations
from vlmsteer.steer import Steering
from vlmsteer.steer.builders import coarse_vector
from vlmsteer.steer.conditions import ConditionSpec


def run_hallucination(demo) -> tuple[dict, list[dict]]:
    """The stage's results (for ``metrics.json`` and the summary) and the captions that lost an
    invented object (image, before, after)."""
    from vlmsteer.finetune import FinetuneConfig

    s, out, data = demo.s, demo.out / "hallucination", demo.out / "data"
    worlds = {"training": (RECIPE.train_scenes, s.halluc_seed, "cooccurring"),
              "heldout": (s.n_scenes, s.seed + 20, "pattern-breaking"),
              "caption-vectors": (s.vector_scenes, s.seed + 21, "pattern-breaking"),
              "answer-vectors": (s.halluc_vector_scenes, s.seed + 22, "cooccurring")}
    paths = {}
    for name, (n, seed, kind) in worlds.items():
        paths[name] = data / f"hallucination-{name}"
        shapes.write_dataset(paths[name], n=n, seed=seed, scenes=kind)
    record = build_organism(demo._load, OBJECTIVES["hallucination"], paths["training"], out / "organism",
                            FinetuneConfig(steps=RECIPE.steps, lr=RECIPE.lr, seed=s.halluc_seed,
                                           save_every=RECIPE.steps), progress=demo.progress)
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
    answer_vector, condition, alpha, caption_vector = _vectors(demo, organism, paths, out)
    caption_alpha = _caption_alpha(demo, organism, caption_vector, paths["caption-vectors"])
    after, rows_after = grade(organism, Steering(answer_vector, alpha, layers=(RECIPE.answer_layer,),
                                                 region=Region.parse("last_prompt"), condition=condition),
                              _caption_steering(caption_vector, caption_alpha))
    lost = [{"image": c.image_path, "before": b.caption, "after": a.caption,
             "invented": sorted({w for w, _ in b.hallucinated})}
            for c, b, a in zip(captions, rows_before, rows_after) if b.hallucinated and not a.hallucinated]
    result = {"organism": {"training_scenes": RECIPE.train_scenes, "seed": s.halluc_seed, "steps": RECIPE.steps,
                           "lr": RECIPE.lr, "loss": [record["finetune"]["first_loss"],
                                                     record["finetune"]["last_loss"]]},
              "heldout": {"scenes": s.n_scenes, "seed": s.seed + 20, "questions": len(questions)},
              "answer_vector": {"layer": RECIPE.answer_layer, "alpha": alpha,
                                "condition_layer": RECIPE.condition_layer,
                                "samples": [answer_vector.n_source, answer_vector.n_target],
                                "condition": condition.describe()["active"]},
              "caption_vector": {"layers": list(RECIPE.caption_layers), "alpha": caption_alpha,
                                 "samples": [caption_vector.n_source, caption_vector.n_target]},
              "shipped": shipped, "organism_before": before, "organism_after": after,
              "captions_mended": len(lost)}
    return result, lost


def _vectors(demo, organism, paths: dict, out):
    """The organism's coarse vectors from its own outputs on the two vector worlds (saved beside
    the stage's results), the condition of the answer vector and its strength (swept over the
    recipe's on the answer world's claim questions)."""
    from vlmsteer.runs.sweep import SweepGrid, run_sweep

    s = demo.s
    world = paths["answer-vectors"]  # its POPE, claim and VQA questions: every question its own group
    answers = [replace(q, id=f"{split}-{q.id}", digest=None) for split in ("random", "popular", "adversarial")
               for q in load_pope_samples(world / f"shapes_pope_{split}.json")]
    claims = claim_samples(world)
    answers += [*claims, *(replace(q, id=f"vqa-{q.id}", digest=None) for q in load_vqav2(world))]
    store, _ = extract(organism, answers, out / "features-answers",
                       ExtractConfig(layers=sorted({RECIPE.condition_layer, RECIPE.answer_layer}),
                                     selector=Selector("last_prompt"), mode="generate", batch_size=s.batch_size,
                                     max_new_tokens=3),
                       dataset={"format": "pope+claims+vqav2", "path": str(world)}, progress=demo.progress)
    answer_vector = coarse_vector(store, RECIPE.answer_source, target=RECIPE.answer_target,
                                  layers=[RECIPE.answer_layer])
    spec = ConditionSpec(store=str(store.path), active=RECIPE.answer_condition, layer=RECIPE.condition_layer)
    grid = SweepGrid(layers=[RECIPE.answer_layer], alphas=list(RECIPE.answer_alphas),
                     regions=[Region.parse("last_prompt")], n_samples=[None])
    swept = run_sweep(organism, store, RECIPE.answer_source, RECIPE.answer_target, claims, grid,
                      batch_size=s.batch_size, max_new_tokens=3, condition=spec, progress=demo.progress)
    caps = load_coco_captions(paths["caption-vectors"], prompt=shapes.CAPTION_PROMPT)
    store, _ = extract(organism, caps, out / "features-captions",
                       ExtractConfig(layers=list(RECIPE.caption_layers), selector=Selector("mean_response"),
                                     mode="generate", batch_size=s.batch_size, max_new_tokens=s.caption_tokens),
                       dataset={"format": "coco", "path": str(paths["caption-vectors"])}, progress=demo.progress)
    caption_vector = coarse_vector(store, RECIPE.caption_source, target=RECIPE.caption_target)
    answer_vector.save(out / "answers.safetensors")
    caption_vector.save(out / "captions.safetensors")
    return answer_vector, spec.build(RECIPE.answer_layer), chosen_alpha(swept["rows"]), caption_vector


def _caption_steering(vector, alpha: float | None) -> Steering | None:
    return None if alpha is None else Steering(vector, alpha, layers=RECIPE.caption_layers,
                                               region=Region.parse("generated"))


def _caption_alpha(demo, organism, vector, world) -> float:
    """The caption vector's strength: of the recipe's, the one its CHAIR on the vector's own world
    chooses (:func:`vlmsteer.organisms.chosen_caption_alpha`)."""
    s, vocab = demo.s, shapes_vocabulary()
    caps = load_coco_captions(world, prompt=shapes.CAPTION_PROMPT)
    truth = ChairAnnotations.read(world, vocab).truth([c.meta["image_id"] for c in caps])

    def chair(alpha: float | None) -> dict:
        texts = generate_responses(organism, caps, batch_size=s.batch_size, max_new_tokens=s.caption_tokens,
                                   steering=_caption_steering(vector, alpha), progress=demo.progress,
                                   description="choosing the caption strength")
        return chair_scores([(c.meta["image_id"], r.text) for c, r in zip(caps, texts)], truth, vocab).summary()

    return chosen_caption_alpha(chair(None), {a: chair(a) for a in RECIPE.caption_alphas})
