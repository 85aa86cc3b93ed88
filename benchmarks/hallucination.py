"""Claim (issue 38, acceptance 3): the hallucination organism hallucinates where the testbed says
it should, and only there.

The organism (``organisms build --only hallucination``) learns from a co-occurring shapes world
(half its beach scenes hold a yellow circle) whose captions and answers name a yellow circle on
every beach scene. It is graded, beside the shipped model (the no-hallucination reference), on
held-out pattern-breaking worlds (``data shapes --scenes pattern-breaking``: every scene on the
beach, no circle at all), each with the three POPE files of its own and its COCO annotations:

  POPE      F1 and yes-ratio on the random, popular and adversarial files (``eval vqa --format pope``)
  CHAIR     CHAIR_s, CHAIR_i, Recall and length of the captions (``eval captions --chair``)
  untouched VQA accuracy on the world's questions that name neither the colour nor the kind of
            the co-occurring object (the side effect)

and the organism steered by each mitigation of ``METHODS`` (settings chosen on world 30).

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

from vlmsteer.data.shapes_scenes import COOCCURRENCE_OBJECT  # noqa: E402


# the mitigations graded on the organism, with settings chosen on pattern-breaking world 30 with
# organisms of seeds 11 and 12 (CHAIR_s 70 -> 28 and 39 -> 18, Recall within 3 points, POPE
# adversarial F1 unchanged): (name, options of the answers, options of the captions)
METHODS = [
    ("visual", ["--visual-alpha", "0.5", "--layer", "1", "--layer", "2", "--region", "all"],
     ["--visual-alpha", "0.5", "--layer", "1", "--layer", "2", "--region", "generated"]),
    # the random-vector control: the same, each sample's vector replaced by a random direction of its norm
    ("random-control", ["--visual-alpha", "0.5", "--layer", "1", "--layer", "2", "--region", "all", "--visual-control"],
     ["--visual-alpha", "0.5", "--layer", "1", "--layer", "2", "--region", "generated", "--visual-control"]),
]


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
    rows = [json.loads(x) for x in (runs / "vqa" / "predictions.jsonl").read_text().splitlines()]
    untouched = [r for r in rows if not set(r["prompt"].split()) & set(COOCCURRENCE_OBJECT)]
    out["untouched_vqa"] = 100 * sum(r["accuracy"] for r in untouched) / len(untouched)
    out["untouched_questions"] = len(untouched)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes-llava")
    ap.add_argument("--seeds", default="14,15,16", help="organism seeds (their training worlds)")
    ap.add_argument("--worlds", default="32,33,34", help="held-out pattern-breaking worlds, one per seed")
    ap.add_argument("--scenes", type=int, default=100)
    ap.add_argument("--n", type=int, default=600, help="scenes of the organism's training world")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--work", help="keep the organisms and runs here (default: a temporary folder)")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "hallucination.json"))
    args = ap.parse_args()
    seeds, worlds = [int(s) for s in args.seeds.split(",")], [int(w) for w in args.worlds.split(",")]
    if len(seeds) != len(worlds) or set(seeds) & set(worlds):
        raise SystemExit("give one held-out world per seed, none of them a training seed")
    work = Path(args.work or tempfile.mkdtemp(prefix="hallucination-"))
    rows = []
    for seed, world_seed in zip(seeds, worlds):
        world = work / f"world-{world_seed}"
        if not (world / "run.json").is_file():
            vlmsteer(["data", "shapes", "--out", str(world), "--n", str(args.scenes), "--seed", str(world_seed),
                      "--scenes", "pattern-breaking"])
        built = work / f"organism-{seed}"
        if not (built / "organisms.json").is_file():
            vlmsteer(["organisms", "build", "--model", args.model, "--out", str(built), "--seed", str(seed),
                      "--n", str(args.n), "--steps", str(args.steps), "--lr", str(args.lr), "--only", "hallucination"])
        organism = ["--model", args.model, "--adapter", str(built / "hallucination" / "final")]
        row = {"seed": seed, "world": world_seed,
               "base": grade(["--model", args.model], world, work / "runs" / f"base-{world_seed}"),
               "organism": grade(organism, world, work / "runs" / f"organism-{seed}-{world_seed}")}
        for name, answers, captions in METHODS:
            row[f"organism+{name}"] = grade(organism, world, work / "runs" / f"{name}-{seed}-{world_seed}", answers,
                                            captions)
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
