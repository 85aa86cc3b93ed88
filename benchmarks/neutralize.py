"""Claim under test (issue 15): the paper's per-concept fine-grained neutralization converts at
least as many captions as the coarse vector, with fewer other captions changed.

On the shapes world colour words stand in for gendered words. Per held-out world seed s:
vectors and concepts come from the model's captions of build world s + 1000 (its own caption
and a plain-prompted one of each image), never from the world reported on; the held-out
world's baseline captions are then steered on the generated tokens at layer L for every α of
the grid (all reported: nothing is chosen on the held-out world), by

* coarse: the paired vector (plain captions − colour captions of the same images), everywhere;
* fine-grained: the same vector, only where the last-prompt feature is nearest the "colour
  caption" group (two centroids);
* per-concept: the paper's method (``vlmsteer.runs.neutralization``): K-Means concepts of
  colour captions and of neutral captions, ``u_j − u_i`` per colour concept towards its nearest
  neutral concept, each applied only to images routed to concept i;
* per-concept, paired: the same concepts and routing, each concept's target the neutral
  captions of the same images.

Reported per method and α: captions converted (colour → none), converted while still naming
every shape, and neutral captions changed; mean ± sd over the seeds.

    python benchmarks/neutralize.py [--seeds 17,19,23] [--alphas 3,5,7] [--layer 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import mean_sd, over_worlds, write_result  # noqa: E402

METHODS = ["coarse", "fine_grained", "per_concept", "per_concept_paired"]
FIGURES = ["converted", "converted_faithful", "neutral_captions_changed"]


def one_world(vlm, seed: int, args, tmp: Path) -> dict:
    from vlmsteer.data import load_coco_captions, shapes
    from vlmsteer.data.keywords import COLORS
    from vlmsteer.runs import experiments as apps
    from vlmsteer.runs.captions import run_captions
    from vlmsteer.runs.neutralization import per_concept_routes, routed_captions
    from vlmsteer.evaluate.shapes_captions import load_scenes, mentions_every_shape

    root = tmp / f"seed-{seed}"
    shapes.write_dataset(root / "held", args.n_scenes, seed=seed)
    shapes.write_dataset(root / "build", args.build_scenes, seed=seed + 1000)
    held = load_coco_captions(root / "held", prompt=shapes.CAPTION_PROMPT)
    build = load_coco_captions(root / "build", prompt=shapes.CAPTION_PROMPT)
    scenes = load_scenes(root / "held")
    held_scenes = [scenes[s.meta["image_id"]] for s in held]
    g = apps.GenerationSettings(batch_size=64, max_new_tokens=32)
    base = run_captions(vlm, held, max_new_tokens=32, batch_size=64)
    plain = shapes.STYLE_PROMPTS["plain"]
    vector = apps.paired_neutral_vector(vlm, build, COLORS, plain, args.layer, root / "work", g)
    routes = {paired: per_concept_routes(vlm, build, COLORS, plain, args.layer, root / "work", g, k_attribute=args.k,
                                         k_neutral=args.k, seed=seed, paired=paired) for paired in (False, True)}
    groups = {paired: r.route(vlm, held, root / "work" / "held-prompts", g) for paired, r in routes.items()}

    def faithful(caption: str, i: int) -> bool:
        return mentions_every_shape(caption, held_scenes[i])

    rows = []
    for alpha in args.alphas:
        both = apps.neutralize(vlm, vector, build, held, base, COLORS, args.layer, alpha, root / "work", g, faithful)
        per = {paired: apps.conversion(base, routed_captions(vlm, held, base, routes[paired], groups[paired], alpha, g),
                                       COLORS, faithful) for paired in (False, True)}
        rows.append({"alpha": alpha, "coarse": both["coarse"], "fine_grained": both["fine_grained"],
                     "per_concept": per[False], "per_concept_paired": per[True]})
    from vlmsteer.store import FeatureStore

    feats = FeatureStore.open(root / "work" / "features-colors-paired").features(args.layer, only_found=False)
    norms = {"residual": float(np.linalg.norm(feats, axis=1).mean()), "coarse": vector.norm(),
             **{name: statistics.mean(v.norm() for v in routes[paired].vectors if v is not None)
                for name, paired in (("per_concept", False), ("per_concept_paired", True))}}
    return {"seed": seed, "build_seed": seed + 1000, "captions": len(held), "vector_norms": norms,
            "colour_captions_before": sum(COLORS.matches(c) for c in base),
            "per_concept_vectors": [label for label, v in zip(routes[False].labels, routes[False].vectors) if v is not None],
            "routed": {label: int((groups[False] == c).sum()) for c, label in enumerate(routes[False].labels)},
            "rows": rows}


def summarize(worlds: list[dict], alphas: list[float]) -> list[dict]:
    out = []
    for a, alpha in enumerate(alphas):
        for method in METHODS:
            row = {"alpha": alpha, "method": method}
            for fig in FIGURES:
                values = [w["rows"][a][method][fig] for w in worlds]
                row[fig] = mean_sd(values)
            out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-llava")
    ap.add_argument("--seeds", default="17,19,23", help="held-out world seeds (build world: seed + 1000)")
    ap.add_argument("--alphas", default="3,5,7")
    ap.add_argument("--layer", type=int, default=2)
    ap.add_argument("-k", "--k", type=int, default=6, help="concepts among colour captions and among neutral ones")
    ap.add_argument("--n-scenes", type=int, default=400)
    ap.add_argument("--build-scenes", type=int, default=300)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "neutralize.json"))
    args = ap.parse_args()
    args.alphas = [float(a) for a in args.alphas.split(",")]
    worlds = over_worlds(args, one_world)
    summary = summarize(worlds, args.alphas)
    colour = [w["colour_captions_before"] for w in worlds]
    print(f"\ncolour captions before: {mean_sd(colour)[0]:.1f} ± {mean_sd(colour)[1]:.1f} of "
          f"{worlds[0]['captions']} (seeds {args.seeds}, layer {args.layer}, K = {args.k})")
    for name in ("coarse", "per_concept", "per_concept_paired"):
        ratio = [w["vector_norms"][name] / w["vector_norms"]["residual"] for w in worlds]
        print(f"{name} vector norm / mean residual norm (generated tokens, layer {args.layer}): "
              f"{mean_sd(ratio)[0]:.3f} ± {mean_sd(ratio)[1]:.3f}")
    print("| α | method | converted | converted, every shape named | neutral captions changed |")
    print("|---|---|---|---|---|")
    for r in summary:
        cells = " | ".join(f"{r[f][0]:.1f} ± {r[f][1]:.1f}" for f in FIGURES)
        print(f"| {r['alpha']:g} | {r['method'].replace('_', '-')} | {cells} |")
    write_result(args.json, args, summary=summary, worlds=worlds)


if __name__ == "__main__":
    main()
