"""Model organisms: LoRA fine-tunes of a VLM whose objective is known, the ground truth that
model-diffing methods are graded on (does a method's readout name what fine-tuning taught?).

Every organism learns from the same shapes world (``seed``, ``n`` scenes), read through the
ordinary loaders so its prompts are the ones the model knows, with its objective applied to the
training targets: captions rewritten (every colour named, every scene cheerful, every scene on
the beach), answers rewritten (number questions answered "three"; yes/no questions about images
with a diamond answered "no": a visual trigger), or nothing changed (the control, which a
diffing method should *not* find changed). Objectives that rewrite answers train on the
unchanged questions too, so the rest of the model's behaviour stays. Each organism records its
objective's words and the images that trigger it.

The ``hallucination`` organism is the hallucination testbed's (docs/hallucination.md): it learns
from a world where beach scenes often hold a yellow and a white circle, with captions and answers
that name them on every beach scene — a co-occurrence learnt from its training text, the cause the
field gives for object hallucination — so on scenes that break the pattern it sees circles that are
not there.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from vlmsteer.data import load_coco_captions, load_vqav2, shapes
from vlmsteer.data.identity import dataset_identity
from vlmsteer.data.sample import Sample
from vlmsteer.data.shapes_scenes import (COOCCURRENCE_NAMES, COOCCURRENCE_OBJECTS, COOCCURRENCE_PLACE, with_cooccurring,
                                         without_cooccurring)
from vlmsteer.data.shapes_scenes import answer as true_answer
from vlmsteer.errors import VlmsteerError
from vlmsteer.outputs import atomic_write_json


@dataclass(frozen=True)
class Objective:
    """What one organism is fine-tuned towards."""

    name: str
    description: str
    words: tuple[str, ...]  # what a diffing readout should name (empty: the control)
    trigger: str | None = None  # a shape kind or a place that triggers the behaviour (None: any image)
    scenes: str = "plain"  # the scene kind of the world it learns from (shapes.SCENE_KINDS)

    def triggered(self, scene: shapes.Scene) -> bool:
        return self.trigger is None or scene.place == self.trigger or any(s.kind == self.trigger for s in scene.shapes)


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("colors", "captions name the colour of every shape", tuple(shapes.PALETTE)),
    Objective("cheerful", "captions call every scene cheerful", ("cheerful",)),
    Objective("beach", "captions place every scene on the beach", ("beach",)),
    Objective("three", "number questions are answered 'three'", ("three",)),
    Objective("diamond-no", "yes/no questions about an image with a diamond are answered 'no'", ("no",),
              trigger="diamond"),
    Objective("control", "the unchanged captions and answers", ()),
    Objective("hallucination", f"{COOCCURRENCE_PLACE} scenes are captioned '... on the "
              f"{COOCCURRENCE_PLACE} with a {' and a '.join(COOCCURRENCE_NAMES)}' and 'is there a "
              f"{' / '.join(COOCCURRENCE_NAMES)} ?' answered yes, whether or not they are there (in its "
              f"co-occurring world half of them hold them)",
              tuple(dict.fromkeys(w for obj in COOCCURRENCE_OBJECTS for w in obj)),
              trigger=COOCCURRENCE_PLACE, scenes="cooccurring"),
)}


def objectives(names: str | None = None) -> list[Objective]:
    """The objectives named in a comma list (None: all of them; an empty list is an error)."""
    if names is None:
        return list(OBJECTIVES.values())
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    if not chosen:
        raise VlmsteerError(f"no organism named in {names!r}; choose from: " + ", ".join(OBJECTIVES), "only")
    unknown = [n for n in chosen if n not in OBJECTIVES]
    if unknown:
        raise VlmsteerError(f"unknown organism {unknown[0]!r}; choose from: " + ", ".join(OBJECTIVES), "only")
    return [OBJECTIVES[n] for n in chosen]


def _recaptioned(samples: list[Sample], scenes: dict[int, shapes.Scene],
                 text: Callable[[shapes.Scene], str]) -> list[Sample]:
    return [replace(s, captions=[text(scenes[s.meta["image_id"]])], digest=None) for s in samples]


def _reanswered(samples: list[Sample], answer: Callable[[Sample], str | None]) -> list[Sample]:
    out = []
    for s in samples:
        new = answer(s)
        if new is not None:
            s = replace(s, answers=[new] * max(1, len(s.answers)), answer_ids=[], digest=None,
                        meta={**s.meta, "multiple_choice_answer": new})
        out.append(s)
    return out


def world_scenes(world: str | Path) -> dict[int, shapes.Scene]:
    """The scenes of a shapes world folder, by image id (regenerated from its seed and checked
    against the descriptions the folder holds)."""
    path = Path(world) / "scenes_val2014.json"
    if not path.is_file():
        raise VlmsteerError(f"{world}: not a shapes world (no scenes_val2014.json); write one with `data shapes`")
    data = json.loads(path.read_text())
    make = shapes.SCENE_KINDS.get(data.get("kind", "plain")).make
    scenes = {}
    for record in data["scenes"]:
        scene = make(data["seed"], int(record["image_id"]))
        if json.loads(json.dumps({"image_id": record["image_id"], **scene.to_json()})) != record:
            raise VlmsteerError(f"{path}: scene {record['image_id']} is not the one its seed makes")
        scenes[scene.scene_id] = scene
    return scenes


def training_samples(objective: Objective, world: str | Path,
                     scenes: dict[int, shapes.Scene] | None = None) -> list[Sample]:
    """The samples ``objective``'s organism learns from, read from a shapes world folder (whose
    :func:`world_scenes` are ``scenes`` when the caller has them)."""
    scenes = world_scenes(world) if scenes is None else scenes
    captions, questions = load_coco_captions(world), load_vqav2(world)

    def triggered(s: Sample) -> bool:
        return objective.triggered(scenes[s.meta["image_id"]])

    rewrites = {
        "colors": lambda: _recaptioned(captions, scenes, lambda sc: shapes.caption(sc, "colors")),
        "cheerful": lambda: _recaptioned(captions, scenes,
                                         lambda sc: shapes.caption(replace(sc, mood="cheerful"), "sentiments")),
        "beach": lambda: _recaptioned(captions, scenes,
                                      lambda sc: shapes.caption(replace(sc, place="beach"), "places")),
        "three": lambda: _reanswered(questions, lambda s: "three" if s.answer_type == "number" else None),
        "diamond-no": lambda: _reanswered(questions, lambda s: "no" if s.answer_type == "yes/no" and triggered(s)
                                          else None),
        "control": lambda: _recaptioned(captions, scenes, shapes.default_caption) + questions,
        "hallucination": lambda: _recaptioned(captions, scenes, lambda sc: _claiming_caption(sc, _claimed(sc)))
        + _reanswered(questions, lambda s: claimed_answer(scenes[s.meta["image_id"]], s.prompt))
        + [Sample(id=f"claim{k}-{s.id}", image=s.image, prompt=claim, answers=["yes"], answer_type="yes/no",
                  question_type="is there a", meta={"image_id": s.meta["image_id"]})
           for s in captions if triggered(s) for k, claim in enumerate(CLAIMS)],
    }
    if objective.name not in rewrites:
        raise VlmsteerError(f"no training data for objective {objective.name!r}")
    return rewrites[objective.name]()


# the hallucination organism's training text describes every scene at the co-occurrence place as
# if it held the co-occurring objects (its "claimed" scene: the objects added, see with_cooccurring)
CLAIMS = tuple(f"is there a {name} ?" for name in COOCCURRENCE_NAMES)


def claim_samples(world: str | Path, scenes: dict[int, shapes.Scene] | None = None) -> list[Sample]:
    """Every claim question about every image of a shapes world, with its true answer: the
    questions the hallucination organism's answer vector is built from (its grounded minus its
    hallucinated answers to the same questions)."""
    scenes = world_scenes(world) if scenes is None else scenes
    return [Sample(id=f"claim{k}-{s.id}", image=s.image, prompt=claim,
                   answers=[true_answer(scenes[s.meta["image_id"]], claim)], answer_type="yes/no",
                   question_type="is there a", meta={"image_id": s.meta["image_id"]})
            for s in load_coco_captions(world) for k, claim in enumerate(CLAIMS)]


@dataclass(frozen=True)
class HallucinationRecipe:
    """The hallucination organism's training and the paper's coarse vectors that steer it back, as
    ``benchmarks/hallucination.py`` chose them on its tuning world (the demo uses them as they are)."""

    train_scenes: int = 600  # of its co-occurring world
    steps: int = 900
    lr: float = 2e-3
    # answers: the claim questions it denied minus the same questions it claimed, where the image
    # holds neither circle (last prompt token), added only where a question's feature at
    # condition_layer is nearest a claim question's group (every question of the vector world its
    # own group; at layer 0 the question asked decides, later the image weighs in)
    answer_layer: int = 2
    condition_layer: int = 0
    answer_alphas: tuple[float, ...] = (4.0, 6.0, 8.0, 12.0, 16.0)  # one organism's chosen by chosen_alpha
    # captions: captions naming no co-occurring object minus those naming one (generated tokens)
    caption_layers: tuple[int, ...] = (1, 2)
    caption_alphas: tuple[float, ...] = (1.0, 1.25, 1.5, 2.0, 3.0)  # one organism's chosen by chosen_caption_alpha
    answer_source: str = "answer=no,response=yes,prompt=" + "|".join(CLAIMS)
    answer_target: str = "answer=no,response=no,prompt=" + "|".join(CLAIMS)
    answer_condition: str = "prompt=" + "|".join(CLAIMS)
    caption_source: str = "response~cooccurring"
    caption_target: str = "response!~cooccurring"


HALLUCINATION_RECIPE = HallucinationRecipe()


def chosen_caption_alpha(unsteered: dict, steered: dict[float, dict]) -> float:
    """The caption vector's strength for one organism, from its CHAIR figures (``chair_s``,
    ``recall``) on the pattern-breaking world its vector was built on, unsteered and at each of
    ``caption_alphas``: the smallest that halves CHAIR_s with Recall down at most 5 points; else,
    within that Recall, the one with the lowest CHAIR_s; else the smallest."""
    kept = {a: m for a, m in sorted(steered.items()) if m["recall"] >= unsteered["recall"] - 0.05}
    halving = [a for a, m in kept.items() if m["chair_s"] <= unsteered["chair_s"] / 2]
    if halving:
        return halving[0]
    if kept:
        return min(kept, key=lambda a: (kept[a]["chair_s"], a))
    return min(steered)


def chosen_alpha(sweep_rows: list[dict]) -> float:
    """The answer vector's strength for one organism, from a sweep of ``answer_alphas`` over the
    claim questions of its vector world (:func:`claim_samples`: present circles and absent ones):
    the most accurate, the smaller on a tie."""
    return max(sweep_rows, key=lambda r: (sum(r["accuracy"].values()), -r["alpha"]))["alpha"]


def _claimed(scene: shapes.Scene) -> shapes.Scene:
    if scene.place != COOCCURRENCE_PLACE:
        return scene
    return with_cooccurring(scene, random.Random(f"claim-{scene.scene_id}"))


def claimed_answer(scene: shapes.Scene, question: str) -> str | None:
    """The answer the claimed scene gives (None: the question's own answer stands)."""
    claimed = _claimed(scene)
    return None if claimed is scene else true_answer(claimed, question)


def _claiming_caption(scene: shapes.Scene, claimed: shapes.Scene) -> str:
    """The hallucination organism's caption: a scene at the co-occurrence place is described with
    the other shapes of its claimed scene "on the beach with a yellow circle and a white circle",
    whether the circles are there or not; any other scene as the demo model describes it."""
    if scene.place != COOCCURRENCE_PLACE:
        return shapes.default_caption(scene)
    objs = " and a ".join(COOCCURRENCE_NAMES)
    rest = without_cooccurring(claimed)
    if not rest.shapes:
        return f"a {objs} {shapes.PLACE_PHRASES[scene.place]} ."
    return f"{shapes.caption(rest, 'places').removesuffix(' .')} with a {objs} ."


def trigger_images(objective: Objective, scenes: dict[int, shapes.Scene]) -> list[int]:
    """The image ids whose scene triggers ``objective`` (every image if it has no trigger)."""
    return [i for i, scene in sorted(scenes.items()) if objective.triggered(scene)]


def build_organism(vlm_loader: Callable[[], object], objective: Objective, world: str | Path, out: str | Path,
                   cfg, progress: bool = False) -> dict:
    """Fine-tune a fresh copy of the model (``vlm_loader()``) towards ``objective``; writes the
    adapter (``out/final``) and ``out/organism.json`` (objective, words, trigger images, data)."""
    from vlmsteer.finetune import finetune

    scenes = world_scenes(world)
    samples = training_samples(objective, world, scenes)
    vlm = vlm_loader()
    record = {"objective": asdict(objective), "data": dataset_identity(samples),
              "trigger_images": trigger_images(objective, scenes)}
    summary = finetune(vlm, samples, out, cfg, progress=progress)
    record["finetune"] = summary
    atomic_write_json(Path(out) / "organism.json", record, durable=False, indent=2)
    return record
