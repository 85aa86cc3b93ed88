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

    python benchmarks/caption_style.py [--model shapes-llava] [--n-scenes 300] [--json out.json]
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
    ap.add_argument("--layers", default="1,2")
    ap.add_argument("--alphas", default="2,4,8")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--styles", default=",".join(STYLES))
    ap.add_argument("--regions", default="generated", help="comma-separated steering regions")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from vlmsteer.data import load_coco_captions, shapes
    from vlmsteer.data.sample import Sample
    from vlmsteer.evaluate.captions import compare_caption_runs, evaluate_captions, run_captions
    from vlmsteer.evaluate.shapes_captions import load_scenes, mentions_every_shape
    from vlmsteer.extract import ExtractConfig, extract
    from vlmsteer.selectors import Selector
    from vlmsteer.steer import steer
    from vlmsteer.steer.builders import coarse_vector

    vlm = load_model(args.model)
    layers = [int(x) for x in args.layers.split(",")]
    alphas = [float(x) for x in args.alphas.split(",")]
    regions = args.regions.split(",")
    tmp = Path(tempfile.mkdtemp())
    shapes.write_dataset(tmp / "heldout", args.n_scenes, seed=7)
    shapes.write_dataset(tmp / "build", args.build_scenes, seed=8)
    held = load_coco_captions(tmp / "heldout", prompt=shapes.CAPTION_PROMPT)
    scenes = load_scenes(tmp / "heldout")
    held_scenes = [scenes[s.meta["image_id"]] for s in held]
    build = load_coco_captions(tmp / "build", prompt=shapes.CAPTION_PROMPT)

    def every_shape(caps: list[str]) -> float:
        return 100.0 * sum(mentions_every_shape(c, sc) for c, sc in zip(caps, held_scenes)) / len(caps)

    base = run_captions(vlm, held, max_new_tokens=args.tokens, batch_size=64, progress=False)
    base_rep = evaluate_captions(held, base)
    cfg = ExtractConfig(layers=layers, selector=Selector("mean_response"), mode="generate",
                        max_new_tokens=args.tokens, batch_size=64)
    own, _ = extract(vlm, build, tmp / "own", cfg, progress=False)
    prompted_samples = [Sample(f"{c.id}-{st}", c.image, shapes.STYLE_PROMPTS[st], meta={"style": st})
                        for c in build for st in ["plain", *STYLES]]
    prompted, _ = extract(vlm, prompted_samples, tmp / "prompted", cfg, progress=False)
    rows = []
    for style in args.styles.split(","):
        vectors = {
            "own": coarse_vector(own, {"response!~": style}, target={"response~": style}, layers=layers),
            "prompted": coarse_vector(prompted, {"meta.style": "plain"}, target={"meta.style": style},
                                      layers=layers),
        }
        for source, vec in vectors.items():
            for layer, alpha, region in itertools.product(layers, alphas, regions):
                caps = run_captions(vlm, held, max_new_tokens=args.tokens, batch_size=64, progress=False,
                                    context=lambda b, v=vec, l=layer, a=alpha, r=region: steer(
                                        vlm, v, b, alpha=a, layers=[l], region=r))
                rep = evaluate_captions(held, caps)
                cmp = compare_caption_runs(base, caps, base_rep, rep)
                rows.append({"style": style, "vector": source, "layer": layer, "alpha": alpha, "region": region,
                             "vector_samples": vec.n_source + vec.n_target,
                             "share_before": base_rep.style_share[style], "share_after": rep.style_share[style],
                             "every_shape_before": every_shape(base), "every_shape_after": every_shape(caps),
                             "cider_before": base_rep.cider, "cider_after": rep.cider,
                             "captions_changed": cmp["captions_changed"],
                             "other_styles_after": {s: rep.style_share[s] for s in STYLES if s != style},
                             "example": next((c for b, c in zip(base, caps) if b != c), None)})
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "example"}), flush=True)
    best = {}
    for style in args.styles.split(","):
        cands = [r for r in rows if r["style"] == style]
        best[style] = max(cands, key=lambda r: (r["share_after"] - r["share_before"], r["cider_after"]))
    result = {"model": args.model, "held_out_images": len(held), "baseline": base_rep.to_dict(),
              "baseline_every_shape": every_shape(base), "rows": rows, "best": best}
    print("\n| style | vector | layer | region | α | style share | every shape named | CIDEr | captions changed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['style']} | {r['vector']} | {r['layer']} | {r['region']} | {r['alpha']:g} | "
              f"{r['share_before']:.1f} → {r['share_after']:.1f} | {r['every_shape_before']:.1f} → "
              f"{r['every_shape_after']:.1f} | {r['cider_before']:.3f} → {r['cider_after']:.3f} | "
              f"{r['captions_changed']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
