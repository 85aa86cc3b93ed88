"""Claim: once started, vLLM generates ≥ 3 × faster than the transformers engine, steered and
unsteered, and steering costs it ≤ 10 %; answers equal the reference.

The same workloads on both engines, side by side in one run, on a held-out shapes world
(``--seed``): ``--n`` questions (8 new tokens), ``--captions`` captions (32 tokens), each
unsteered, steered by one vector (last prompt position, the last two layers: 2–3 on the shipped
model), and with a different vector per request (α from a grid of 4, one engine pass). vLLM's
start-up (engine and model load) is timed apart from the steady state; each workload runs
``--repeats`` times per engine, interleaved, and the medians are compared. The transformers
engine runs batches of ``--batch``. The time vLLM's model forward takes in each run (summed over
its steps, timed inside the engine) bounds what any cut of vLLM's own overhead could reach:
``ceiling = transformers_s / vllm_forward_s`` is the speed-up of a vLLM whose every step were its
forward alone. Needs vLLM (the opt-in job's environment: ``bash .ci/vllm`` builds ``.venv-vllm``).

    python benchmarks/engine.py [--n 2000] [--captions 200] [--batch 64] [--repeats 3] [--json out.json]
                                [--model shapes-llava] [--device cpu] [--dtype auto]

On a GPU: ``--model llava-hf/llava-1.5-7b-hf --device cuda --dtype bfloat16`` (vLLM takes the GPU;
the transformers engine runs on ``--device``; the world's questions and images are the same).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _common import load_model, print_and_save  # noqa: E402


def _load(args):
    from _common import quiet

    from vlmsteer.model import VLM

    quiet()
    return VLM.load(args.model, device=args.device, dtype=args.dtype)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="questions")
    ap.add_argument("--captions", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64, help="the transformers engine's batch size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=31)
    ap.add_argument("--model", default="shapes-llava")
    ap.add_argument("--device", default="cpu", help="the transformers engine's device")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--json")
    args = ap.parse_args()
    import torch

    from vlmsteer.data import load_coco_captions, load_vqav2, shapes
    from vlmsteer.engines.vllm_engine import VllmEngine
    from vlmsteer.runs.generation import generate_responses
    from vlmsteer.steer.steerer import Steering
    from vlmsteer.steer.vector import SteeringVector

    vlm = load_model(args.model) if args.model.startswith("tiny:") else _load(args)
    root = pathlib.Path(tempfile.mkdtemp()) / "world"
    scenes = max(args.captions, args.n // 9 + 1)
    shapes.write_dataset(root, scenes, seed=args.seed)
    questions = load_vqav2(root)[:args.n]
    captions = load_coco_captions(root)[:args.captions]
    w = vlm.unembed.weight.detach().float().cpu()
    word = lambda text: vlm.tokenizer(" " + text, add_special_tokens=False)["input_ids"][-1]  # noqa: E731
    d = w[word("no")] - w[word("yes")]
    layers = (vlm.num_layers - 2, vlm.num_layers - 1)  # the last two (2, 3 on the shipped model)
    vector = SteeringVector({layer: d / d.norm() for layer in layers}, model_id=vlm.model_id)
    one = Steering(vector, alpha=40.0, layers=layers, region="last_prompt")
    grid = [Steering(vector, alpha=a, layers=layers, region="last_prompt") for a in (10.0, 20.0, 40.0, 60.0)]

    t0 = time.perf_counter()
    engine = VllmEngine.for_model(vlm)
    startup = time.perf_counter() - t0

    def transformers_run(samples, steering, tokens):
        if isinstance(steering, list):  # the reference runs each setting on its own requests
            out = [None] * len(samples)
            for k, s in enumerate(grid):
                rows = list(range(k, len(samples), len(grid)))
                for i, r in zip(rows, generate_responses(vlm, [samples[i] for i in rows], batch_size=args.batch,
                                                         max_new_tokens=tokens, steering=s)):
                    out[i] = r
            return out
        return generate_responses(vlm, samples, batch_size=args.batch, max_new_tokens=tokens, steering=steering)

    engine.llm.collective_rpc(_time_forward)

    def vllm_run(samples, steering, tokens):
        out = engine.generate(samples, steering, max_new_tokens=tokens)
        forward_s.append(engine.llm.collective_rpc(_forward_seconds)[0])
        return out

    workloads = {"questions, unsteered": (questions, None, 8), "questions, one vector": (questions, one, 8),
                 "questions, a vector per request": (questions, [grid[i % 4] for i in range(len(questions))], 8),
                 "captions, unsteered": (captions, None, 32), "captions, one vector": (captions, one, 32)}
    rows = []
    for name, (samples, steering, tokens) in workloads.items():
        times = {"transformers": [], "vllm": []}
        answers, forward_s = {}, []
        for _ in range(args.repeats):
            for side, run in (("transformers", transformers_run), ("vllm", vllm_run)):
                t = time.perf_counter()
                answers[side] = run(samples, steering, tokens)
                times[side].append(time.perf_counter() - t)
        equal = sum(a.text == b.text for a, b in zip(answers["transformers"], answers["vllm"])) / len(samples)
        hf, vl = (statistics.median(times[k]) for k in ("transformers", "vllm"))
        fw = statistics.median(forward_s)
        rows.append({"workload": name, "samples": len(samples), "new_tokens": tokens,
                     "transformers_s": round(hf, 3), "vllm_s": round(vl, 3), "speedup": round(hf / vl, 2),
                     "vllm_forward_s": round(fw, 3), "ceiling": round(hf / fw, 2),
                     "equal": round(equal, 4), "times_s": {k: [round(v, 3) for v in vs] for k, vs in times.items()}})
    by = {r["workload"]: r for r in rows}
    result = {"model": vlm.model_id, "vllm_startup_s": round(startup, 1), "threads": torch.get_num_threads(),
              "batch": args.batch, "repeats": args.repeats, "world_seed": args.seed, "workloads": rows,
              "vllm_steered_over_unsteered": round(by["questions, one vector"]["vllm_s"]
                                                   / by["questions, unsteered"]["vllm_s"], 3)}
    print_and_save(result, args.json)


def _time_forward(worker) -> None:
    """Inside the engine: sum the seconds of each call of the model's forward."""
    model = worker.model_runner.model
    forward = model.forward
    worker.forward_seconds = 0.0

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return forward(*args, **kwargs)
        finally:
            worker.forward_seconds += time.perf_counter() - t
    model.forward = timed


def _forward_seconds(worker) -> float:
    """The forward's seconds since the last call (and start again from 0)."""
    seconds, worker.forward_seconds = worker.forward_seconds, 0.0
    return seconds


if __name__ == "__main__":
    main()
