"""Claim: model diffing names what fine-tuning taught. Graded on the organisms of
`vlmsteer organisms build` (objectives known), per organism × method × token region × seed:
does the readout name the objective (one of its words among the top ``--top`` words, and the
difference large enough to call the model changed), and is the control called unchanged?

Methods (`vlmsteer diff --method ...`): ``adl`` (the activation difference lens),
``concepts`` (the paper's concept shift: the original's ``-k`` 10 concepts, readout = the
words of the largest samples × shift concept's shift vector), ``crosscoder`` (BatchTopK; readout
= the largest of the decoder bias's change and the fine-tuned-only latents kept by latent
scaling) and ``sae-diff`` (a BatchTopK SAE on the differences; readout = the largest of its
decoder bias and its latents), both with their default sizes. Inputs
unrelated to the objectives: ``--questions`` questions of a held-out world (seed ``--world``),
read at layer ``--layer`` over the prompt text tokens (``mean_text``) or the image tokens
(``mean_image``). A model counts as changed by diff's own verdict: the readout above its noise
floor (how far the base model's mean moves between random halves of the same samples, 95th
percentile of 20 splits), measured from the data, no constant (``--changed X`` grades with a
fixed share of the features' spread instead, as before: 0.1). Organisms are built per seed of ``--seeds`` (or read
from ``--built DIR,DIR,...``, folders of `organisms build`). For the control, "named" counts
the seeds where it was called changed: a false positive. For the triggered organism,
``trigger_share`` is the share of the 8 samples that changed most along the readout whose image
shows the trigger (against the world's base rate, printed first).

For ``crosscoder`` and ``sae-diff`` a row also says whether their largest latent alone (their
readout may be the decoder bias) has an objective word among its top words
(``largest_latent_named``; no change threshold: latents are a fraction of the whole change).
``--work DIR`` keeps the held-out world and the stores there (a second run reuses them).

    python benchmarks/diffing.py [--seeds 11,12,13] [--built D1,D2,D3] [--work DIR] [--top 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import vlmsteer, write_result  # noqa: E402

from vlmsteer.data import shapes  # noqa: E402
from vlmsteer.organisms import OBJECTIVES, world_scenes  # noqa: E402

REGIONS = ("mean_text", "mean_image")


def grade(objective, readout: dict, top: int, changed: float | None, scenes) -> dict:
    moved = readout["changed"] if changed is None else readout["relative_norm"] >= changed
    named = bool(set(objective.words) & set(readout["words"][:top]))
    row = {"readout": readout["readout"], "relative_norm": round(readout["relative_norm"], 4),
           "noise_floor": round(readout["noise_floor"], 4),
           "top_words": readout["words"][:top],
           "changed": moved, "named": moved and named if objective.words else moved}
    latents = [part for part in readout["parts"] if part["name"].startswith("latent:")]
    if latents and objective.words:  # the dictionary methods: does their largest latent alone name it?
        row["largest_latent_named"] = bool(set(objective.words) & set(latents[0]["words"][:top]))
    if objective.trigger:  # how many of the samples that changed most show the trigger
        shown = [objective.triggered(scenes[shapes.image_id_of(t["image"])]) for t in readout["top_samples"]]
        row["trigger_share"] = round(100.0 * sum(shown) / max(1, len(shown)), 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-llava")
    ap.add_argument("--seeds", default="11,12,13")
    ap.add_argument("--built", help="comma list of organisms folders (instead of building them)")
    ap.add_argument("--world", type=int, default=29)
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--changed", type=float, default=None,
                    help="a constant threshold instead of diff's own verdict (its noise floor)")
    ap.add_argument("--methods", default="adl,concepts,crosscoder,sae-diff")
    ap.add_argument("--work", help="folder for the held-out world and the stores (kept, reused)")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "diffing.json"))
    args = ap.parse_args()
    tmp = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="diffing-"))
    world = tmp / "held"
    if not (world / "scenes_val2014.json").is_file():
        shapes.write_dataset(world, max(20, args.questions // 8), seed=args.world)
    scenes = world_scenes(world)
    if args.built:
        built = [Path(p) for p in args.built.split(",")]
    else:
        built = []
        for seed in args.seeds.split(","):
            built.append(tmp / f"organisms-{seed}")
            vlmsteer(["organisms", "build", "--model", args.model, "--out", str(built[-1]), "--seed", seed])

    def store(name: str, region: str, extra: list[str]) -> Path:
        out = tmp / "stores" / f"{name}-{region}"
        if not out.exists():
            vlmsteer(["extract", "--model", args.model, *extra, "--data", str(world), "--format", "vqav2",
                 "--limit", str(args.questions), "--selector", region, "--layer", str(args.layer), "--out", str(out)])
        return out

    base_rate = 100.0 * sum(o.triggered(sc) for o in OBJECTIVES.values() if o.trigger
                            for sc in scenes.values()) / len(scenes)
    print(f"images showing a trigger: {base_rate:.1f} %")
    rows = []
    for folder in built:
        seed = json.loads((folder / "organisms.json").read_text())["seed"]
        for region in REGIONS:
            base = store("base", region, [])
            for name, objective in OBJECTIVES.items():
                if not (folder / name / "final").is_dir():
                    continue
                tuned = store(f"{seed}-{name}", region, ["--adapter", str(folder / name / "final")])
                for method in args.methods.split(","):
                    out = tmp / "diff" / f"{seed}-{name}-{region}-{method}"
                    vlmsteer(["diff", "--original", str(base), "--finetuned", str(tuned), "--method", method,
                              "--layer", str(args.layer), "--out", str(out), "--overwrite"])
                    readout = json.loads((out / "diff.json").read_text())
                    rows.append({"seed": seed, "method": method, "region": region, "organism": name,
                                 **grade(objective, readout, args.top, args.changed, scenes)})
                    print(json.dumps(rows[-1]))
    table = {}
    for r in rows:
        key = f"{r['method']}/{r['region']}"
        cell = table.setdefault(key, {}).setdefault(r["organism"], {"named": 0, "seeds": 0})
        cell["named"] += int(r["named"])
        cell["seeds"] += 1
    print(json.dumps(table, indent=1))
    write_result(args.json, args, trigger_base_rate=base_rate, rows=rows, table=table)


if __name__ == "__main__":
    main()
