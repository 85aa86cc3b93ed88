"""``vlmsteer finetune``: LoRA fine-tuning of the language model on a keyword subset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vlmsteer.cli.common import (
    _ALLOW_OUTSIDE,
    _BATCH,
    _DEVICE,
    _DEVICE_MAP,
    _DTYPE,
    _LIMIT,
    _MAX_PIXELS,
    _OVERWRITE,
    _PROMPT,
    _SEED,
    _SPLIT,
    _load_samples,
    app,
    command_identity,
    command_run_json,
    out_console,
    registry_option,
)
from vlmsteer.data.formats import DATA_FORMATS
from vlmsteer.errors import VlmsteerError
from vlmsteer.runs.models import load_model
from vlmsteer.runs.protocol import claim, publish


@app.command()
def finetune(model: str = typer.Option(..., help="Hub id, model folder, or shapes-llava."),
             data: Path = typer.Option(..., help="Dataset folder or file."),
             out: Path = typer.Option(..., help="Output folder (adapters, loss.jsonl, merged/)."),
             fmt: str = registry_option("coco", "--format", registry=DATA_FORMATS, refuse_others=True,
                                        where=lambda e: e.value.reference != "none"),
             keywords: Optional[str] = typer.Option(None, help="Keep only texts with these keywords: colors, "
                                                               "places, sentiments, gender."),
             steps: int = typer.Option(300, min=1, help="Optimizer steps."), batch_size: int = _BATCH(16),
             lr: float = typer.Option(1e-3, help="Learning rate (a positive number)."),
             rank: int = typer.Option(8, min=1, help="LoRA rank."),
             save_every: int = typer.Option(100, min=1, help="Save an adapter checkpoint every this many steps."),
             merge: bool = typer.Option(False, "--merge", help="Also write a merged model folder."),
             allow_unknown_words: bool = typer.Option(False, "--allow-unknown-words",
                                                      help="Train on target text with words the tokenizer maps to "
                                                           "its unknown token (refused by default)."),
             target: str = typer.Option("auto", help="Train on answers or captions (auto: what samples have)."),
             split: str = _SPLIT, limit: Optional[int] = _LIMIT,
             prompt: Optional[str] = _PROMPT, seed: int = _SEED(),
             dtype: str = _DTYPE, device: str = _DEVICE, device_map: Optional[str] = _DEVICE_MAP,
             allow_outside_images: bool = _ALLOW_OUTSIDE, max_image_pixels: int = _MAX_PIXELS,
             overwrite: bool = _OVERWRITE):
    """LoRA fine-tuning of the language model (vision tower frozen), on a dataset or a keyword subset."""
    from vlmsteer.data.identity import dataset_identity
    from vlmsteer.data.keywords import filter_samples, keyword_set
    from vlmsteer.finetune import FinetuneConfig
    from vlmsteer.finetune import finetune as run_finetune

    cfg = FinetuneConfig(steps=steps, batch_size=batch_size, lr=lr, rank=rank, save_every=save_every, seed=seed,
                         target=target)
    with publish(out, overwrite) as pub:
        samples = _load_samples(fmt, data, split=split, limit=limit, seed=seed, prompt=prompt,
                                allow_outside_images=allow_outside_images, max_image_pixels=max_image_pixels)
        if keywords:
            samples = filter_samples(samples, keyword_set(keywords), DATA_FORMATS.get(fmt).reference)
            if not samples:
                raise VlmsteerError(f"no sample of {data} has a {keywords} keyword")
        vlm = load_model(model, None, dtype, device, device_map, max_image_pixels=max_image_pixels)
        claim(pub, command_identity(model=vlm.identity, data=dataset_identity(samples)))
        summary = run_finetune(vlm, samples, pub.stage, cfg, merge=merge, progress=True,
                               allow_unknown_words=allow_unknown_words)
        command_run_json(pub, model_id=vlm.model_id, revision=vlm.revision)
    out_console.print(f"{summary['samples']} training texts, loss {summary['first_loss']:.3f} -> "
                      f"{summary['last_loss']:.3f} in {summary['seconds']:.0f} s -> {out}")
