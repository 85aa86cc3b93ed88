#!/usr/bin/env bash
# The fine-tuning shift experiment over several fine-tuning seeds (issue 15): one world, the
# original model's caption features once, then per seed a LoRA fine-tune on the colour-caption
# subset, features of each checkpoint, and the shift analysis; finally mean ± sd over seeds of
# the recovery cosine and T-Overlap (α = 0 and 1), the colour-word share of shifted concepts,
# the evolution of T-Overlap per checkpoint, and every α of the recovery grid. 68 s with
# one seed on the 2-core reference machine (data and the original model's features included).
#
#     bash scripts/shift_seeds.sh [OUT] [WORLD_SEED] [FT_SEEDS]   (defaults: runs/shift-seeds 21 "0 1 2")
set -euo pipefail
OUT=${1:-runs/shift-seeds}
WORLD=${2:-21}
SEEDS=${3:-"0 1 2"}
V=${VLMSTEER:-vlmsteer}
PY=${PYTHON:-python}
$V data shapes --out "$OUT/train" --n 600 --seed "$WORLD"
$V data shapes --out "$OUT/probe" --n 300 --seed $((WORLD + 1))
extract() {  # extract NAME [--adapter DIR]
  local name=$1; shift
  $V extract --model shapes-llava "$@" --data "$OUT/probe" --format coco --mode generate \
    --selector mean_response --layer 3 --batch-size 64 --out "$OUT/stores/$name"
}
extract original
for s in $SEEDS; do
  $V finetune --model shapes-llava --data "$OUT/train" --format coco --keywords colors --target caption \
    --steps 300 --save-every 100 --seed "$s" --out "$OUT/ft-$s"
  for c in checkpoint-100 checkpoint-200 final; do extract "$s-$c" --adapter "$OUT/ft-$s/$c"; done
  $V shift --original "$OUT/stores/original" --finetuned "$OUT/stores/$s-final" --layer 3 -k 10 --keywords colors \
    --checkpoint 100="$OUT/stores/$s-checkpoint-100" --checkpoint 200="$OUT/stores/$s-checkpoint-200" \
    --checkpoint 300="$OUT/stores/$s-final" --seed "$s" --out "$OUT/shift-$s"
done
$PY - "$OUT" "$WORLD" $SEEDS <<'PY'
import json, sys
from pathlib import Path
import numpy as np

out, world, seeds = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
runs = [json.loads((out / f"shift-{s}" / "shift.json").read_text()) for s in seeds]
ms = lambda xs: (float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0)  # noqa: E731
at = lambda r, a: next(x for x in r["main"]["recovery"] if x["alpha"] == a)  # noqa: E731
summary = {"world_seed": world, "finetune_seeds": seeds,
           "recovery_cosine_alpha0": ms([r["main"]["mean_recovery_alpha0"] for r in runs]),
           "recovery_cosine_alpha1": ms([r["main"]["mean_recovery_alpha1"] for r in runs]),
           "t_overlap_alpha0": ms([at(r, 0.0)["mean_t_overlap"] for r in runs]),
           "t_overlap_alpha1": ms([at(r, 1.0)["mean_t_overlap"] for r in runs]),
           "keyword_share_original": ms([r["main"]["keyword_share_original"] for r in runs]),
           "keyword_share_shifted_alpha1": ms([at(r, 1.0)["keyword_share"] for r in runs]),
           "evolution_t_overlap": {str(e["step"]): ms([next(x for x in r["evolution"] if x["step"] == e["step"])
                                                       ["mean_t_overlap"] for r in runs])
                                   for e in runs[0]["evolution"]},
           "evolution_per_seed": {s: [e["mean_t_overlap"] for e in r["evolution"]] for s, r in zip(seeds, runs)},
           "alpha_grid": {str(x["alpha"]): {"cosine": ms([at(r, x["alpha"])["mean_cosine"] for r in runs]),
                                            "t_overlap": ms([at(r, x["alpha"])["mean_t_overlap"] for r in runs]),
                                            "keyword_share": ms([at(r, x["alpha"])["keyword_share"] for r in runs])}
                          for x in runs[0]["main"]["recovery"]}}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
PY
