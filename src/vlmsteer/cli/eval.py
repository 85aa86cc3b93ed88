"""``vlmsteer eval vqa|captions|safety``: answer, score and report, optionally steered."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple, Optional

import typer
from rich.table import Table

from vlmsteer.cli.common import (
    _ACTIVE,
    _ADAPTER,
    _ALLOW_OTHER_MODEL,
    _ALLOW_OUTSIDE,
    _ALPHA,
    _ANSWERS_FORMAT,
    _BASELINE,
    _BATCH,
    _CONCEPT,
    _CONDITION_LAYER,
    _CONDITION_STORE,
    _DEVICE,
    _DEVICE_MAP,
    _DICTIONARY,
    _DTYPE,
    _EDIT,
    _EDIT_DICTIONARY,
    _IMAGES,
    _LATENT,
    _LAYERS,
    _LIMIT,
    _MAX_NEW_TOKENS,
    _MAX_PIXELS,
    _NAME,
    _OVERWRITE,
    _REGION,
    _SEED,
    _SPLIT,
    _VALUE,
    _VISUAL,
    _VISUAL_CONTROL,
    _VECTOR,
    _condition_spec,
    _edit_spec,
    _load_samples,
    _steering,
    command_identity,
    command_run_json,
    data_parallel,
    eval_app,
    out_console,
    registry_option,
)
from vlmsteer.cli.engine import _ENGINE, _engine
from vlmsteer.data.formats import DATA_FORMATS
from vlmsteer.errors import VlmsteerError
from vlmsteer.evaluate.chair import CHAIR_OBJECTS
from vlmsteer.positions import Region
from vlmsteer.runs.models import load_model
from vlmsteer.runs.protocol import claim, publish, rank_and_world


@eval_app.command("vqa")
@data_parallel
def eval_vqa(model: str = typer.Option(..., help="Hub id, model folder, or shapes-llava."),
             data: Path = typer.Option(..., help="VQAv2 folder (official layout), or a dataset of --format."),
             fmt: str = _ANSWERS_FORMAT(),
             split: str = _SPLIT, images: Optional[Path] = _IMAGES,
             out: Path = typer.Option(Path("runs/eval-vqa"), help="Output folder."),
             limit: Optional[int] = _LIMIT,
             seed: int = _SEED(), batch_size: int = _BATCH(32),
             max_new_tokens: int = _MAX_NEW_TOKENS(8), adapter: Optional[Path] = _ADAPTER,
             vector: Optional[Path] = _VECTOR,
             name: Optional[str] = _NAME,
             alpha: float = _ALPHA,
             layer: Optional[list[str]] = _LAYERS,
             dictionary: Optional[Path] = _DICTIONARY, concept: Optional[list[str]] = _CONCEPT,
             condition_store: Optional[Path] = _CONDITION_STORE, active: Optional[str] = _ACTIVE,
             condition_layer: Optional[int] = _CONDITION_LAYER,
             edit_dictionary: Optional[Path] = _EDIT_DICTIONARY, edit: str = _EDIT,
             latent: Optional[list[str]] = _LATENT, value: float = _VALUE, visual_alpha: Optional[float] = _VISUAL,
             visual_control: bool = _VISUAL_CONTROL,
             region: str = _REGION("last_prompt", "the position that predicts the answer"),
             baseline: Optional[Path] = _BASELINE,
             source: Optional[str] = typer.Option(None, help="Answer the vector moves away from (for counts)."),
             target: Optional[str] = typer.Option(None, help="Answer the vector moves toward (for counts)."),
             dtype: str = _DTYPE, device: str = _DEVICE, device_map: Optional[str] = _DEVICE_MAP,
             allow_outside_images: bool = _ALLOW_OUTSIDE, max_image_pixels: int = _MAX_PIXELS,
             allow_other_model: bool = _ALLOW_OTHER_MODEL, overwrite: bool = _OVERWRITE,
             engine: str = _ENGINE):
    """Answer VQA questions greedily (optionally steered) and report official VQAv2 accuracy."""
    from vlmsteer.runs.vqa import evaluate_vqa_run

    region_ = Region.parse(region)
    condition = _condition_spec(dictionary, concept, condition_store, active, layer=condition_layer)
    metrics = _evaluate(
        "vqa", out, overwrite,
        lambda: _load_samples(fmt, data, split=split, images=images, limit=limit, seed=seed,
                              allow_outside_images=allow_outside_images, max_image_pixels=max_image_pixels),
        lambda vlm, samples, stage, steering: evaluate_vqa_run(
            vlm, samples, stage, steering=steering, baseline=baseline, source=source, target=target,
            batch_size=batch_size, max_new_tokens=max_new_tokens, progress=True, part=_part(), engine=engine),
        _Model(model, adapter, dtype, device, device_map, max_image_pixels, engine),
        _Steer(vector, name, alpha, layer, region_, condition, allow_other_model,
               _edit_spec(edit_dictionary, edit, latent, value), visual_alpha, visual_control), baseline)
    if metrics is None:  # a data-parallel rank other than 0: rank 0 scores and reports
        return
    _print_tables("vqa", metrics)
    out_console.print(f"wrote {out}/report.html, {out}/predictions.jsonl, {out}/metrics.json")


@eval_app.command("captions")
@data_parallel
def eval_captions(model: str = typer.Option(..., help="Hub id, model folder, or shapes-llava."),
                  data: Path = typer.Option(..., help="COCO captions folder or file (official or Karpathy)."),
                  split: str = _SPLIT, images: Optional[Path] = _IMAGES,
                  prompt: Optional[str] = typer.Option(None, help="Caption prompt (default: the loader's)."),
                  out: Path = typer.Option(Path("runs/eval-captions"), help="Output folder."),
                  limit: Optional[int] = _LIMIT,
                  seed: int = _SEED(), batch_size: int = _BATCH(32),
                  max_new_tokens: int = _MAX_NEW_TOKENS(32), adapter: Optional[Path] = _ADAPTER,
                  vector: Optional[Path] = _VECTOR,
                  name: Optional[str] = _NAME,
                  alpha: float = _ALPHA,
                  layer: Optional[list[str]] = _LAYERS,
                  dictionary: Optional[Path] = _DICTIONARY, concept: Optional[list[str]] = _CONCEPT,
                  condition_store: Optional[Path] = _CONDITION_STORE, active: Optional[str] = _ACTIVE,
                  condition_layer: Optional[int] = _CONDITION_LAYER,
                  edit_dictionary: Optional[Path] = _EDIT_DICTIONARY, edit: str = _EDIT,
                  latent: Optional[list[str]] = _LATENT, value: float = _VALUE, visual_alpha: Optional[float] = _VISUAL,
                  visual_control: bool = _VISUAL_CONTROL,
                  region: str = _REGION("generated", "every caption token"),
                  baseline: Optional[Path] = _BASELINE,
                  tokenizer: str = typer.Option("auto", help="CIDEr tokenizer: auto (Java PTB if java is "
                                                             "installed), java or python."),
                  word: Optional[list[str]] = typer.Option(None, help="Also report the share of captions naming "
                                                                      "this word (whole word; repeat)."),
                  chair: Optional[Path] = typer.Option(None, help="Also score CHAIR against this folder's COCO "
                                                                  "annotations (instances + captions 2014; a shapes "
                                                                  "world's folder holds them)."),
                  objects: Optional[str] = registry_option(None, "--objects", registry=CHAIR_OBJECTS,
                                                           intro="CHAIR's objects, with --chair (default coco): "),
                  dtype: str = _DTYPE, device: str = _DEVICE, device_map: Optional[str] = _DEVICE_MAP,
                  allow_outside_images: bool = _ALLOW_OUTSIDE, max_image_pixels: int = _MAX_PIXELS,
                  allow_other_model: bool = _ALLOW_OTHER_MODEL, overwrite: bool = _OVERWRITE,
                  engine: str = _ENGINE):
    """Caption images greedily (optionally steered): CIDEr, style-keyword counts, changes vs a baseline."""
    from vlmsteer.evaluate.cider import resolve_tokenizer
    from vlmsteer.runs.captions import evaluate_caption_run

    region_ = Region.parse(region)
    condition = _condition_spec(dictionary, concept, condition_store, active, layer=condition_layer)
    resolve_tokenizer(tokenizer)  # fail before loading anything
    chair_run = _chair_annotations(chair, objects)
    metrics = _evaluate(
        "captions", out, overwrite,
        lambda: _load_samples("coco", data, split=split, images=images, limit=limit, seed=seed, prompt=prompt,
                              allow_outside_images=allow_outside_images, max_image_pixels=max_image_pixels),
        lambda vlm, samples, stage, steering: evaluate_caption_run(
            vlm, samples, stage, steering=steering, baseline=baseline, tokenizer=tokenizer, batch_size=batch_size,
            max_new_tokens=max_new_tokens, progress=True, part=_part(), engine=engine, words=tuple(word or ()),
            chair=chair_run),
        _Model(model, adapter, dtype, device, device_map, max_image_pixels, engine),
        _Steer(vector, name, alpha, layer, region_, condition, allow_other_model,
               _edit_spec(edit_dictionary, edit, latent, value), visual_alpha, visual_control), baseline,
        chair=chair_run.files if chair_run is not None else None)
    if metrics is None:  # a data-parallel rank other than 0: rank 0 scores and reports
        return
    _print_tables("captions", metrics)
    out_console.print(f"wrote {out}/report.html, {out}/predictions.jsonl, {out}/metrics.json")


@eval_app.command("safety")
@data_parallel
def eval_safety(model: str = typer.Option(..., help="Hub id, model folder, or shapes-llava."),
                data: Path = typer.Option(..., help="Benchmark folder (or JSONL file)."),
                fmt: str = registry_option("mm-safetybench", "--format", registry=DATA_FORMATS, refuse_others=True,
                                           where=lambda e: e.value.safety),
                image_type: str = typer.Option("SD_TYPO", help="MM-SafetyBench image type: SD, SD_TYPO or TYPO."),
                out: Path = typer.Option(Path("runs/eval-safety"), help="Output folder."),
                limit: Optional[int] = _LIMIT,
                seed: int = _SEED(), batch_size: int = _BATCH(16),
                max_new_tokens: int = _MAX_NEW_TOKENS(64), adapter: Optional[Path] = _ADAPTER,
                vector: Optional[Path] = _VECTOR,
                name: Optional[str] = _NAME,
                alpha: float = _ALPHA,
                layer: Optional[list[str]] = _LAYERS,
                dictionary: Optional[Path] = _DICTIONARY, concept: Optional[list[str]] = _CONCEPT,
                condition_store: Optional[Path] = _CONDITION_STORE, active: Optional[str] = _ACTIVE,
                condition_layer: Optional[int] = _CONDITION_LAYER,
             edit_dictionary: Optional[Path] = _EDIT_DICTIONARY, edit: str = _EDIT,
             latent: Optional[list[str]] = _LATENT, value: float = _VALUE, visual_alpha: Optional[float] = _VISUAL,
             visual_control: bool = _VISUAL_CONTROL,
                region: str = _REGION("last_prompt", "the position that predicts the answer"),
                baseline: Optional[Path] = _BASELINE,
                dtype: str = _DTYPE, device: str = _DEVICE, device_map: Optional[str] = _DEVICE_MAP,
                allow_outside_images: bool = _ALLOW_OUTSIDE, max_image_pixels: int = _MAX_PIXELS,
                allow_other_model: bool = _ALLOW_OTHER_MODEL, overwrite: bool = _OVERWRITE,
                engine: str = _ENGINE):
    """Answer harmful prompts (optionally steered): refusals and attack success rate per category."""
    from vlmsteer.runs.safety import evaluate_safety_run

    region_ = Region.parse(region)
    condition = _condition_spec(dictionary, concept, condition_store, active, layer=condition_layer)
    metrics = _evaluate(
        "safety", out, overwrite,
        lambda: _load_samples(fmt, data, split=image_type, limit=limit, seed=seed,
                              allow_outside_images=allow_outside_images, max_image_pixels=max_image_pixels),
        lambda vlm, samples, stage, steering: evaluate_safety_run(
            vlm, samples, stage, steering=steering, baseline=baseline, batch_size=batch_size,
            max_new_tokens=max_new_tokens, progress=True, part=_part(), engine=engine),
        _Model(model, adapter, dtype, device, device_map, max_image_pixels, engine),
        _Steer(vector, name, alpha, layer, region_, condition, allow_other_model,
               _edit_spec(edit_dictionary, edit, latent, value), visual_alpha, visual_control), baseline)
    if metrics is None:  # a data-parallel rank other than 0: rank 0 scores and reports
        return
    _print_tables("safety", metrics)
    out_console.print(f"wrote {out}/report.html, {out}/predictions.jsonl, {out}/metrics.json")


class _Model(NamedTuple):
    """The model options of an eval command."""

    model: str
    adapter: Optional[Path]
    dtype: str
    device: str
    device_map: Optional[str]
    max_image_pixels: int
    engine: str = "transformers"


class _Steer(NamedTuple):
    """The steering options of an eval command."""

    vector: Optional[Path]
    name: Optional[str]
    alpha: float
    layer: Optional[list[str]]
    region: Region
    condition: object
    allow_other_model: bool
    edit: object = None
    visual: Optional[float] = None
    visual_control: bool = False


def _chair_annotations(folder: Optional[Path], objects: Optional[str]):
    """``--chair``'s annotations, read before any model work; ``--objects`` alone is refused."""
    from vlmsteer.runs.scoring import ChairAnnotations

    if folder is None:
        if objects is not None:
            raise VlmsteerError("an object table applies only with --chair ANNOTATIONS", "objects")
        return None
    return ChairAnnotations.read(folder, CHAIR_OBJECTS.get(objects or "coco")())


