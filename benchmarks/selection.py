"""Discovering directions with the selection metric, over several held-out worlds.

Per world seed s: a K-Means dictionary (K = 12) of last-prompt features at the last layer of
≤ 750 questions of build world s + 1000; its K(K−1) concept-pair vectors ``u_j − u_i`` are
ranked by the selection metric on 300 questions of world s (α = 1, last prompt token), in
both forms (the paper's ``base``: increase relative to each answer's own baseline count;
``total``: change in the share of all answers). Reported: the primary answers of the top
five distinct directions per world and form, and how many of the worlds each answer reaches
the top five in.

    python benchmarks/selection.py [--seeds 17,19,23] [--k 12] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import over_worlds, write_result  # noqa: E402


def one_world(vlm, seed: int, args, tmp: Path) -> dict:
    from vlmsteer.concepts import KMeansConcepts
    from vlmsteer.data import load_vqav2, shapes
    from vlmsteer.runs.select import rank_vectors
    from vlmsteer.extract import ExtractConfig, extract
    from vlmsteer.positions import Selector
    from vlmsteer.steer.builders import all_concept_shifts

    root = tmp / f"seed-{seed}"
    shapes.write_dataset(root / "build", 90, seed=seed + 1000)
    shapes.write_dataset(root / "held", 40, seed=seed)
    last = vlm.num_layers - 1
    store, _ = extract(vlm, load_vqav2(root / "build")[:750], root / "store",
                       ExtractConfig(layers=[last], selector=Selector("last_prompt"), batch_size=64))
    concepts = KMeansConcepts(k=args.k, seed=0).fit(store.features(last))
    result = rank_vectors(vlm, load_vqav2(root / "held")[:300], all_concept_shifts(concepts.components_, layer=last),
                          batch_size=100)
    return {"seed": seed, "candidates": args.k * (args.k - 1),
            "top5": {form: [r["primary"] for r in ranking[:5]] for form, ranking in result["rankings"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-llava")
    ap.add_argument("--seeds", default="17,19,23", help="held-out world seeds (build world: seed + 1000)")
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "selection.json"))
    args = ap.parse_args()
    worlds = over_worlds(args, one_world)
    summary = {}
    for form in worlds[0]["top5"]:
        counts = Counter(" / ".join(p) for w in worlds for p in w["top5"][form])
        summary[form] = dict(counts.most_common())
        print(f"\n{form}: top five per world")
        for w in worlds:
            print(f"  world {w['seed']}: " + ", ".join(" / ".join(p) for p in w["top5"][form]))
        print(f"  in how many of the {len(worlds)} worlds' top five: " +
              ", ".join(f"{a} {n}" for a, n in counts.most_common()))
    write_result(args.json, args, summary=summary, worlds=worlds)


if __name__ == "__main__":
    main()
