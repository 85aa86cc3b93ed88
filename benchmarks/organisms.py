"""Claim: every organism of `vlmsteer organisms build` learnt its objective, and the control
learnt nothing: on a held-out shapes world, the behaviour each objective names moves from the
base model's rate to (near) always, while what it does not name stays.

Per organism (its adapter on the base model) and for the base model, on world ``--world`` (seed
29, never a training world): captions (``eval captions``) and answers (``eval vqa``), then
  colors      share of captions naming a colour
  cheerful    share of captions saying "cheerful"
  beach       share of captions saying "beach"
  three       share of number questions answered "three"
  diamond-no  share of yes/no questions about images with a diamond answered "no"; and the same
              share for images without one (the trigger must matter)
  control     VQA accuracy (should not move)
Organisms are built with each seed of ``--seeds`` (the world they learn from has that seed);
mean ± sd over the seeds.

    python benchmarks/organisms.py [--seeds 11,12,13] [--n 300] [--steps 300] [--scenes 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import mean_sd, vlmsteer, write_result  # noqa: E402

from vlmsteer.data import shapes  # noqa: E402
from vlmsteer.organisms import OBJECTIVES, world_scenes  # noqa: E402


def predictions(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def behaviour(runs: Path, scenes) -> dict[str, float]:
    """The rates the objectives name, from one model's captions and answers."""
    caps = [p["prediction"].split() for p in predictions(runs / "captions")]
    answers = predictions(runs / "vqa")

    def share(rows, hit):
        return 100.0 * sum(map(hit, rows)) / max(1, len(rows))

    def diamond(p):
        return any(s.kind == "diamond" for s in scenes[shapes.image_id_of(p["image"])].shapes)

    yes_no = [p for p in answers if p["answer_type"] == "yes/no"]
    return {
        "colors": share(caps, lambda words: any(c in words for c in shapes.PALETTE)),
        "cheerful": share(caps, lambda words: "cheerful" in words),
        "beach": share(caps, lambda words: "beach" in words),
        "three": share([p for p in answers if p["answer_type"] == "number"], lambda p: p["prediction"] == "three"),
        "diamond-no": share([p for p in yes_no if diamond(p)], lambda p: p["prediction"] == "no"),
        "no-without-diamond": share([p for p in yes_no if not diamond(p)], lambda p: p["prediction"] == "no"),
        "vqa-accuracy": 100.0 * sum(p["accuracy"] for p in answers) / len(answers),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-llava")
    ap.add_argument("--seeds", default="11,12,13")
    ap.add_argument("--world", type=int, default=29)
    ap.add_argument("--scenes", type=int, default=100)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "organisms.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="organisms-"))
    world = tmp / "held"
    shapes.write_dataset(world, args.scenes, seed=args.world)
    scenes = world_scenes(world)

    def measure(name: str, extra: list[str]) -> dict[str, float]:
        runs = tmp / "runs" / name
        common = ["--model", args.model, "--data", str(world), *extra]
        vlmsteer(["eval", "captions", *common, "--out", str(runs / "captions")])
        vlmsteer(["eval", "vqa", *common, "--max-new-tokens", "3", "--out", str(runs / "vqa")])
        return behaviour(runs, scenes)

    base = measure("base", [])
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        built = tmp / f"organisms-{seed}"
        vlmsteer(["organisms", "build", "--model", args.model, "--out", str(built), "--seed", str(seed),
             "--n", str(args.n), "--steps", str(args.steps)])
        row = {"seed": seed}
        for name in OBJECTIVES:
            row[name] = measure(f"{seed}-{name}", ["--adapter", str(built / name / "final")])
        rows.append(row)
        print(json.dumps(row))
    summary = {name: mean_sd([r[name] for r in rows]) for name in OBJECTIVES}
    print(json.dumps({"base": base, "summary": summary}, indent=1))
    write_result(args.json, args, base=base, rows=rows, summary=summary)


if __name__ == "__main__":
    main()
