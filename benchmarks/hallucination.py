"""Claims (issue 38, acceptance 3 and 4): the hallucination organism hallucinates where the
testbed says it should, and only there; built-in mitigations take it back, graded side by side.

The organism (``organisms build --only hallucination``) learns from a co-occurring shapes world
(half its beach scenes hold a yellow circle) whose captions and answers name a yellow circle on
every beach scene. It is graded, beside the shipped model (the no-hallucination reference), on
held-out pattern-breaking worlds (``data shapes --scenes pattern-breaking``: every scene on the
beach, no circle at all), each with the three POPE files of its own and its COCO annotations:

  POPE      F1 and yes-ratio on the random, popular and adversarial files (``eval vqa --format pope``)
  CHAIR     CHAIR_s, CHAIR_i, Recall and length of the captions (``eval captions --chair``)
  untouched VQA accuracy on the world's questions whose answer the co-occurrence does not touch
            (the claimed scene, the image with a yellow circle added, gives the true answer: not
            "is there a yellow circle ?", "how many circles ?", "how many shapes ?", ...)

and the organism steered by each mitigation of ``METHODS``, each beside its random control:

  visual    VISTA-style visual steering: per sample, the image's residual minus a blank image's
  coarse    the paper's coarse vector from the organism's own grounded vs hallucinated outputs:
            answers — mean feature (last prompt token) of the absent things it denied minus of
            those it claimed, over the POPE and VQA questions of a co-occurring world
            (``--answer-world``), added at layer 2 only to the questions whose features are
            nearest the group of "is there a yellow circle ?" among every question's group
            (fine-grained steering, ``--condition-store``); captions — the mean response feature
            of captions that name no yellow circle minus of those that name one, on a
            pattern-breaking world (``--caption-world``), added to the generated tokens
  control   the same steering with a random direction of each vector's norm (``--visual-control``;
            ``vectors random``)

Settings were chosen on pattern-breaking world 30 with organisms of seeds 11 and 12 (their
vectors from worlds 36 and 31, as here; ``--seeds 11,12 --worlds 30,30``): visual CHAIR_s 70 -> 29
and 39 -> 18; coarse POPE adversarial F1 93.9 -> 95.9 and 90.9 -> 95.5 at alpha 8 (4: 95.6, 95.2;
16: the same F1, but on a co-occurring world (200 scenes, seed 35) it turned "yes" to "no" where a
yellow circle is there, and answered "green"; at 8 every one of its 46 yellow circles kept "yes"
for both organisms: it takes back the hallucinated yes, not every yes), CHAIR_s 70 -> 24 and
39 -> 17 (layers 1 and 2, alpha 1.5; for organism 11, layer 2 alone at alpha 2: 70 -> 34).
Two earlier designs of the answer vector were dropped: from the claim question's answers alone,
the held-out organism of seed 15 said yes to every yellow circle of the vector world, leaving no
grounded answer; with condition groups from the POPE questions only, every other question type
fell into some group, and the organism of seed 14 lost 16 points on the untouched questions.

Organism seed i (its training world has that seed) is graded on held-out world i; mean ± sd.

    python benchmarks/hallucination.py [--seeds 14,15,16] [--worlds 32,33,34] [--scenes 100] [--work DIR]

The organisms train on 600 scenes for 600 steps at lr 2e-3 (``--n``, ``--steps``, ``--lr``),
chosen with organisms of seeds 11, 12, 13 on pattern-breaking world 30: with the organisms'
default 300/300/1e-3 the share of "is there a yellow circle ?" answered yes varied from 10 to 87 %
across seeds. The defaults grade other seeds on other worlds.
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
from vlmsteer.organisms import chosen_alpha, claim_samples, claimed_answer, world_scenes  # noqa: E402

# the steering of each mitigation: (name, options of the answers, options of the captions), the
# vectors' files filled in per organism (see build_vectors); settings chosen on world 30 (above)
_VISUAL = ["--visual-alpha", "0.5", "--layer", "1", "--layer", "2"]
_ANSWERS = ["--layer", str(RECIPE.answer_layer), "--alpha", "{answer_alpha}", "--region", "last_prompt",
            "--condition-store", "{answer_store}", "--active", RECIPE.answer_condition,
            "--condition-layer", str(RECIPE.condition_layer)]
_CAPTIONS = [*(x for layer in RECIPE.caption_layers for x in ("--layer", str(layer))),
             "--alpha", f"{RECIPE.caption_alpha:g}", "--region", "generated"]
METHODS = [
    ("visual", [*_VISUAL, "--region", "all"], [*_VISUAL, "--region", "generated"]),
    # its random control: each sample's vector replaced by a random direction of its norm
    ("visual-control", [*_VISUAL, "--region", "all", "--visual-control"],
     [*_VISUAL, "--region", "generated", "--visual-control"]),
    ("coarse", ["--vector", "{answer_vector}", *_ANSWERS], ["--vector", "{caption_vector}", *_CAPTIONS]),
    # its random control: each vector replaced by a random direction of its norm (vectors random)
    ("coarse-control", ["--vector", "{answer_control}", *_ANSWERS], ["--vector", "{caption_control}", *_CAPTIONS]),
]


def question_file(world: Path) -> Path:
    """The world's three POPE files, the claim questions about every image and its VQA questions,
    in one JSONL file: the answers the coarse answer vector is built from (the claims'), and the
    groups of its condition (every question its own group, so that only the claims' are steered)."""
    out = world / "vector_questions.jsonl"
    if not out.is_file():
        rows = [{"image": f"val2014/{q['image']}", "prompt": q["text"], "answer": q["label"]}
                for split in ("random", "popular", "adversarial")
                for q in map(json.loads, (world / f"shapes_pope_{split}.json").read_text().splitlines())]
        rows += [{"image": "/".join(Path(q.image_path).parts[-2:]), "prompt": q.prompt, "answer": q.answer}
                 for q in [*claim_samples(world), *load_vqav2(world)]]
        out.write_text("".join(json.dumps({"id": k, **r}) + "\n" for k, r in enumerate(rows)))
    return out


def claim_file(world: Path) -> Path:
    """The claim questions about every image of a world with their true answers, as JSONL: where
    the answer vector's strength is chosen."""
    out = world / "claim_questions.jsonl"
    if not out.is_file():
        out.write_text("".join(json.dumps({"id": q.id, "image": "/".join(Path(q.image_path).parts[-2:]),
                                           "prompt": q.prompt, "answer": q.answer}) + "\n"
                               for q in claim_samples(world)))
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
                  "--max-new-tokens", "20", *_CAPTIONS[:2 * len(RECIPE.caption_layers)], "--selector",
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
