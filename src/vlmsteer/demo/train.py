"""Train the demo model (``shapes-llava``) from scratch on the shapes world, on a CPU.

What makes a model this small learn to read images in minutes (see
``shared/notes/demo-model-probe.md``): a large initialisation scale (0.1), one image patch
per scene cell, a loss on answer tokens only, and auxiliary "list the shapes" and caption
items mixed into the VQA items. Training is deterministic for a seed on one thread.
"""

from __future__ import annotations

import json
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from vlmsteer.data import shapes
from vlmsteer.demo.build import DemoArchitecture, build_model, build_processor


@dataclass
class TrainConfig:
    seed: int = 0
    samples: int = 480_000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 100
    grad_clip: float = 1.0
    n_scenes: int = 60_000
    world_seed: int = 1000  # scenes seen in training
    eval_seed: int = 2000  # held-out scenes for the progress metric
    eval_every: int = 1000
    threads: int = 1
    init_from: str | None = None  # continue from a saved model's weights (a second training phase)
    count_questions: str = "any"  # see shapes.questions(count_kinds=...)
    # share of each task in the training mix
    mix: dict[str, float] = field(default_factory=lambda: {
        "vqa": 0.60, "caption": 0.12, "style_caption": 0.10, "list": 0.13, "unsafe": 0.05,
    })
    arch: DemoArchitecture = field(default_factory=DemoArchitecture)


def _to_pixels(arrays: np.ndarray, processor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalized (B, 3, H, W), as the CLIP image processor does."""
    ip = processor.image_processor
    mean = np.asarray(ip.image_mean, dtype=np.float32)
    std = np.asarray(ip.image_std, dtype=np.float32)
    x = arrays.astype(np.float32) * np.float32(ip.rescale_factor)
    x = (x - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


class _Items:
    """Draws (scene, prompt, answer) training items and turns them into token ids."""

    def __init__(self, cfg: TrainConfig, processor):
        self.cfg = cfg
        self.processor = processor
        self.tok = processor.tokenizer
        self.rng = random.Random(f"train-items-{cfg.seed}")
        self.scenes: dict[int, shapes.Scene] = {}
        self.pixels = np.zeros((cfg.n_scenes, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3), np.uint8)
        self.rendered = np.zeros(cfg.n_scenes, bool)
        self.prompt_cache: dict[str, list[int]] = {}
        self.answer_cache: dict[str, list[int]] = {}
        self.tasks = list(cfg.mix)
        self.weights = [cfg.mix[t] for t in self.tasks]

    def scene(self, i: int) -> shapes.Scene:
        if i not in self.scenes:
            self.scenes[i] = shapes.make_scene(self.cfg.world_seed, i)
        if not self.rendered[i]:
            self.pixels[i] = shapes.render_array(self.scenes[i])
            self.rendered[i] = True
        return self.scenes[i]

    def draw(self) -> tuple[int, str, str]:
        i = self.rng.randrange(self.cfg.n_scenes)
        scene = self.scene(i)
        task = self.rng.choices(self.tasks, self.weights)[0]
        if task == "vqa":
            q = self.rng.choice(shapes.questions(scene, self.rng, self.cfg.count_questions))
            return i, q.text, q.answer
        if task == "caption":
            return i, shapes.CAPTION_PROMPT, shapes.default_caption(scene)
        if task == "style_caption":
            style = self.rng.choice(shapes.STYLE_NAMES)
            return i, shapes.STYLE_PROMPTS[style], shapes.caption(scene, style)
        if task == "list":
            return i, shapes.LIST_PROMPT, shapes.list_answer(scene)
        prompt, response = self.rng.choice(shapes.unsafe_prompts(scene))[:2]
        return i, prompt, response

    def prompt_ids(self, text: str) -> list[int]:
        if text not in self.prompt_cache:
            self.prompt_cache[text] = prompt_token_ids(self.processor, text)
        return self.prompt_cache[text]

    def answer_ids(self, text: str) -> list[int]:
        if text not in self.answer_cache:
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
            self.answer_cache[text] = ids + [self.tok.eos_token_id]
        return self.answer_cache[text]

    def batch(self, n: int) -> dict[str, torch.Tensor]:
        rows, labels, idx = [], [], []
        for _ in range(n):
            i, prompt, answer = self.draw()
            p, a = self.prompt_ids(prompt), self.answer_ids(answer)
            rows.append(p + a)
            labels.append([-100] * len(p) + a)
            idx.append(i)
        width = max(map(len, rows))
        pad = self.tok.pad_token_id
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return {"input_ids": input_ids, "attention_mask": mask, "labels": lab,
                "pixel_values": _to_pixels(self.pixels[idx], self.processor)}


def prompt_token_ids(processor, question: str) -> list[int]:
    """Token ids of the chat prompt for ``question`` about one image (image tokens expanded)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    blank = np.zeros((shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3), np.uint8)
    from PIL import Image

    return list(processor(text=text, images=Image.fromarray(blank))["input_ids"][0])


def quick_vqa_accuracy(model, processor, scenes: list[shapes.Scene], seed: int,
                       prompt_ids) -> dict[str, float]:
    """First-token accuracy of greedy answers on held-out questions (every VQA answer is one token)."""
    rng = random.Random(f"quick-eval-{seed}")
    items = [(s, q) for s in scenes for q in shapes.questions(s, rng)]
    tok = processor.tokenizer
    correct: dict[str, list[bool]] = {}
    model.eval()
    with torch.no_grad():
        for start in range(0, len(items), 256):
            chunk = items[start:start + 256]
            ids = [prompt_ids(q.text) for _, q in chunk]
            width = max(map(len, ids))
            input_ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in ids])
            mask = (input_ids != tok.pad_token_id).long()
            pixels = _to_pixels(np.stack([shapes.render_array(s) for s, _ in chunk]), processor)
            logits = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels).logits[:, -1]
            pred = logits.argmax(-1).tolist()
            for (_, q), p in zip(chunk, pred):
                target = tok.convert_tokens_to_ids(q.answer)
                correct.setdefault(q.answer_type, []).append(p == target)
    model.train()
    acc = {k: float(np.mean(v)) for k, v in sorted(correct.items())}
    acc["overall"] = float(np.mean([x for v in correct.values() for x in v]))
    return acc


