"""The shipped model's card (README.md in its folder), written from its training record and
its held-out evaluation."""

from __future__ import annotations

import json
from pathlib import Path


def write_model_card(folder: str | Path, evaluation: dict, commands: list[str]) -> Path:
    """``commands``: the training commands in order; phase records are ``train_phase1.json``
    (if present) and ``train.json`` (the final phase)."""
    folder = Path(folder)
    phases = [json.loads(p.read_text()) for p in (folder / "train_phase1.json", folder / "train.json") if p.exists()]
    train = phases[-1]
    cfg = phases[0]["config"]
    arch = cfg["arch"]
    vqa = evaluation["vqa"]
    caps = evaluation["captions"]
    rows = "\n".join(f"| {t} | {vqa['questions_per_type'][t]} | {vqa['accuracy'][t]:.2f} |"
                     for t in vqa["questions_per_type"])
    phase_lines = "\n".join(
        f"- Phase {i + 1}: `{cmd}` — {ph['config']['samples']:,} samples, lr {ph['config']['lr']}, "
        f"{ph['config']['warmup_steps']} warm-up steps, count questions `{ph['config'].get('count_questions', 'any')}`, "
        f"mix {ph['config']['mix']}; {ph['train_seconds'] / 60:.1f} min on {ph['config']['threads']} CPU thread(s); "
        f"last quick held-out accuracy {ph['history'][-1]['quick_accuracy']}"
        for i, (cmd, ph) in enumerate(zip(commands, phases)))
    total_minutes = sum(ph["train_seconds"] for ph in phases) / 60
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
A two-phase curriculum, each phase one command (deterministic for a seed and thread count):
{phase_lines}

- Data: shapes world seed {cfg['world_seed']} ({cfg['n_scenes']:,} scenes); loss on answer tokens only.
  Phase 1 asks "how many <shape>s" mostly about shapes that are present; phase 2 about any
  shape (counts of 0 become common), at a lower learning rate, starting from phase 1.
- Optimiser: AdamW, betas {tuple(cfg['betas'])}, weight decay {cfg['weight_decay']}, batch {cfg['batch_size']},
  warm-up then cosine, gradient clip {cfg['grad_clip']}; initialisation scale {arch['initializer_range']}.
- Total time: {total_minutes:.1f} minutes on a 2-core CPU ({train['hardware']['machine']},
  torch {train['hardware']['torch']}), no GPU.

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
