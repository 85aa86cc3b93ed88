#!/usr/bin/env bash
# The fine-tuning shift experiment of the README (issue 7): LoRA-fine-tune shapes-llava on the
# colour-caption subset, extract caption features from the original model and from each
# checkpoint on the same held-out images, and analyse the shift. Under 2 minutes on 2 CPU cores.
#
#     bash scripts/shift_experiment.sh [OUT]        (default OUT: runs/shift-colors)
set -euo pipefail
OUT=${1:-runs/shift-colors}
V=${VLMSTEER:-vlmsteer}
$V data shapes --out "$OUT/train" --n 600 --seed 21
$V data shapes --out "$OUT/probe" --n 300 --seed 22
$V finetune --model shapes-llava --data "$OUT/train" --format coco --keywords colors --target caption \
  --steps 300 --save-every 100 --out "$OUT/colors"
extract() {  # extract NAME [--adapter DIR]
  local name=$1; shift
  $V extract --model shapes-llava "$@" --data "$OUT/probe" --format coco --mode generate \
    --selector mean_response --layer 1,2,3 --batch-size 64 --out "$OUT/stores/$name"
}
extract original
for c in checkpoint-100 checkpoint-200 final; do extract "$c" --adapter "$OUT/colors/$c"; done
$V shift --original "$OUT/stores/original" --finetuned "$OUT/stores/final" --layer 3 -k 10 --keywords colors \
  --checkpoint 100="$OUT/stores/checkpoint-100" --checkpoint 200="$OUT/stores/checkpoint-200" \
  --checkpoint 300="$OUT/stores/final" --ks 5,10,20 --layers 1,2,3 --out "$OUT/shift"