def _evaluate(kind: str, out: Path, overwrite: bool, load: Callable, run: Callable, model: _Model, steer: _Steer,
              baseline: Optional[Path], **inputs) -> Optional[dict]:
    """What every eval command does: open ``out`` (checked writable, locked) before any model
    work; load the samples, the model and the steering; claim ``out`` for this run's identity
    (model, data and steering by content, the result-changing options, the baseline's
    fingerprint, any further ``inputs`` by content); run; write ``report.html`` and ``run.json``;
    publish the folder whole. Returns
    the metrics (None on a data-parallel rank other than 0)."""
    from vlmsteer.data.identity import dataset_identity
    from vlmsteer.outputs import read_run_record
    from vlmsteer.report.runs import write_eval_report

    from vlmsteer.runs.generation import PARTS

    _engine(model.engine)
    with publish(out, overwrite, resumable=(PARTS,)) as pub:
        samples = load()
        vlm = load_model(model.model, model.adapter, model.dtype, model.device, model.device_map,
                          max_image_pixels=model.max_image_pixels)
        steering = _steering(vlm, *steer)
        base = (read_run_record(baseline) or {}).get("fingerprint") if baseline is not None else None
        claim(pub, command_identity(model=vlm.identity, data=dataset_identity(samples),
                                  steering=steering.identity() if steering is not None else None, baseline=base,
                                  **{k: v for k, v in inputs.items() if v is not None}))
        metrics = run(vlm, samples, pub.stage, steering)
        if metrics is not None:
            write_eval_report(pub.stage, kind, baseline)
            command_run_json(pub, model_id=vlm.model_id, revision=vlm.revision, steering=metrics.get("steering"))
    return metrics


def _part():
    rank, world = rank_and_world()
    return (rank, world) if world > 1 else None


def _print_tables(kind: str, metrics: dict) -> None:
    """The tables the run's report.html shows, on the terminal."""
    from vlmsteer.report.runs import eval_tables

    for t in eval_tables(kind, metrics):
        table = Table(title=t.caption)
        for i, col in enumerate(t.columns):
            table.add_column(col, justify="left" if i == 0 else "right")
        for row in t.rows:
            table.add_row(*map(str, row))
        out_console.print(table)
