"""Claim: on shapes-llava, steering moves targeted answers and leaves the other answer types.

The paper's Table (VQAv2, LLaVA-1.5) reproduced on the shapes world: Yes->No, 1->3 and
White->Black vectors, each ``mean(target) - mean(source)`` of last-prompt-token features at
the last layer from at most 500 training questions of a build world (seed s + 1000), applied
with alpha = 1 at the last prompt position to the questions of held-out world s, for each of
three seeds (mean ± sd). Layer and alpha are fixed in advance (the last layer, 1, as in the
paper), not tuned on any world. Coarse (every question) and
fine-grained (only where the source answer's concept is active: nearest answer centroid), and
fine-grained on the question family (where any answer of the source's family is the nearest
concept: all colours for White->Black, all counts for 1->3).

    python benchmarks/steer_vqa.py [--model shapes-llava] [--n-scenes 400] [--seeds 7,11,13] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import load_model, mean_sd  # noqa: E402

PAIRS = [("yes", "no"), ("1", "3"), ("white", "black")]
BUILD_OFFSET = 1000  # the build world of held-out seed s is s + 1000: never the world reported on
FAMILIES = {"yes": ["yes", "no"], "1": ["0", "1", "2", "3", "4"],
            "white": ["red", "green", "blue", "yellow", "white", "black"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-llava")
    ap.add_argument("--n-scenes", type=int, default=400)
    ap.add_argument("--train-scenes", type=int, default=400)
    ap.add_argument("--per-side", type=int, default=250, help="samples per side of each vector (<= 500 in all)")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--seeds", default="7,11,13", help="held-out world seeds; each builds its vectors on "
                                                        "world seed + 1000")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    vlm = load_model(args.model)
    last = vlm.num_layers - 1
    seeds = [int(x) for x in args.seeds.split(",")]
    runs = [one_world(vlm, last, seed, args) for seed in seeds]
    rows = aggregate([r["rows"] for r in runs])
    result = {"model": args.model, "seeds": seeds, "build_seed_offset": BUILD_OFFSET, "alpha": args.alpha,
              "layer": last, "held_out_questions": [r["held_out_questions"] for r in runs],
              "baseline_accuracy": mean_sd([r["baseline_accuracy"] for r in runs]), "rows": rows, "runs": runs}
    print(json.dumps(result, indent=2))
    types = list(runs[0]["baseline_accuracy"])
    print(f"\n{len(seeds)} held-out worlds (seeds {args.seeds}), mean ± sd\n")
    print("| vector | mode | source moved % | target × | " + " | ".join(f"Δ {t}" for t in types) + " |")
    print("|---|---|---|---|" + "---|" * len(types))
    base = result["baseline_accuracy"]
    print("| none | — | | | " + " | ".join(f"{base[t][0]:.2f} ± {base[t][1]:.2f}" for t in types) + " |")
    for r in rows:
        print(f"| {r['vector']} | {r['mode']} | {100 * r['moved_fraction'][0]:.1f} ± {100 * r['moved_fraction'][1]:.1f} "
              f"| {r['target_ratio'][0]:.1f} ± {r['target_ratio'][1]:.1f} | "
              + " | ".join(f"{r['accuracy_delta'][t][0]:+.2f} ± {r['accuracy_delta'][t][1]:.2f}" for t in types) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def one_world(vlm, last: int, seed: int, args) -> dict:
    """Vectors from the build world (seed + BUILD_OFFSET), applied to held-out world ``seed``."""
    from vlmsteer.data import load_vqav2, shapes
    from vlmsteer.evaluate.vqa import compare_runs
    from vlmsteer.runs.vqa import run_vqa
    from vlmsteer.extract import ExtractConfig, extract
    from vlmsteer.positions import Selector
    from vlmsteer.steer import Steering
    from vlmsteer.steer.builders import coarse_vector
    from vlmsteer.steer.conditions import NearestConceptCondition

    tmp = Path(tempfile.mkdtemp())
    shapes.write_dataset(tmp / "heldout", args.n_scenes, seed=seed)
    shapes.write_dataset(tmp / "train", args.train_scenes, seed=seed + BUILD_OFFSET)
    held = load_vqav2(tmp / "heldout")
    train = load_vqav2(tmp / "train")
    store, _ = extract(vlm, train, tmp / "store", ExtractConfig(layers=[last], selector=Selector("last_prompt"),
                                                                batch_size=64))
    base, base_rep = run_vqa(vlm, held, batch_size=64, max_new_tokens=3)
    rows = []
    for source, target in PAIRS:
        vec = coarse_vector(store, f"answer={source}", target=f"answer={target}", layers=[last],
                            max_samples=args.per_side, seed=0)
        cond = NearestConceptCondition.from_store(store, last, active_values=[source])
        family = NearestConceptCondition.from_store(store, last, active_values=FAMILIES[source])
        for mode, c in (("coarse", None), ("fine-grained", cond), ("fine-grained, family", family)):
            preds, rep = run_vqa(vlm, held, batch_size=64, max_new_tokens=3,
                                 steering=Steering(vec, args.alpha, region="last_prompt", condition=c))
            cmp = compare_runs(base, preds, source=source, target=target)
            rows.append({"vector": f"{source}->{target}", "mode": mode, "vector_samples": vec.n_source + vec.n_target,
                         "source_before": cmp["source"]["before"], "source_after": cmp["source"]["after"],
                         "target_before": cmp["target"]["before"], "target_after": cmp["target"]["after"],
                         "moved_fraction": cmp["source_moved_fraction"],
                         "target_ratio": cmp["target"]["after"] / max(1, cmp["target"]["before"]),
                         "accuracy": rep.per_type,
                         "accuracy_delta": {t: rep.per_type[t] - base_rep.per_type[t] for t in rep.per_type}})
    return {"seed": seed, "held_out_questions": len(held), "baseline_accuracy": base_rep.per_type, "rows": rows}


def aggregate(per_seed: list[list[dict]]) -> list[dict]:
    out = []
    for i, row in enumerate(per_seed[0]):
        same = [rows[i] for rows in per_seed]
        out.append({"vector": row["vector"], "mode": row["mode"],
                    **{k: mean_sd([r[k] for r in same]) for k in ("moved_fraction", "target_ratio",
                                                                   "accuracy_delta", "source_before",
                                                                   "target_after")}})
    return out


if __name__ == "__main__":
    main()
