#!/usr/bin/env bash
# Issue 15, acceptance 1, over several worlds: fine-grained Yes->No from the command line alone
# (the README recipe), and the same command without the condition (coarse). Per held-out world
# seed s the vector and the condition come from build world s + 1000 (60 scenes, last layer,
# last prompt token); the held-out world has 300 scenes. Prints mean ± sd over the seeds of
# the share of "yes" answers moved to "no" and the accuracy change per answer type.
#
#     bash scripts/cli_yes_no_seeds.sh [OUT] [SEEDS]     (defaults: runs/cli-yes-no "17 19 23")
set -euo pipefail
OUT=${1:-runs/cli-yes-no}
SEEDS=${2:-"17 19 23"}
V=${VLMSTEER:-vlmsteer}
PY=${PYTHON:-python}
for s in $SEEDS; do
  W="$OUT/$s"
  $V data shapes --out "$W/build" --n 60 --seed $((s + 1000))
  $V data shapes --out "$W/held" --n 300 --seed "$s"
  $V extract --model shapes-llava --data "$W/build" --layer -1 --selector last_prompt --out "$W/q"
  $V vectors coarse --store "$W/q" --source answer=yes --target answer=no --out "$W/yes-no.safetensors"
  common=(--model shapes-llava --data "$W/held" --max-new-tokens 3)
  $V eval vqa "${common[@]}" --out "$W/base"
  steer=(--vector "$W/yes-no.safetensors" --region last_prompt --baseline "$W/base" --source yes --target no)
  $V eval vqa "${common[@]}" "${steer[@]}" --condition-store "$W/q" --active answer=yes --out "$W/fine"
  $V eval vqa "${common[@]}" "${steer[@]}" --out "$W/coarse"
done
$PY - "$OUT" $SEEDS <<'PY'
import json, sys
from pathlib import Path
import numpy as np

out, seeds = Path(sys.argv[1]), sys.argv[2:]
ms = lambda xs: (float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0)  # noqa: E731
summary = {"seeds": seeds}
for mode in ("fine", "coarse"):
    runs = [json.loads((out / s / mode / "metrics.json").read_text())["vs_baseline"] for s in seeds]
    summary[mode] = {"yes_moved_percent": ms([100 * r["source_moved_fraction"] for r in runs]),
                     "accuracy_delta": {t: ms([r["accuracy_delta"][t] for r in runs]) for t in runs[0]["accuracy_delta"]}}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
for mode in ("fine", "coarse"):
    m = summary[mode]
    print(f"{mode}: yes -> no {m['yes_moved_percent'][0]:.1f} ± {m['yes_moved_percent'][1]:.1f} %; " +
          ", ".join(f"Δ {t} {v[0]:+.2f} ± {v[1]:.2f}" for t, v in m["accuracy_delta"].items()))
PY
