"""Evaluate a shapes-llava model on a held-out shapes world; optionally write its model card.

    python scripts/evaluate_demo_model.py --model shapes-llava [--seed 4242 --n-scenes 400]
    python scripts/evaluate_demo_model.py --model runs/demo-model --card "vlmsteer demo train --out runs/demo-model"
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from transformers.utils import logging

from vlmsteer.data import load_coco_captions, load_vqav2, shapes
from vlmsteer.evaluate.shapes_captions import caption_report, load_scenes
from vlmsteer.runs.vqa import run_vqa
from vlmsteer.model import VLM
from vlmsteer.runs.generation import generate_responses


def evaluate(model: str, seed: int, n_scenes: int, batch_size: int = 64) -> dict:
    logging.disable_progress_bar()
    vlm = VLM.load(model)
    with tempfile.TemporaryDirectory() as d:
        shapes.write_dataset(d, n=n_scenes, seed=seed)
        questions = load_vqav2(d)
        _, report = run_vqa(vlm, questions, batch_size=batch_size, max_new_tokens=3)
        caps = load_coco_captions(d, prompt=shapes.CAPTION_PROMPT)
        scenes = load_scenes(d)
        texts = [r.text for r in generate_responses(vlm, caps, batch_size=batch_size, max_new_tokens=32)]
        captions = caption_report(texts, [scenes[c.meta["image_id"]] for c in caps], [c.captions for c in caps])
    return {"model": model, "seed": seed, "n_scenes": n_scenes, "vocab_size": vlm.vocab_size,
            "vqa": report.to_dict(), "captions": captions}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-llava")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--n-scenes", type=int, default=400)
    ap.add_argument("--card", action="append", help="training command of each phase, in order (writes the card)")
    args = ap.parse_args()
    result = evaluate(args.model, args.seed, args.n_scenes)
    result["vqa"].pop("answer_counts", None)
    print(json.dumps(result, indent=2))
    if args.card:
        from vlmsteer.demo.card import write_model_card

        (Path(args.model) / "evaluation.json").write_text(json.dumps(result, indent=2))
        print(write_model_card(args.model, result, args.card))


if __name__ == "__main__":
    main()
