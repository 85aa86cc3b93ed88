"""Claim: on shapes-llava, caption-style vectors raise each style's share of held-out captions.

The paper's caption-style experiment (COCO, LLaVA-1.5) on the shapes world. For each style
(colours, places, sentiments) a coarse vector ``mean(with style) - mean(without)`` of
mean-over-generated-token features, from the model's own captions of build scenes (world
seed 8), in two variants:

* ``own``: the captions it writes for the plain caption prompt, split by whether they
  contain a word of the style (the paper's construction);
* ``prompted``: its captions when asked for that style vs when asked for plain shapes.

Each is applied to generated tokens of held-out captions (world seed 7) over layers x
alphas; reported: style share, every-shape mention, CIDEr (pycocoevalcap), captions changed.

    python benchmarks/caption_style.py [--layers 1,2,3] [--alphas 3,4,5,6] [--regions generated,all]
                                       [--n-scenes 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import load_model  # noqa: E402

STYLES = ["colors", "places", "sentiments"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-llava")
    ap.add_argument("--n-scenes", type=int, default=300)
    ap.add_argument("--build-scenes", type=int, default=300)
    ap.add_argument("--layers", default="1,2,3")
    ap.add_argument("--alphas", default="3,4,5,6")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--styles", default=",".join(STYLES))
    ap.add_argument("--regions", default="generated", help="comma-separated steering regions")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from vlmsteer.evaluate import experiments as apps
    from vlmsteer.data import load_coco_captions, shapes
    from vlmsteer.evaluate.captions import evaluate_captions, run_captions
    from vlmsteer.evaluate.shapes_captions import load_scenes, mentions_every_shape
    from vlmsteer.steer.builders import coarse_vector

    vlm = load_model(args.model)
    layers = [int(x) for x in args.layers.split(",")]
    alphas = [float(x) for x in args.alphas.split(",")]
    tmp = Path(tempfile.mkdtemp())
    shapes.write_dataset(tmp / "heldout", args.n_scenes, seed=7)
    shapes.write_dataset(tmp / "build", args.build_scenes, seed=8)
    held = load_coco_captions(tmp / "heldout", prompt=shapes.CAPTION_PROMPT)
    scenes = load_scenes(tmp / "heldout")
    held_scenes = [scenes[s.meta["image_id"]] for s in held]
    build = load_coco_captions(tmp / "build", prompt=shapes.CAPTION_PROMPT)
    g = apps.GenerationSettings(batch_size=64, max_new_tokens=args.tokens, progress=False)

    def every_shape(caps: list[str]) -> dict:
        return {"every_shape": 100.0 * sum(mentions_every_shape(c, sc) for c, sc in zip(caps, held_scenes))
                / len(caps)}

    base = run_captions(vlm, held, max_new_tokens=args.tokens, batch_size=64, progress=False)
    base_rep = evaluate_captions(held, base)
    own = apps.generated_store(vlm, build, tmp / "own", layers, "mean_response", g)
    rows = []
    for style in args.styles.split(","):
        vectors = {
            "own": coarse_vector(own, f"response!~{style}", target=f"response~{style}", layers=layers),
            "prompted": apps.style_vector(vlm, build, shapes.STYLE_PROMPTS, style, layers, tmp / "prompted", g),
        }
        for source, vec in vectors.items():
            for layer, region in itertools.product(layers, args.regions.split(",")):
                res = apps.caption_style(vlm, vec, held, base, style, layer, alphas, g, quality=every_shape,
                                         region=region)
                for r in res["rows"]:
                    rows.append({"style": style, "vector": source, "layer": layer, "region": region,
                                 "vector_samples": res["vector_samples"], **r})
                    print(json.dumps({k: v for k, v in rows[-1].items() if k != "example"}), flush=True)
    best = {}
    for style in args.styles.split(","):
        good = [r for r in rows if r["style"] == style and r["share_after"] - r["share_before"] >= 30]
        best[style] = max(good, key=lambda r: r["cider_after"]) if good else None
    result = {"model": args.model, "held_out_images": len(held), "baseline": base_rep.to_dict(),
              "baseline_every_shape": every_shape(base)["every_shape"], "rows": rows, "best": best}
    print("\n| style | vector | layer | region | α | style share | every shape named | CIDEr | captions changed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['style']} | {r['vector']} | {r['layer']} | {r['region']} | {r['alpha']:g} | "
              f"{r['share_before']:.1f} → {r['share_after']:.1f} | {r['every_shape_before']:.1f} → "
              f"{r['every_shape_after']:.1f} | {r['cider_before']:.3f} → {r['cider_after']:.3f} | "
              f"{r['captions_changed']} |")
    print("\nbest per style (highest CIDEr among settings raising the share by >= 30 points):")
    for style, r in best.items():
        print(f"  {style}: " + ("none" if r is None else f"{r['vector']} layer {r['layer']} {r['region']} "
                                                        f"alpha {r['alpha']:g}: {r['share_before']:.1f} -> "
                                                        f"{r['share_after']:.1f}, CIDEr {r['cider_after']:.3f}"))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
