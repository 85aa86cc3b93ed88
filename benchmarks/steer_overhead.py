"""Claim: steering costs ≤ 5 % over unsteered generation.

Steered vs unsteered ``generate`` (greedy, KV cache) on the same batches: batch 8, 16 new
tokens, a vector on every prompt and generated position of the last layer; interleaved,
best of R repeats each, in one process.

    python benchmarks/steer_overhead.py [--model shapes-llava] [--batches 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import load_model, shapes_vqa  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-llava")
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from vlmsteer.steer import SteeringVector, steer

    vlm = load_model(args.model)
    samples = shapes_vqa(args.batches * args.batch_size)
    batches = [vlm.prepare([s.image for s in samples[i:i + args.batch_size]],
                           [s.prompt for s in samples[i:i + args.batch_size]])
               for i in range(0, len(samples), args.batch_size)]
    vec = SteeringVector({vlm.num_layers - 1: torch.randn(vlm.hidden_size) * 1e-3})

    def run(steered: bool) -> float:
        t0 = time.perf_counter()
        for b in batches:
            if steered:
                with steer(vlm, vec, b, alpha=1.0, region="all"):
                    vlm.generate(b, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
            else:
                vlm.generate(b, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
        return time.perf_counter() - t0

    run(False), run(True)  # warm-up
    plain, steered = [], []
    for i in range(args.repeats):  # alternate the order so neither side always runs second
        if i % 2:
            steered.append(run(True))
            plain.append(run(False))
        else:
            plain.append(run(False))
            steered.append(run(True))
    result = {"model": args.model, "batches": len(batches), "batch_size": args.batch_size,
              "new_tokens": args.new_tokens, "unsteered_s": min(plain), "steered_s": min(steered),
              "ratio": min(steered) / min(plain)}
    print(json.dumps(result, indent=2))
    print(f"steered/unsteered = {result['ratio']:.3f} (claim <= 1.05)")


if __name__ == "__main__":
    main()
