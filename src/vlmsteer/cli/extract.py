"""``vlmsteer extract``: residual-stream features of chosen layers and tokens into a store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vlmsteer.cli.common import (
    _ADAPTER,
    _ALLOW_OUTSIDE,
    _BATCH,
    _DEVICE,
    _DEVICE_MAP,
    _DTYPE,
    _IMAGES,
    _MAX_NEW_TOKENS,
    _MAX_PIXELS,
    _PROMPT,
    _SEED,
    _SPLIT,
    _load_samples,
    _parse_layers,
    app,
    command_run_json,
    data_parallel,
    out_console,
    registry_option,
    resumes,
)
from vlmsteer.cli.engine import _ENGINE, _engine
from vlmsteer.data.formats import DATA_FORMATS
from vlmsteer.errors import VlmsteerError
from vlmsteer.positions import SELECTORS
from vlmsteer.runs.models import load_model
from vlmsteer.runs.protocol import rank_and_world


@app.command()
@data_parallel
@resumes("the store continues from its last complete shard")
def extract(model: str = typer.Option(..., help="Hub id, model folder, or shapes-llava."),
            data: Path = typer.Option(..., help="Dataset folder or file."),
            fmt: str = registry_option("vqav2", "--format", registry=DATA_FORMATS),
            out: Path = typer.Option(..., help="Store folder (rerun the same command to resume)."),
            layer: list[str] = typer.Option(..., help="Decoder layer(s); negative counts from the end; "
                                                      "repeat or comma-separate."),
            selector: str = registry_option("last_prompt", registry=SELECTORS),
            word: Optional[str] = typer.Option(None, help="Word of interest (word selector); whole-word match."),
            word_source: str = typer.Option("response", help="Find the word in the response or the prompt."),
            word_position: str = typer.Option("predicts", help="'predicts': the position whose next token is "
                                                               "the word (default); 'of': the word's own last token."),
            mode: str = typer.Option("teacher", help="teacher (reference answer/caption) or generate."),
            target: str = typer.Option("auto", help="Teacher-forced text: auto, answer or caption."),
            split: str = _SPLIT, images: Optional[Path] = _IMAGES,
            limit: Optional[int] = typer.Option(None, min=1, help="Extract a seeded random subset of this many "
                                                                   "samples."),
            seed: int = _SEED(),
            batch_size: int = _BATCH(16), shard_size: int = typer.Option(256, min=1, help="Samples per shard."),
            store_dtype: str = typer.Option("float32", help="float32 or float16 features on disk."),
            max_new_tokens: int = _MAX_NEW_TOKENS(32), prompt: Optional[str] = _PROMPT,
            where: Optional[str] = typer.Option(None, help="Keep samples whose fields match, e.g. "
                                                           "'question_type=what color is the' or 'answer=yes|no'."),
            adapter: Optional[Path] = _ADAPTER, dtype: str = _DTYPE, device: str = _DEVICE,
            device_map: Optional[str] = _DEVICE_MAP, allow_outside_images: bool = _ALLOW_OUTSIDE,
            max_image_pixels: int = _MAX_PIXELS, engine: str = _ENGINE):
    """Store residual-stream features of chosen layers and tokens (batched, resumable)."""
    from vlmsteer.extract import ExtractConfig
    from vlmsteer.extract import extract as run_extract
    from vlmsteer.positions import Selector

    sel = Selector(kind=selector, word=word, source=word_source, position=word_position)
    try:
        cfg = ExtractConfig(layers=_parse_layers(layer), selector=sel, mode=mode, target=target,
                            batch_size=batch_size, shard_size=shard_size, dtype=store_dtype,
                            max_new_tokens=max_new_tokens)
    except ValueError as exc:
        raise VlmsteerError(str(exc)) from None
    from vlmsteer.outputs import check_can_create

    check_can_create(out)  # before any model work
    engine = _engine(engine)
    samples = _load_samples(fmt, data, split=split, images=images, limit=limit, seed=seed, prompt=prompt,
                            allow_outside_images=allow_outside_images, where=where, max_image_pixels=max_image_pixels)
    vlm = load_model(model, adapter, dtype, device, device_map, max_image_pixels=max_image_pixels)
    dataset = {"format": fmt, "path": str(data.resolve()), "split": split, "limit": limit, "seed": seed,
               "prompt": prompt, "where": where}
    rank, world = rank_and_world()
    from vlmsteer.engines import ENGINES, start_engine

    # an engine that reads features itself (vLLM) does; else the transformers forward pass is read
    reader = start_engine(engine, vlm) if ENGINES.get(engine).reads_features else None
    store, resumed = run_extract(vlm, samples, out, cfg, dataset=dataset, progress=rank == 0,
                                 part=(rank, world) if world > 1 else None, reader=reader)
    if resumed:
        out_console.print(f"resumed from {resumed} samples already in {store.path}")
    if rank != 0:  # rank 0 merges the parts, writes run.json and reports
        return
    command_run_json(out, model_id=vlm.model_id, revision=vlm.revision, world_size=world, fingerprint=store.fingerprint)
    found = int(store.manifest["summary"]["found"])  # not store.select(): that reads every record
    out_console.print(f"{len(store)} samples ({found} with the selected token), layers {store.layers} -> {out}")
