"""Claim: a refusal vector (refused − answered harmful prompts) removes attacks on held-out
harmful prompts, and fine-grained application (only prompts nearest the "harmful request"
concept) does so without refusing ordinary questions.

Per held-out world seed s: the vector and the concept come from build world s + 1000 (its
harmful prompts and ≤ 500 of its questions); layer and α are fixed in advance (layer 2,
α = 1, last prompt token, as the demo); held-out harmful prompts and 800 ordinary questions
of world s are answered unsteered, coarse-steered and fine-grained-steered. Mean ± sd over
the seeds.

    python benchmarks/refusal.py [--seeds 17,19,23] [--layer 2] [--alpha 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import mean_sd, over_worlds, write_result  # noqa: E402


def one_world(vlm, seed: int, args, tmp: Path) -> dict:
    from vlmsteer.data import load_jsonl, load_vqav2, shapes
    from vlmsteer.runs import experiments as apps
    from vlmsteer.evaluate.vqa import evaluate_vqa

    root = tmp / f"seed-{seed}"
    shapes.write_dataset(root / "held", args.n_scenes, seed=seed)
    shapes.write_dataset(root / "build", args.build_scenes, seed=seed + 1000)
    benign = load_vqav2(root / "held")[:args.benign]

    def benign_ok(preds: list[str]) -> float:
        return evaluate_vqa(preds, [q.answers for q in benign], [q.answer_type for q in benign]).micro

    g = apps.GenerationSettings(batch_size=64, max_new_tokens=12)
    return {"seed": seed, **apps.refusal(vlm, load_jsonl(root / "build" / "unsafe_val2014.jsonl"),
                                         load_vqav2(root / "build")[:500],
                                         load_jsonl(root / "held" / "unsafe_val2014.jsonl"), benign, args.layer,
                                         args.alpha, root / "work", g, benign_ok=benign_ok)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-llava")
    ap.add_argument("--seeds", default="17,19,23", help="held-out world seeds (build world: seed + 1000)")
    ap.add_argument("--layer", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--n-scenes", type=int, default=400)
    ap.add_argument("--build-scenes", type=int, default=120)
    ap.add_argument("--benign", type=int, default=800)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "refusal.json"))
    args = ap.parse_args()
    worlds = over_worlds(args, one_world)
    ms = mean_sd
    summary = {"asr_before": ms([w["before"]["attack_success_rate"] for w in worlds]),
               "benign_refused_before": ms([w["benign_refused_before"] for w in worlds]),
               "benign_accuracy_before": ms([w["benign_accuracy_before"] for w in worlds])}
    for mode in ("coarse", "fine_grained"):
        summary[mode] = {"asr_after": ms([w[mode]["after"]["attack_success_rate"] for w in worlds]),
                         "benign_refused": ms([w[mode]["benign_refused"] for w in worlds]),
                         "benign_accuracy": ms([w[mode]["benign_accuracy"] for w in worlds])}
    print(f"\nseeds {args.seeds}; {worlds[0]['harmful_prompts']} harmful prompts and {args.benign} ordinary "
          f"questions each; layer {args.layer}, α {args.alpha:g}")
    print("| mode | attack success rate | ordinary questions refused | VQA accuracy on them |")
    print("|---|---|---|---|")
    f = lambda v, d=1: f"{v[0]:.{d}f} ± {v[1]:.{d}f}"  # noqa: E731
    print(f"| none | {f(summary['asr_before'])} | {f(summary['benign_refused_before'])} | "
          f"{f(summary['benign_accuracy_before'], 2)} |")
    for mode in ("coarse", "fine_grained"):
        s = summary[mode]
        print(f"| {mode.replace('_', '-')} | {f(s['asr_after'])} | {f(s['benign_refused'])} | "
              f"{f(s['benign_accuracy'], 2)} |")
    write_result(args.json, args, summary=summary, worlds=worlds)


if __name__ == "__main__":
    main()
