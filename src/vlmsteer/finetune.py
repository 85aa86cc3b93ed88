"""LoRA fine-tuning (peft) of the language model only; the vision tower stays frozen.

Teacher-forced on (image, prompt, reference caption or answer) samples, with the loss on
response tokens only. Saves an adapter every ``save_every`` steps (``checkpoint-<step>``)
and at the end (``final``), a ``loss.jsonl`` log, and optionally a merged model folder.
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from vlmsteer.data.sample import Sample
from vlmsteer.extras import require
from vlmsteer.errors import VlmsteerError, parse_choice
from vlmsteer.extract import Target, append_responses, response_ids, target_text
from vlmsteer.model import VLM
from vlmsteer.outputs import atomic_write_json, make_folder
from vlmsteer.progress import progress_bar


@dataclass
class FinetuneConfig:
    """LoRA settings; counts must be positive and the learning rate a positive number."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    rank: int = 8
    lora_alpha: int = 16
    dropout: float = 0.0
    save_every: int = 100
    seed: int = 0
    target: str = "auto"  # auto | answer | caption
    modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self):
        for name in ("steps", "batch_size", "rank", "save_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise VlmsteerError(f"{name} must be a positive integer, got {value!r}", name)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise VlmsteerError(f"the learning rate must be a positive number, got {self.lr}", "lr")
        if not 0 <= self.dropout < 1:
            raise VlmsteerError(f"dropout must be in [0, 1), got {self.dropout}", "dropout")


def lora_target_modules(vlm: VLM, names: Sequence[str]) -> list[str]:
    """Full names of the Linear modules called ``names`` inside the decoder layers only."""
    layer_ids = {id(layer) for layer in vlm.layers}
    prefixes = [n for n, m in vlm.model.named_modules() if id(m) in layer_ids]
    out = [n for n, m in vlm.model.named_modules()
           if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in names
           and any(n.startswith(p + ".") for p in prefixes)]
    if not out:
        raise VlmsteerError(f"no Linear modules named {list(names)} in the decoder layers of {vlm.model_id}")
    return out


def _expand(samples: Sequence[Sample], target: Target) -> list[tuple[Sample, str]]:
    """(sample, text) pairs: every caption of a caption sample, the answer of a VQA sample."""
    items = []
    for s in samples:
        if target in (Target.CAPTION, Target.AUTO) and s.captions and not (target is Target.AUTO and s.answer):
            items.extend((s, c) for c in s.captions)
        else:
            items.append((s, target_text(s, target)))
    return items


def unknown_words(tokenizer, texts: Sequence[str]) -> tuple[dict[str, int], int]:
    """The words of ``texts`` that ``tokenizer`` maps to its unknown token, each with how many
    texts hold it, and how many texts hold any (none for tokenizers without an unknown token:
    byte-level BPE knows every string)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not texts:
        return {}, 0
    found: dict[str, int] = {}
    holding = 0
    encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    for text, ids, offsets in zip(texts, encoded["input_ids"], encoded["offset_mapping"]):
        words = {text[a:b].strip() or text[a:b] for t, (a, b) in zip(ids, offsets) if t == unk}
        holding += bool(words)
        for word in words:
            found[word] = found.get(word, 0) + 1
    return found, holding


def check_known_words(tokenizer, texts: Sequence[str], allow: bool = False) -> None:
    """Training toward the unknown token teaches the model to say nothing: refuse target text
    with words the tokenizer does not know, naming them, unless ``allow``."""
    unknown, holding = unknown_words(tokenizer, texts)
    if unknown and not allow:
        shown = sorted(unknown, key=lambda w: (-unknown[w], w))
        more = f" and {len(shown) - 12} more" if len(shown) > 12 else ""
        raise VlmsteerError(f"{holding} of {len(texts)} target texts hold words the tokenizer does not know and "
                            f"would train toward {tokenizer.unk_token!r}: {', '.join(map(repr, shown[:12]))}{more}; "
                            "rephrase them, or allow unknown words", "allow_unknown_words")


def finetune(vlm: VLM, samples: Sequence[Sample], out: str | Path, cfg: FinetuneConfig | None = None,
             merge: bool = False, progress: bool = False, allow_unknown_words: bool = False) -> dict:
    """LoRA fine-tuning on the samples' target texts (refused where the tokenizer does not know
    their words, unless ``allow_unknown_words``)."""
    peft = require("peft", "LoRA fine-tuning")
    LoraConfig, get_peft_model = peft.LoraConfig, peft.get_peft_model

    cfg = cfg or FinetuneConfig()
    items = _expand(samples, parse_choice(Target, cfg.target, "target"))
    if not items:
        raise VlmsteerError("no training samples")
    check_known_words(vlm.tokenizer, sorted({t for _, t in items}), allow_unknown_words)
    out = make_folder(out)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    targets = lora_target_modules(vlm, cfg.modules)
    with warnings.catch_warnings():  # peft reads a transformers attribute deprecated in 5.x
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(vlm.model, LoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha,
                                                          lora_dropout=cfg.dropout, target_modules=targets))
    vlm.model = peft_model
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr)
    eos = vlm.tokenizer.eos_token_id
    log = []
    t0 = time.perf_counter()
    with progress_bar("fine-tuning", cfg.steps, enabled=progress) as advance, open(out / "loss.jsonl", "w") as logf:
        for step in range(1, cfg.steps + 1):
            chunk = [items[rng.randrange(len(items))] for _ in range(cfg.batch_size)]
            batch = vlm.prepare([s.image for s, _ in chunk], [s.prompt for s, _ in chunk])
            resp = [r + ([eos] if eos is not None else []) for r in response_ids(vlm, batch.texts, [t for _, t in chunk])]
            full = append_responses(vlm, batch, resp)
            logits = peft_model(**vlm.model_inputs(full)).logits
            labels = torch.full(full.input_ids.shape, -100, dtype=torch.long, device=logits.device)
            for i, (a, b) in enumerate(full.answer_spans):
                labels[i, a:b] = full.input_ids[i, a:b]
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                     labels[:, 1:].reshape(-1), ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rec = {"step": step, "loss": round(loss.item(), 5), "seconds": round(time.perf_counter() - t0, 2)}
            log.append(rec)
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            if step % cfg.save_every == 0 or step == cfg.steps:
                peft_model.save_pretrained(out / (f"checkpoint-{step}" if step < cfg.steps else "final"))
            advance(1)
    peft_model.eval()
    if cfg.steps % cfg.save_every == 0:
        peft_model.save_pretrained(out / f"checkpoint-{cfg.steps}")
    summary = {"config": asdict(cfg), "lora_modules": len(targets), "samples": len(items),
               "trainable_parameters": sum(p.numel() for p in trainable), "seconds": round(time.perf_counter() - t0, 1),
               "first_loss": log[0]["loss"], "last_loss": log[-1]["loss"]}
    if merge:
        merged = peft_model.merge_and_unload()
        merged.save_pretrained(out / "merged")
        vlm.processor.save_pretrained(out / "merged")
        vlm.model = merged
        summary["merged"] = str(out / "merged")
    atomic_write_json(out / "finetune.json", summary, durable=False, indent=2)
    return summary
