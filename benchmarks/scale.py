"""Claim: vlmsteer runs a model of LLaVA-1.5-7B's shapes, and extraction costs about what a
bare transformers forward costs.

Builds a "7B-shaped" LLaVA with random weights: LLaVA-1.5-7B's real configuration (CLIP
ViT-L/14 at 336 px, 576 image tokens, hidden size 4096, intermediate 11008, 32 heads,
vocabulary 32064) with ``--layers`` decoder layers (2 on a CPU; 32 on a GPU is the real
depth). Then, side by side on the same samples:

* bare: the processor and ``model(**inputs, output_hidden_states=True)`` only (transformers),
* extract: ``vlmsteer.extract`` of the last layer at the last prompt token,
* steered: ``vlm.generate`` of 4 tokens with a random vector added at the last layer.

    python benchmarks/scale.py [--n 8] [--layers 2] [--device cpu] [--dtype float32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image


def build(layers: int):
    """LLaVA-1.5-7B's configuration with ``layers`` decoder layers and random weights."""
    from vlmsteer.testing.tiny_models import build_llava

    model, proc = build_llava(
        image_size=336, patch_size=14, vocab_size=32064, vision_feature_layer=-2,
        vision={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                "projection_dim": 768},
        text={"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": layers, "num_attention_heads": 32,
              "num_key_value_heads": 32, "max_position_embeddings": 4096, "initializer_range": 0.02})
    return model.eval(), proc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json")
    args = ap.parse_args()
    from vlmsteer.data import load_vqav2, shapes
    from vlmsteer.extract import ExtractConfig, extract
    from vlmsteer.model import VLM
    from vlmsteer.positions import Selector
    from vlmsteer.steer import SteeringVector, steer

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, proc = build(args.layers)
    model.to(device=args.device, dtype=getattr(torch, args.dtype))
    built_s = time.perf_counter() - t0
    vlm = VLM.from_hf(model, proc, model_id="llava-1.5-7b-shaped")
    tmp = Path(tempfile.mkdtemp())
    shapes.write_dataset(tmp / "w", max(2, args.n // 9 + 2), seed=3)
    samples = load_vqav2(tmp / "w")[:args.n]
    last = vlm.num_layers - 1
    sync = (lambda: torch.cuda.synchronize()) if args.device.startswith("cuda") else (lambda: None)

    def bare() -> float:
        t = time.perf_counter()
        for start in range(0, len(samples), args.batch_size):
            chunk = samples[start:start + args.batch_size]
            texts = [proc.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                            {"type": "text", "text": s.prompt}]}],
                                              add_generation_prompt=True) for s in chunk]
            images = [Image.open(s.image).convert("RGB") for s in chunk]
            inputs = proc(images=images, text=texts, return_tensors="pt", padding=True).to(args.device)
            with torch.no_grad():
                model(**inputs, output_hidden_states=True)
        sync()
        return time.perf_counter() - t

    def ours() -> float:
        t = time.perf_counter()
        extract(vlm, samples, Path(tempfile.mkdtemp()) / "s",
                ExtractConfig(layers=[last], selector=Selector("last_prompt"), batch_size=args.batch_size))
        sync()
        return time.perf_counter() - t

    def steered() -> float:
        vec = SteeringVector({last: torch.randn(vlm.hidden_size)})
        t = time.perf_counter()
        for start in range(0, len(samples), args.batch_size):
            chunk = samples[start:start + args.batch_size]
            batch = vlm.prepare([s.image for s in chunk], [s.prompt for s in chunk])
            with steer(vlm, vec, batch, alpha=1.0, region="last_prompt"):
                vlm.generate(batch, max_new_tokens=4)
        sync()
        return time.perf_counter() - t

    bare(), ours()  # warm-up
    times = {"bare_forward_s": min(bare() for _ in range(2)), "extract_s": min(ours() for _ in range(2)),
             "steered_generate_4_tokens_s": steered()}
    result = {"layers": args.layers, "device": args.device, "dtype": args.dtype, "n": len(samples),
              "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1), "build_s": round(built_s, 1),
              **{k: round(v, 2) for k, v in times.items()},
              "samples_per_s": {k.removesuffix("_s"): round(len(samples) / v, 3) for k, v in times.items()},
              "extract_over_bare": round(times["extract_s"] / times["bare_forward_s"], 3)}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
