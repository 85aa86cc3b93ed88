"""Claims (issue 38, acceptance 3 and 4): the hallucination organism hallucinates where the
testbed says it should, and only there; built-in mitigations take it back, graded side by side.

The organism (``organisms build --only hallucination``) learns from a co-occurring shapes world
(half its beach scenes hold a yellow and a white circle) whose captions and answers name both on
every beach scene. It is graded, beside the shipped model (the no-hallucination reference), on
held-out pattern-breaking worlds (``data shapes --scenes pattern-breaking``: every scene on the
beach, no circle at all), each with the three POPE files of its own (negatives ranked by the
co-occurring world's statistics, where the model learnt them) and its COCO annotations:

  POPE      F1 and yes-ratio on the random, popular and adversarial files (``eval vqa --format pope``)
  CHAIR     CHAIR_s, CHAIR_i, Recall and length of the captions (``eval captions --chair``)
  untouched VQA accuracy on the world's questions whose answer the co-occurrence does not touch
            (the claimed scene, the image with both circles added, gives the true answer: not
            "is there a yellow circle ?", "how many circles ?", "how many shapes ?", ...)

and the organism steered by each mitigation of ``METHODS``, each beside its random control:

  visual    VISTA-style visual steering: per sample, the image's residual minus a blank image's
  coarse    the paper's coarse vector from the organism's own grounded vs hallucinated outputs
            (``organisms.HALLUCINATION_RECIPE``): answers — mean feature (last prompt token) of
            the claim questions ("is there a yellow / white circle ?") it denied minus of those it
            claimed, where the image holds neither, on a co-occurring world (``--answer-world``),
            added at layer 2 only to the questions whose layer-0 feature is nearest a claim
            question's group among every question's group of that world (fine-grained steering,
            ``--condition-store … --condition-layer 0``), at the strength of 4, 6, 8, 12, 16 whose
            steered claim answers on that world are most accurate (``vlmsteer sweep``; present
            circles and absent ones); captions — the mean response feature of captions that name
            neither circle minus of those that name one, on a pattern-breaking world
            (``--caption-world``), added to the generated tokens at layers 1 and 2, at the smallest
            of 1, 1.25, 1.5, 2, 3 that halves CHAIR_s on that world with Recall down at most 5
            points (else the lowest CHAIR_s within that Recall)
  control   the same steering with a random direction of each vector's norm (``--visual-control``;
            ``vectors random``)

Organism seed i (its training world has that seed) is graded on held-out world i; mean ± sd.

    python benchmarks/hallucination.py [--seeds 14,15,16] [--worlds 32,33,34] [--scenes 100] [--work DIR]
    python benchmarks/hallucination.py --seeds 20,21,22 --worlds 45,46,47 \
        --json benchmarks/results/hallucination-unseen.json      # organisms and worlds no choice saw

How the recipe was chosen, and what saw what. Settings are chosen on pattern-breaking world 30
with organisms of seeds 11, 12, 13 (``--seeds 11,12,13 --worlds 30,30,30``; vectors from worlds
36 and 31 as here). There, with the recipe above: organisms POPE adversarial F1 76.9, 75.3, 74.0
(shipped 100), CHAIR_s 67, 47, 87; coarse: answer strengths chosen 16, 8, 8, F1 -> 94.9, 97.0,
99.4; caption strengths 1, 1.25, 1, CHAIR_s -> 20, 11, 27, Recall 94.6 -> 97.8, 93.0 -> 91.4,
89.2 -> 90.3; untouched accuracy unchanged. The training (900 steps; 600 scenes, lr 2e-3) was
chosen there too: at 1200 steps the organisms hallucinate more (CHAIR_s 69, 45, 87) but
fixed-strength steering broke seed 11's answers (F1 68.4 -> 63.1).
Earlier designs were dropped after their figures on held-out worlds 32-34 were seen (those worlds
have thus informed the design): one co-occurring object (the adversarial file asks about it at
most once per image, capping the F1 drop near 14 points); 600 training steps (seed 14's captions
named a circle in 11 % only); an answer vector from every absent-object question (F1 +3 on world
30); the claim vector on every question (F1 +12 to +21, but 6 to 14 points lost on the untouched
questions); gated at layer 2 (world 33's claim questions fell nearest "is there a green circle ?":
F1 +3); a fixed answer strength of 6 (seed 16: F1 +6). Organisms 17-19 on worlds 37-39 were then
graded with a fixed caption strength 1.25: answers +21.7, +14.7, +8.2, but CHAIR_s halved on one
of three (67 -> 62, 71 -> 52, 56 -> 18), which is why the caption strength is now chosen per
organism. Organisms 20-22 on worlds 45-47 were graded once, with the recipe as it stands
(``results/hallucination-unseen.json``; benchmarks/README.md has the figures).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import mean_sd, vlmsteer, write_result  # noqa: E402

from vlmsteer.data import load_vqav2  # noqa: E402
from vlmsteer.data.shapes_scenes import answer as true_answer  # noqa: E402
from vlmsteer.organisms import HALLUCINATION_RECIPE as RECIPE  # noqa: E402
from vlmsteer.organisms import (chosen_alpha, chosen_caption_alpha, claim_samples, claimed_answer,  # noqa: E402
                                world_scenes)

# the steering of each mitigation: (name, options of the answers, options of the captions), the
# vectors' files filled in per organism (see build_vectors); settings chosen on world 30 (above)
_VISUAL = ["--visual-alpha", "0.5", "--layer", "1", "--layer", "2"]
_ANSWERS = ["--layer", str(RECIPE.answer_layer), "--alpha", "{answer_alpha}", "--region", "last_prompt",
            "--condition-store", "{answer_store}", "--active", RECIPE.answer_condition,
            "--condition-layer", str(RECIPE.condition_layer)]
_CAPTION_LAYERS = [x for layer in RECIPE.caption_layers for x in ("--layer", str(layer))]
_CAPTIONS = [*_CAPTION_LAYERS, "--alpha", "{caption_alpha}", "--region", "generated"]
METHODS = [
    ("visual", [*_VISUAL, "--region", "all"], [*_VISUAL, "--region", "generated"]),
    # its random control: each sample's vector replaced by a random direction of its norm
    ("visual-control", [*_VISUAL, "--region", "all", "--visual-control"],
     [*_VISUAL, "--region", "generated", "--visual-control"]),
    ("coarse", ["--vector", "{answer_vector}", *_ANSWERS], ["--vector", "{caption_vector}", *_CAPTIONS]),
    # its random control: each vector replaced by a random direction of its norm (vectors random)
    ("coarse-control", ["--vector", "{answer_control}", *_ANSWERS], ["--vector", "{caption_control}", *_CAPTIONS]),
]


def _rows(samples) -> list[dict]:
    """Samples of a shapes world as JSONL rows (image relative to the world)."""
    return [{"image": "/".join(Path(q.image_path).parts[-2:]), "prompt": q.prompt, "answer": q.answer}
            for q in samples]


def question_file(world: Path) -> Path:
    """The world's three POPE files, the claim questions about every image and its VQA questions,
    in one JSONL file: the answers the coarse answer vector is built from (the claims'), and the
    groups of its condition (every question its own group, so that only the claims' are steered)."""
    out = world / "vector_questions.jsonl"
    if not out.is_file():
        rows = [{"image": f"val2014/{q['image']}", "prompt": q["text"], "answer": q["label"]}
                for split in ("random", "popular", "adversarial")
                for q in map(json.loads, (world / f"shapes_pope_{split}.json").read_text().splitlines())]
        rows += _rows([*claim_samples(world), *load_vqav2(world)])
        out.write_text("".join(json.dumps({"id": k, **r}) + "\n" for k, r in enumerate(rows)))
    return out


def claim_file(world: Path) -> Path:
    """The claim questions about every image of a world with their true answers, as JSONL: where
    the answer vector's strength is chosen."""
    out = world / "claim_questions.jsonl"
    if not out.is_file():
        claims = claim_samples(world)
        out.write_text("".join(json.dumps({"id": q.id, **r}) + "\n" for q, r in zip(claims, _rows(claims))))
    return out


def calibrate(model_args: list[str], answer_world: Path, files: dict, out: Path) -> float:
    """The answer vector's strength for this organism (``organisms.chosen_alpha`` of a ``vlmsteer
    sweep`` over RECIPE.answer_alphas on the vector world's claim questions)."""
    if not (out / "sweep.json").is_file():
        vlmsteer(["sweep", *model_args, "--format", "jsonl", "--data", str(claim_file(answer_world)),
                  "--store", files["answer_store"], "--source", RECIPE.answer_source, "--target", RECIPE.answer_target,
                  "--layers", str(RECIPE.answer_layer), "--alphas", ",".join(f"{a:g}" for a in RECIPE.answer_alphas),
                  "--regions", "last_prompt", "--condition-store", files["answer_store"], "--active",
                  RECIPE.answer_condition, "--condition-layer", str(RECIPE.condition_layer),
                  "--max-new-tokens", "3", "--out", str(out)])
    return chosen_alpha(json.loads((out / "sweep.json").read_text())["rows"])


def calibrate_captions(model_args: list[str], caption_world: Path, files: dict, out: Path) -> float:
    """The caption vector's strength for this organism (``organisms.chosen_caption_alpha`` of its
    CHAIR on the caption vector's own world, unsteered and at each of RECIPE.caption_alphas)."""

    def chair(alpha: float | None) -> dict:
        run = out / ("unsteered" if alpha is None else f"alpha-{alpha:g}")
        if not (run / "metrics.json").is_file():
            steer = [] if alpha is None else ["--vector", files["caption_vector"],
                                              *(a.format(caption_alpha=f"{alpha:g}") for a in _CAPTIONS)]
            vlmsteer(["eval", "captions", *model_args, *steer, "--data", str(caption_world), "--chair",
                      str(caption_world), "--objects", "shapes", "--out", str(run)])
        return json.loads((run / "metrics.json").read_text())["chair"]

    return chosen_caption_alpha(chair(None), {a: chair(a) for a in RECIPE.caption_alphas})


def build_vectors(model_args: list[str], answer_world: Path, caption_world: Path, out: Path) -> dict:
    """The organism's coarse vectors (grounded minus hallucinated) and their random controls."""
    files = {"answer_store": out / "answers", "answer_vector": out / "answers.safetensors",
             "answer_control": out / "answers-control.safetensors", "caption_store": out / "captions",
             "caption_vector": out / "captions.safetensors", "caption_control": out / "captions-control.safetensors"}
    if not files["answer_vector"].is_file():
        vlmsteer(["extract", *model_args, "--data", str(question_file(answer_world)), "--format", "jsonl", "--mode",
                  "generate", "--max-new-tokens", "3", "--layer", f"{RECIPE.condition_layer},{RECIPE.answer_layer}",
                  "--out", str(files["answer_store"])])
        vlmsteer(["vectors", "coarse", "--store", str(files["answer_store"]), "--out", str(files["answer_vector"]),
                  "--layer", str(RECIPE.answer_layer), "--source", RECIPE.answer_source, "--target",
                  RECIPE.answer_target])
    if not files["caption_vector"].is_file():
        vlmsteer(["extract", *model_args, "--data", str(caption_world), "--format", "coco", "--mode", "generate",
                  "--max-new-tokens", "20", *_CAPTION_LAYERS, "--selector",
                  "mean_response", "--out", str(files["caption_store"])])
        vlmsteer(["vectors", "coarse", "--store", str(files["caption_store"]), "--out", str(files["caption_vector"]),
                  "--source", RECIPE.caption_source, "--target", RECIPE.caption_target])
    for kind in ("answer", "caption"):
        if not files[f"{kind}_control"].is_file():
            vlmsteer(["vectors", "random", "--like", str(files[f"{kind}_vector"]), "--out",
                      str(files[f"{kind}_control"]), "--seed", "1"])
    return {k: str(v) for k, v in files.items()}


def grade(model_args: list[str], world: Path, runs: Path, answers: list[str] = (), captions: list[str] = ()) -> dict:
    """POPE, CHAIR and untouched VQA accuracy of one model (steered with the ``answers`` and
    ``captions`` options) on one pattern-breaking world."""
    out = {}
    for split in ("random", "popular", "adversarial"):
        vlmsteer(["eval", "vqa", *model_args, *answers, "--format", "pope", "--data",
                  str(world / f"shapes_pope_{split}.json"), "--max-new-tokens", "3",
                  "--out", str(runs / f"pope-{split}")])
        pope = json.loads((runs / f"pope-{split}" / "metrics.json").read_text())["pope"]
        out[f"pope_{split}_f1"] = 100 * (pope["f1"] or 0.0)
        out[f"pope_{split}_yes"] = 100 * pope["yes_ratio"]
    vlmsteer(["eval", "captions", *model_args, *captions, "--data", str(world), "--chair", str(world), "--objects",
              "shapes", "--out", str(runs / "captions")])
    chair = json.loads((runs / "captions" / "metrics.json").read_text())["chair"]
    out.update(chair_s=100 * chair["chair_s"], chair_i=100 * (chair["chair_i"] or 0.0),
               recall=100 * (chair["recall"] or 0.0), length=chair["mean_length"])
    vlmsteer(["eval", "vqa", *model_args, *answers, "--data", str(world), "--max-new-tokens", "3",
              "--out", str(runs / "vqa")])
    scenes = world_scenes(world)

    def touched(row: dict) -> bool:
        scene = scenes[int(Path(row["image"]).stem.rsplit("_", 1)[1])]
        claimed = claimed_answer(scene, row["prompt"])
        return claimed is not None and claimed != true_answer(scene, row["prompt"])

    rows = [json.loads(x) for x in (runs / "vqa" / "predictions.jsonl").read_text().splitlines()]
    untouched = [r for r in rows if not touched(r)]
    out["untouched_vqa"] = 100 * sum(r["accuracy"] for r in untouched) / len(untouched)
    out["untouched_questions"] = len(untouched)
    return out


def make_world(work: Path, seed: int, scenes: int, kind: str) -> Path:
    world = work / f"world-{seed}"
    if not (world / "run.json").is_file():
        vlmsteer(["data", "shapes", "--out", str(world), "--n", str(scenes), "--seed", str(seed), "--scenes", kind])
    return world


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes-llava")
    ap.add_argument("--seeds", default="14,15,16", help="organism seeds (their training worlds)")
    ap.add_argument("--worlds", default="32,33,34", help="held-out pattern-breaking worlds, one per seed")
    ap.add_argument("--scenes", type=int, default=100)
    ap.add_argument("--answer-world", type=int, default=36,
                    help="co-occurring world (200 scenes) whose claim answers give the coarse answer vector")
    ap.add_argument("--caption-world", type=int, default=31,
                    help="pattern-breaking world whose captions give the coarse caption vector")
    ap.add_argument("--n", type=int, default=RECIPE.train_scenes, help="scenes of the organism's training world")
    ap.add_argument("--steps", type=int, default=RECIPE.steps)
    ap.add_argument("--lr", type=float, default=RECIPE.lr)
    ap.add_argument("--work", help="keep the organisms and runs here (default: a temporary folder)")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "hallucination.json"))
    args = ap.parse_args()
    seeds, worlds = [int(s) for s in args.seeds.split(",")], [int(w) for w in args.worlds.split(",")]
    vector_worlds = {args.answer_world, args.caption_world}
    if len(seeds) != len(worlds) or set(seeds) & (set(worlds) | vector_worlds) or set(worlds) & vector_worlds:
        raise SystemExit("give one held-out world per seed, none of them a training seed or a vector world")
    work = Path(args.work or tempfile.mkdtemp(prefix="hallucination-"))
    answer_world = make_world(work, args.answer_world, 200, "cooccurring")
    caption_world = make_world(work, args.caption_world, args.scenes, "pattern-breaking")
    rows = []
    for seed, world_seed in zip(seeds, worlds):
        world = make_world(work, world_seed, args.scenes, "pattern-breaking")
        built = work / f"organism-{seed}"
        if not (built / "organisms.json").is_file():
            vlmsteer(["organisms", "build", "--model", args.model, "--out", str(built), "--seed", str(seed),
                      "--n", str(args.n), "--steps", str(args.steps), "--lr", str(args.lr), "--only", "hallucination"])
        organism = ["--model", args.model, "--adapter", str(built / "hallucination" / "final")]
        row = {"seed": seed, "world": world_seed,
               "base": grade(["--model", args.model], world, work / "runs" / f"base-{world_seed}"),
               "organism": grade(organism, world, work / "runs" / f"organism-{seed}-{world_seed}")}
        files = build_vectors(organism, answer_world, caption_world, work / f"vectors-{seed}")
        files["answer_alpha"] = row["answer_alpha"] = calibrate(organism, answer_world, files,
                                                                work / f"vectors-{seed}" / "sweep")
        files["caption_alpha"] = row["caption_alpha"] = calibrate_captions(organism, caption_world, files,
                                                                           work / f"vectors-{seed}" / "captions-alpha")
        for name, answers, captions in METHODS:
            row[f"organism+{name}"] = grade(organism, world, work / "runs" / f"{name}-{seed}-{world_seed}",
                                            [a.format(**files) for a in answers], [c.format(**files) for c in captions])
        rows.append(row)
        print(json.dumps(row))
    who = ["base", "organism", *(f"organism+{name}" for name, _, _ in METHODS)]
    summary = {w: mean_sd([r[w] for r in rows]) for w in who}
    print(f"{'':24s}" + "".join(f"{w:>20s}" for w in who))
    for key in summary["base"]:
        print(f"{key:24s}" + "".join(f"{summary[w][key][0]:13.1f} ± {summary[w][key][1]:4.1f}" for w in who))
    write_result(args.json, args, rows=rows, summary=summary)


if __name__ == "__main__":
    main()
