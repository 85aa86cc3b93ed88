"""The shipped model's card (README.md in its folder), written from its training record and
its held-out evaluation."""

from __future__ import annotations

import json
from pathlib import Path


def write_model_card(folder: str | Path, evaluation: dict, command: str) -> Path:
    folder = Path(folder)
    train = json.loads((folder / "train.json").read_text())
    cfg = train["config"]
    arch = cfg["arch"]
    vqa = evaluation["vqa"]
    caps = evaluation["captions"]
    rows = "\n".join(f"| {t} | {vqa['questions_per_type'][t]} | {vqa['accuracy'][t]:.2f} |"
                     for t in vqa["questions_per_type"])
    text = f"""# shapes-llava

A small but real LLaVA-architecture vision-language model, trained from scratch by
vlmsteer on its procedurally generated *shapes world* (coloured shapes on backgrounds that
stand for places, in a cheerful or gloomy mood). It loads with
`LlavaForConditionalGeneration.from_pretrained` like LLaVA-1.5, and `vlmsteer` resolves the
name `shapes-llava` to this folder.

## Architecture
- Vision: CLIP vision tower, {arch['vision_layers']} layers, hidden {arch['vision_hidden']}, {arch['vision_heads']} heads,
  {arch['image_size']}x{arch['image_size']} images, {arch['patch_size']} px patches (one patch per scene cell: 4 image tokens).
- Connector: LLaVA's two-layer MLP (GELU).
- Language model: Llama, {arch['text_layers']} layers, hidden {arch['text_hidden']}, {arch['text_heads']} heads,
  intermediate {arch['text_intermediate']}, tied embeddings, word-level lower-casing tokenizer
  ({evaluation.get('vocab_size', '?')} tokens), LLaVA-1.5 chat format (`USER: <image>\\n... ASSISTANT:`).
- {train['parameters']:,} parameters, stored in float32 safetensors.

## Training
- Command: `{command}`
- Data: shapes world seed {cfg['world_seed']} ({cfg['n_scenes']:,} scenes), {cfg['samples']:,} samples drawn with seed
  {cfg['seed']}; task mix {cfg['mix']}; loss on answer tokens only.
- Optimiser: AdamW lr {cfg['lr']}, betas {tuple(cfg['betas'])}, weight decay {cfg['weight_decay']}, batch {cfg['batch_size']},
  {cfg['warmup_steps']} warm-up steps then cosine, gradient clip {cfg['grad_clip']}; initialisation scale
  {arch['initializer_range']}.
- Time: {train['train_seconds'] / 60:.1f} minutes on {train['hardware']['torch_threads']} CPU threads
  ({train['hardware']['machine']}, torch {train['hardware']['torch']}), no GPU.

## Held-out evaluation
World seed {evaluation['seed']} (never seen in training), {evaluation['n_scenes']} scenes; greedy decoding.

| answer type | questions | VQA accuracy |
|---|---|---|
{rows}

Overall (micro) {vqa['accuracy']['micro']:.2f}. Captions ("describe the image ."): every shape mentioned in
{caps['mentions_every_shape']:.1f} % of {caps['n']} images; exact match with a reference caption
{caps['exact_reference_match']:.1f} %; style shares {', '.join(f'{k} {v:.1f} %' for k, v in caps['style_share'].items())}.

Measured with `python scripts/evaluate_demo_model.py --model <folder>`.
"""
    path = folder / "README.md"
    path.write_text(text)
    return path