def train_demo_model(out: str | Path, cfg: TrainConfig | None = None, log=print) -> dict:
    """Train the demo model and save it (``save_pretrained``) with ``train.json`` in ``out``."""
    cfg = cfg or TrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    processor = build_processor(cfg.arch)
    model = build_model(processor, cfg.arch, seed=cfg.seed)
    if cfg.init_from:
        from transformers import LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(cfg.init_from, dtype=torch.float32)
    model.train()
    items = _Items(cfg, processor)
    _check_prompt_layout(processor, items)

    steps = cfg.samples // cfg.batch_size
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas,
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, steps - cfg.warmup_steps)
        return 0.5 * (1 + np.cos(np.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    eval_scenes = shapes.make_scenes(cfg.eval_seed, 300)
    history = []
    t0 = time.perf_counter()
    running = None
    for step in range(steps):
        batch = items.batch(cfg.batch_size)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == steps:
            acc = quick_vqa_accuracy(model, processor, eval_scenes, cfg.seed, items.prompt_ids)
            elapsed = time.perf_counter() - t0
            rec = {"step": step + 1, "samples": (step + 1) * cfg.batch_size, "seconds": round(elapsed, 1),
                   "loss": round(running, 4), "quick_accuracy": {k: round(v, 4) for k, v in acc.items()}}
            history.append(rec)
            log(json.dumps(rec))
    train_seconds = time.perf_counter() - t0
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    record = {
        "config": _jsonable(asdict(cfg)),
        "train_seconds": round(train_seconds, 1),
        "hardware": {"machine": platform.machine(), "processor": platform.processor() or "unknown",
                     "torch_threads": cfg.threads, "torch": torch.__version__},
        "parameters": sum(p.numel() for p in model.parameters()),
        "history": history,
    }
    (out / "train.json").write_text(json.dumps(record, indent=2))
    return record


def _check_prompt_layout(processor, items: _Items) -> None:
    """The ids we assemble must equal what the chat template gives for a full conversation."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "where is this ?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "beach"}]},
    ]
    text = processor.apply_chat_template(messages)
    from PIL import Image

    blank = Image.fromarray(np.zeros((shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3), np.uint8))
    full = list(processor(text=text, images=blank)["input_ids"][0])
    ours = items.prompt_ids("where is this ?") + items.answer_ids("beach")
    # the template ends the prompt with "ASSISTANT:" and the answer follows it directly
    if full != ours:
        raise AssertionError(f"training layout differs from the chat template: {full} vs {ours}")


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
