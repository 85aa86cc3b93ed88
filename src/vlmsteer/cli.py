"""``vlmsteer <command>``: thin wrappers that parse options and call the library.

Every problem with the user's input ends with a one-line ``error: ...`` on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from vlmsteer.errors import VlmsteerError

app = typer.Typer(help="Concept-level analysis and training-free steering of multimodal LLMs.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Datasets: generate the shapes world, check dataset files.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate a model (optionally steered).", no_args_is_help=True)
vectors_app = typer.Typer(help="Build steering vectors from feature stores.", no_args_is_help=True)
demo_app = typer.Typer(help="The end-to-end demo on the shipped shapes-llava model.", invoke_without_command=True)
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
app.add_typer(vectors_app, name="vectors")
app.add_typer(demo_app, name="demo")

out_console = Console()
err_console = Console(stderr=True)


def _quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _load_model(model: str, adapter: Optional[Path] = None, dtype: str = "auto", device: str = "cpu",
                trust_remote_code: bool = False):
    _quiet_transformers()
    from vlmsteer.model import VLM

    return VLM.load(model, adapter=adapter, dtype=dtype, device=device, trust_remote_code=trust_remote_code)


# --------------------------------------------------------------------------- info
@app.command()
def info(model: str = typer.Argument(..., help="Hub id, model folder, or shapes-llava."),
         adapter: Optional[Path] = typer.Option(None, help="LoRA adapter folder."),
         trust_remote_code: bool = typer.Option(False, help="Allow the model's own code to run.")):
    """Print a model's architecture, layer count, hidden size, vocabulary size and image-token count."""
    from vlmsteer.runinfo import version_warnings, versions

    vlm = _load_model(model, adapter, trust_remote_code=trust_remote_code)
    table = Table(show_header=False)
    for k, v in vlm.describe().items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    for name, version in versions().items():
        table.add_row(name, version)
    out_console.print(table)
    for line in version_warnings():
        err_console.print(f"warning: {line}", highlight=False, soft_wrap=True)


_ALLOW_OUTSIDE = typer.Option(False, "--allow-outside-images",
                              help="Read image paths that lead outside the dataset folder.")
_ALLOW_PARTIAL = typer.Option(False, "--allow-partial", help="Accept a store whose extraction did not finish.")


def _open_store(path: Path, allow_partial: bool = False):
    from vlmsteer.store import FeatureStore

    return FeatureStore.open(path, allow_partial=allow_partial).verify()


# --------------------------------------------------------------------------- data
@data_app.command("shapes")
def data_shapes(out: Path = typer.Option(..., help="Output folder."),
                n: int = typer.Option(1000, help="Number of scenes (images)."),
                seed: int = typer.Option(0, help="World seed; the demo model was trained on seed 1000."),
                split: str = typer.Option("val2014", help="Split name used in the file names."),
                start: int = typer.Option(0, help="Index of the first scene.")):
    """Generate shapes-world scenes in the official VQAv2 and COCO caption formats."""
    from vlmsteer.data import shapes
    from vlmsteer.progress import progress_bar

    if n < 1:
        raise VlmsteerError(f"--n must be >= 1, got {n}")
    with progress_bar("rendering scenes", n) as advance:
        paths = shapes.write_dataset(out, n=n, seed=seed, split=split, start=start, progress=advance)
    for name, p in paths.items():
        out_console.print(f"{name:12s} {p}")


@data_app.command("check")
def data_check(fmt: str = typer.Argument(..., metavar="FORMAT", help="vqav2, coco, jsonl, mm-safetybench or figstep."),
               path: Path = typer.Argument(..., help="Dataset folder or file."),
               split: str = typer.Option("val2014"), images: Optional[Path] = typer.Option(None),
               limit: Optional[int] = typer.Option(None), seed: int = typer.Option(0),
               allow_outside_images: bool = _ALLOW_OUTSIDE):
    """Load a dataset, decode every selected image, and summarize it."""
    from collections import Counter

    from vlmsteer.data import load_samples
    from vlmsteer.model import load_image
    from vlmsteer.progress import progress_bar

    samples = load_samples(fmt, path, split=split, images=images, limit=limit, seed=seed,
                           allow_outside_images=allow_outside_images)
    paths = sorted({s.image_path for s in samples if s.image_path})
    with progress_bar("decoding images", len(paths)) as advance:
        for image in paths:
            load_image(image)
            advance(1)
    types = Counter(s.answer_type for s in samples if s.answer_type)
    out_console.print(f"{len(samples)} samples, {len(paths)} images decoded"
                      + (f"; answer types: {dict(types)}" if types else ""))
    if samples:
        s = samples[0]
        out_console.print(f"first: id={s.id} prompt={s.prompt!r} answer={s.answer!r} "
                          f"captions={len(s.captions)} image={s.image_path}")


# --------------------------------------------------------------------------- eval
# options shared by the evaluation commands (typer reads these as defaults)
_VECTOR = typer.Option(None, help="Steering vector file (.safetensors).")
_NAME = typer.Option(None, help="Vector name, for files holding several.")
_ALPHA = typer.Option(1.0, help="Steering strength.")
_LAYERS = typer.Option(None, help="Layer(s) to steer (default: the vector's).")
_BASELINE = typer.Option(None, help="Unsteered run folder to compare against.")
_LIMIT = typer.Option(None, help="Evaluate a seeded random subset.")


@eval_app.command("vqa")
def eval_vqa(model: str = typer.Option(..., help="Hub id, model folder, or shapes-llava."),
             data: Path = typer.Option(..., help="VQAv2 folder (official layout)."),
             split: str = typer.Option("val2014"), images: Optional[Path] = typer.Option(None),
             out: Path = typer.Option(Path("runs/eval-vqa"), help="Output folder."),
             limit: Optional[int] = _LIMIT,
             seed: int = typer.Option(0), batch_size: int = typer.Option(32),
             max_new_tokens: int = typer.Option(8), adapter: Optional[Path] = typer.Option(None),
             vector: Optional[Path] = _VECTOR,
             name: Optional[str] = _NAME,
             alpha: float = _ALPHA,
             layer: Optional[list[str]] = _LAYERS,
             region: str = typer.Option("prompt", help="prompt, image, text, last_prompt, generated or all."),
             baseline: Optional[Path] = _BASELINE,
             source: Optional[str] = typer.Option(None, help="Answer the vector moves away from (for counts)."),
             target: Optional[str] = typer.Option(None, help="Answer the vector moves toward (for counts)."),
             dtype: str = typer.Option("auto"), device: str = typer.Option("cpu"),
             allow_outside_images: bool = _ALLOW_OUTSIDE):
    """Answer VQA questions greedily (optionally steered) and report official VQAv2 accuracy."""
    from vlmsteer.data import load_samples
    from vlmsteer.evaluate.vqa_run import compare_to_baseline, run_vqa, write_vqa_outputs
    from vlmsteer.regions import Region
    from vlmsteer.runinfo import write_run_json

    region_ = Region.parse(region)
    samples = load_samples("vqav2", data, split=split, images=images, limit=limit, seed=seed,
                           allow_outside_images=allow_outside_images)
    vlm = _load_model(model, adapter, dtype, device)
    context = _steering_context(vlm, vector, name, alpha, layer, region_)
    preds, report = run_vqa(vlm, samples, batch_size=batch_size, max_new_tokens=max_new_tokens, context=context)
    extra = {}
    if baseline is not None:
        extra["vs_baseline"] = compare_to_baseline(baseline, samples, preds, report, source=source, target=target)
    write_vqa_outputs(out, samples, preds, report, extra=extra)
    write_run_json(out, options=dict(model=model, data=data, split=split, limit=limit, batch_size=batch_size,
                                     max_new_tokens=max_new_tokens, adapter=adapter, vector=vector, name=name,
                                     alpha=alpha, layer=layer, region=region), seed=seed,
                   model_id=model, revision=vlm.revision)
    _print_vqa_table(report)
    if extra:
        out_console.print_json(json.dumps(extra["vs_baseline"]))
    out_console.print(f"wrote {out}/predictions.jsonl, {out}/metrics.json")


def _steering_context(vlm, vector: Optional[Path], name: Optional[str], alpha: float,
                      layer: Optional[list[str]], region):
    """A per-batch ``steer`` context for ``vector`` (None without a vector), checked against the model."""
    if vector is None:
        return None
    from vlmsteer.steer import steer
    from vlmsteer.steer.vector import load_vector

    vec = load_vector(vector, name, vlm)
    layers = vec.check_model(vlm, _parse_layers(layer) if layer else None)
    return lambda batch: steer(vlm, vec, batch, alpha=alpha, layers=layers, region=region)


@eval_app.command("captions")
def eval_captions(model: str = typer.Option(..., help="Hub id, model folder, or shapes-llava."),
                  data: Path = typer.Option(..., help="COCO captions folder or file (official or Karpathy)."),
                  split: str = typer.Option("val2014"), images: Optional[Path] = typer.Option(None),
                  prompt: Optional[str] = typer.Option(None, help="Caption prompt (default: the loader's)."),
                  out: Path = typer.Option(Path("runs/eval-captions"), help="Output folder."),
                  limit: Optional[int] = _LIMIT,
                  seed: int = typer.Option(0), batch_size: int = typer.Option(32),
                  max_new_tokens: int = typer.Option(32), adapter: Optional[Path] = typer.Option(None),
                  vector: Optional[Path] = _VECTOR,
                  name: Optional[str] = _NAME,
                  alpha: float = _ALPHA,
                  layer: Optional[list[str]] = _LAYERS,
                  region: str = typer.Option("generated", help="prompt, image, text, last_prompt, generated or all."),
                  baseline: Optional[Path] = _BASELINE,
                  tokenizer: str = typer.Option("auto", help="CIDEr tokenizer: auto (Java PTB if java is "
                                                             "installed), java or python."),
                  dtype: str = typer.Option("auto"), device: str = typer.Option("cpu"),
                  allow_outside_images: bool = _ALLOW_OUTSIDE):
    """Caption images greedily (optionally steered): CIDEr, style-keyword counts, changes vs a baseline."""
    from vlmsteer.data import load_samples
    from vlmsteer.evaluate.captions import (compare_caption_runs, evaluate_captions, read_baseline_captions,
                                            run_captions, write_caption_outputs)
    from vlmsteer.evaluate.cider import resolve_tokenizer
    from vlmsteer.regions import Region
    from vlmsteer.runinfo import write_run_json

    region_ = Region.parse(region)
    resolve_tokenizer(tokenizer)  # fail before generating
    samples = load_samples("coco", data, split=split, images=images, limit=limit, seed=seed, prompt=prompt,
                           allow_outside_images=allow_outside_images)
    base_caps = read_baseline_captions(baseline, samples) if baseline is not None else None
    vlm = _load_model(model, adapter, dtype, device)
    context = _steering_context(vlm, vector, name, alpha, layer, region_)
    caps = run_captions(vlm, samples, batch_size=batch_size, max_new_tokens=max_new_tokens, context=context)
    report = evaluate_captions(samples, caps, tokenizer=tokenizer)
    extra = {}
    if base_caps is not None:
        extra["vs_baseline"] = compare_caption_runs(base_caps, caps, evaluate_captions(samples, base_caps,
                                                                                        tokenizer=tokenizer), report)
    write_caption_outputs(out, samples, caps, report, extra=extra)
    write_run_json(out, options=dict(model=model, data=data, split=split, limit=limit, batch_size=batch_size,
                                     max_new_tokens=max_new_tokens, adapter=adapter, vector=vector, name=name,
                                     alpha=alpha, layer=layer, region=region, prompt=prompt, tokenizer=tokenizer),
                   seed=seed, model_id=model, revision=vlm.revision)
    table = Table(title=f"captions ({report.n} images)")
    for col in ("metric", "value", "vs baseline"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    vs = extra.get("vs_baseline")
    table.add_row("CIDEr", "—" if report.cider is None else f"{report.cider:.3f}",
                  "" if not vs or vs["cider_delta"] is None else f"{vs['cider_delta']:+.3f}")
    for st, share in report.style_share.items():
        table.add_row(f"{st} share %", f"{share:.1f}", f"{vs['styles'][st]['share_delta']:+.1f}" if vs else "")
    if vs:
        table.add_row("captions changed", str(vs["captions_changed"]), "")
    out_console.print(table)
    out_console.print(f"wrote {out}/predictions.jsonl, {out}/metrics.json")


@eval_app.command("safety")
def eval_safety(model: str = typer.Option(..., help="Hub id, model folder, or shapes-llava."),
                data: Path = typer.Option(..., help="Benchmark folder (or JSONL file)."),
                fmt: str = typer.Option("mm-safetybench", "--format", help="mm-safetybench, figstep or jsonl."),
                image_type: str = typer.Option("SD_TYPO", help="MM-SafetyBench image type: SD, SD_TYPO or TYPO."),
                out: Path = typer.Option(Path("runs/eval-safety"), help="Output folder."),
                limit: Optional[int] = _LIMIT,
                seed: int = typer.Option(0), batch_size: int = typer.Option(16),
                max_new_tokens: int = typer.Option(64), adapter: Optional[Path] = typer.Option(None),
                vector: Optional[Path] = _VECTOR,
                name: Optional[str] = _NAME,
                alpha: float = _ALPHA,
                layer: Optional[list[str]] = _LAYERS,
                region: str = typer.Option("prompt", help="prompt, image, text, last_prompt, generated or all."),
                baseline: Optional[Path] = _BASELINE,
                dtype: str = typer.Option("auto"), device: str = typer.Option("cpu"),
                allow_outside_images: bool = _ALLOW_OUTSIDE):
    """Answer harmful prompts (optionally steered): refusals and attack success rate per category."""
    from vlmsteer.data import DataFormat, load_samples
    from vlmsteer.data.io import read_jsonl, write_run_outputs
    from vlmsteer.evaluate.safety import compare_safety_runs, is_refusal, safety_report
    from vlmsteer.regions import Region
    from vlmsteer.runinfo import write_run_json
    from vlmsteer.runner import generate_responses

    region_ = Region.parse(region)
    if fmt not in (DataFormat.MM_SAFETYBENCH.value, DataFormat.FIGSTEP.value, DataFormat.JSONL.value):
        raise VlmsteerError(f"--format {fmt}: choose mm-safetybench, figstep or jsonl")
    samples = load_samples(fmt, data, split=image_type, limit=limit, seed=seed,
                           allow_outside_images=allow_outside_images)
    base = None
    if baseline is not None:
        path = baseline / "predictions.jsonl"
        by_id = {r["id"]: r["response"] for r in read_jsonl(path)}
        missing = [s.id for s in samples if s.id not in by_id]
        if missing:
            raise VlmsteerError(f"{path}: baseline lacks {len(missing)} of these prompts (first: {missing[0]})")
        base = [by_id[s.id] for s in samples]
    vlm = _load_model(model, adapter, dtype, device)
    context = _steering_context(vlm, vector, name, alpha, layer, region_)
    responses = [r.text for r in generate_responses(vlm, samples, batch_size=batch_size,
                                                    max_new_tokens=max_new_tokens, context=context,
                                                    description="answering")]
    categories = [s.meta.get("category") for s in samples]
    report = safety_report(responses, categories)
    metrics = report.to_dict()
    if base is not None:
        metrics["vs_baseline"] = compare_safety_runs(base, responses)
    write_run_outputs(out, [{"id": s.id, "prompt": s.prompt, "response": r, "refused": is_refusal(r),
                             "category": s.meta.get("category"), "image": s.image_path}
                            for s, r in zip(samples, responses)], metrics)
    write_run_json(out, options=dict(model=model, data=data, format=fmt, image_type=image_type, limit=limit,
                                     batch_size=batch_size, max_new_tokens=max_new_tokens, adapter=adapter,
                                     vector=vector, name=name, alpha=alpha, layer=layer, region=region),
                   seed=seed, model_id=model, revision=vlm.revision)
    table = Table(title=f"attack success rate ({report.n} prompts)")
    for col in ("category", "prompts", "ASR %"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for cat, row in report.per_category.items():
        table.add_row(cat, str(row["n"]), f"{row['attack_success_rate']:.1f}")
    table.add_row("all", str(report.n), f"{report.attack_success_rate:.1f}")
    out_console.print(table)
    if base is not None:
        out_console.print_json(json.dumps(metrics["vs_baseline"]))
    out_console.print(f"wrote {out}/predictions.jsonl, {out}/metrics.json")


def _print_vqa_table(report) -> None:
    table = Table(title=f"VQA accuracy ({report.n} questions)")
    table.add_column("answer type")
    table.add_column("questions", justify="right")
    table.add_column("accuracy", justify="right")
    for t, acc in report.per_type.items():
        table.add_row(t, str(report.counts_per_type[t]), f"{acc:.2f}")
    table.add_row("overall (micro)", str(report.n), f"{report.micro:.2f}")
    table.add_row("overall (macro)", "", f"{report.macro:.2f}")
    out_console.print(table)


# --------------------------------------------------------------------------- extract
def _parse_ints(values: str | list[str], option: str = "--layer") -> list[int]:
    """Integers from repeated and/or comma-separated option values; one-line error otherwise."""
    numbers = []
    for v in [values] if isinstance(values, str) else values:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                numbers.append(int(part))
            except ValueError:
                raise VlmsteerError(f"{option} expects integers, got {part!r}") from None
    if not numbers:
        raise VlmsteerError(f"give at least one value for {option}")
    return numbers


def _parse_layers(values: list[str]) -> list[int]:
    return _parse_ints(values, "--layer")


@app.command()
def extract(model: str = typer.Option(..., help="Hub id, model folder, or shapes-llava."),
            data: Path = typer.Option(..., help="Dataset folder or file."),
            fmt: str = typer.Option("vqav2", "--format", help="vqav2, coco, jsonl, mm-safetybench or figstep."),
            out: Path = typer.Option(..., help="Store folder (rerun the same command to resume)."),
            layer: list[str] = typer.Option(..., help="Decoder layer(s); negative counts from the end; "
                                                      "repeat or comma-separate."),
            selector: str = typer.Option("last_prompt", help="last_prompt, word, mean_response, mean_image, "
                                                             "mean_text."),
            word: Optional[str] = typer.Option(None, help="Word of interest (word selector); whole-word match."),
            word_source: str = typer.Option("response", help="Find the word in the response or the prompt."),
            word_position: str = typer.Option("predicts", help="'predicts': the position whose next token is "
                                                               "the word (default); 'of': the word's own last token."),
            mode: str = typer.Option("teacher", help="teacher (reference answer/caption) or generate."),
            target: str = typer.Option("auto", help="Teacher-forced text: auto, answer or caption."),
            split: str = typer.Option("val2014"), images: Optional[Path] = typer.Option(None),
            limit: Optional[int] = typer.Option(None), seed: int = typer.Option(0),
            batch_size: int = typer.Option(16), shard_size: int = typer.Option(256),
            store_dtype: str = typer.Option("float32", help="float32 or float16 features on disk."),
            max_new_tokens: int = typer.Option(32), prompt: Optional[str] = typer.Option(None),
            where: Optional[str] = typer.Option(None, help="Keep samples whose fields match, e.g. "
                                                           "'question_type=what color is the' or 'answer=yes|no'."),
            adapter: Optional[Path] = typer.Option(None), dtype: str = typer.Option("auto"),
            device: str = typer.Option("cpu"), allow_outside_images: bool = _ALLOW_OUTSIDE):
    """Store residual-stream features of chosen layers and tokens (batched, resumable)."""
    from vlmsteer.data import load_samples
    from vlmsteer.extract import ExtractConfig
    from vlmsteer.extract import extract as run_extract
    from vlmsteer.runinfo import write_run_json
    from vlmsteer.selectors import Selector

    sel = Selector(kind=selector, word=word, source=word_source, position=word_position)
    try:
        cfg = ExtractConfig(layers=_parse_layers(layer), selector=sel, mode=mode, target=target,
                            batch_size=batch_size, shard_size=shard_size, dtype=store_dtype,
                            max_new_tokens=max_new_tokens)
    except ValueError as exc:
        raise VlmsteerError(str(exc)) from None
    samples = load_samples(fmt, data, split=split, images=images, limit=None if where else limit, seed=seed,
                           prompt=prompt, allow_outside_images=allow_outside_images)
    if where:
        from vlmsteer.data.sample import filter_by_fields, subsample
        from vlmsteer.steer.builders import parse_filter

        samples = subsample(filter_by_fields(samples, parse_filter(where)), limit, seed)
        if not samples:
            raise VlmsteerError(f"no sample matches --where {where!r}")
    vlm = _load_model(model, adapter, dtype, device)
    dataset = {"format": fmt, "path": str(data), "split": split, "limit": limit, "seed": seed, "prompt": prompt,
               "where": where}
    store, resumed = run_extract(vlm, samples, out, cfg, dataset=dataset)
    if resumed:
        out_console.print(f"resumed from {resumed} samples already in {out}")
    write_run_json(out, options=dict(model=model, data=data, format=fmt, layers=cfg.layers, selector=sel.to_dict(),
                                     mode=mode, target=target, batch_size=batch_size, shard_size=shard_size),
                   seed=seed, model_id=model, revision=vlm.revision)
    found = int(len(store.select()))
    out_console.print(f"{len(store)} samples ({found} with the selected token), layers {store.layers} -> {out}")


# --------------------------------------------------------------------------- concepts
@app.command()
def concepts(store: Path = typer.Argument(..., help="Feature store folder."),
             out: Path = typer.Option(..., help="Output folder."),
             method: str = typer.Option("kmeans", help="kmeans, pca, semi_nmf or nmf."),
             k: int = typer.Option(20, "-k", "--k", help="Number of concepts."),
             layer: int = typer.Option(-1, help="Layer of the store to use (negative counts from the end)."),
             model: Optional[str] = typer.Option(None, help="Model for word grounding (default: the store's)."),
             no_words: bool = typer.Option(False, help="Skip word grounding (no model needed)."),
             top_words: int = typer.Option(15), top_images: int = typer.Option(8), seed: int = typer.Option(0),
             allow_partial: bool = _ALLOW_PARTIAL):
    """Learn concepts from stored features; ground them in words and images; write an HTML report."""
    from vlmsteer.concepts.report import ConceptRun, run_concepts
    from vlmsteer.runinfo import write_run_json

    st = _open_store(store, allow_partial)
    absolute = st.layer_index(layer)
    vlm = None if no_words else _load_model(model or st.header["model_id"])
    result = run_concepts(st, out, ConceptRun(method=method, k=k, layer=absolute, seed=seed, top_words=top_words,
                                             top_images=top_images), vlm=vlm)
    write_run_json(out, options=dict(store=store, method=method, k=k, layer=absolute), seed=seed,
                   model_id=st.header.get("model_id"))
    table = Table(title=f"{k} {method} concepts, layer {absolute}")
    table.add_column("#", justify="right")
    table.add_column("size", justify="right")
    table.add_column("words")
    for c in result["concepts"]:
        table.add_row(str(c["index"]), str(c["size"]), ", ".join(c["words"][:8]))
    out_console.print(table)
    out_console.print(f"wrote {out}/report.html, {out}/concepts.json, {out}/dictionary.safetensors")


@app.command("separability")
def separability_cmd(store: Path = typer.Argument(..., help="Feature store folder (extract several layers)."),
                     out: Path = typer.Option(..., help="Output folder."),
                     label: str = typer.Option("answer", help="Record field to predict (e.g. answer, "
                                                              "answer_type, meta.style)."),
                     layer: Optional[list[str]] = typer.Option(None, help="Layers (default: all in the store)."),
                     top: int = typer.Option(10, help="Keep the most frequent labels."),
                     folds: int = typer.Option(5, help="Cross-validation folds."), seed: int = typer.Option(0),
                     allow_partial: bool = _ALLOW_PARTIAL):
    """Per-layer linear-probe accuracy and PCA plots of features coloured by a label (PNG + JSON)."""
    from vlmsteer.runinfo import write_run_json
    from vlmsteer.separability import separability, write_separability

    st = _open_store(store, allow_partial)
    result = separability(st, label=label, layers=_parse_layers(layer) if layer else None, top=top, folds=folds,
                          seed=seed)
    write_separability(st, result, out, seed=seed)
    write_run_json(out, options=dict(store=store, label=label, layer=layer, top=top, folds=folds), seed=seed,
                   model_id=st.header.get("model_id"))
    table = Table(title=f"linear separability of {label!r} ({sum(result.counts.values())} samples, "
                        f"{len(result.labels)} labels; majority class {result.majority_baseline:.1f} %)")
    for col in ("layer", "probe accuracy %", "PCA variance (2 comps)"):
        table.add_column(col, justify="right")
    for r in result.layers:
        table.add_row(str(r.layer), f"{r.probe_accuracy:.1f} ± {r.probe_accuracy_std:.1f}",
                      f"{sum(r.pca_explained):.2f}")
    out_console.print(table)
    out_console.print(f"wrote {out}/separability.json, {out}/probe_accuracy.png, {out}/pca_layers.png")


# --------------------------------------------------------------------------- finetune
@app.command()
def finetune(model: str = typer.Option(..., help="Hub id, model folder, or shapes-llava."),
             data: Path = typer.Option(..., help="Dataset folder or file."),
             out: Path = typer.Option(..., help="Output folder (adapters, loss.jsonl, merged/)."),
             fmt: str = typer.Option("coco", "--format", help="vqav2, coco, jsonl, mm-safetybench or figstep."),
             keywords: Optional[str] = typer.Option(None, help="Keep only texts with these keywords: colors, "
                                                               "places, sentiments, gender."),
             steps: int = typer.Option(300), batch_size: int = typer.Option(16), lr: float = typer.Option(1e-3),
             rank: int = typer.Option(8), save_every: int = typer.Option(100),
             merge: bool = typer.Option(False, help="Also write a merged model folder."),
             target: str = typer.Option("auto", help="Train on answers or captions (auto: what samples have)."),
             split: str = typer.Option("val2014"), limit: Optional[int] = typer.Option(None),
             prompt: Optional[str] = typer.Option(None), seed: int = typer.Option(0),
             allow_outside_images: bool = _ALLOW_OUTSIDE):
    """LoRA fine-tuning of the language model (vision tower frozen), on a dataset or a keyword subset."""
    from vlmsteer.data import load_samples
    from vlmsteer.data.keywords import filter_samples, keyword_set
    from vlmsteer.finetune import FinetuneConfig
    from vlmsteer.finetune import finetune as run_finetune
    from vlmsteer.runinfo import write_run_json

    samples = load_samples(fmt, data, split=split, limit=limit, seed=seed, prompt=prompt,
                           allow_outside_images=allow_outside_images)
    if keywords:
        samples = filter_samples(samples, keyword_set(keywords), "captions" if fmt == "coco" else "answers")
        if not samples:
            raise VlmsteerError(f"no sample of {data} has a {keywords} keyword")
    vlm = _load_model(model)
    cfg = FinetuneConfig(steps=steps, batch_size=batch_size, lr=lr, rank=rank, save_every=save_every, seed=seed,
                         target=target)
    summary = run_finetune(vlm, samples, out, cfg, merge=merge)
    write_run_json(out, options=dict(model=model, data=data, format=fmt, keywords=keywords, steps=steps,
                                     batch_size=batch_size, lr=lr, rank=rank, merge=merge), seed=seed, model_id=model)
    out_console.print(f"{summary['samples']} training texts, loss {summary['first_loss']:.3f} -> "
                      f"{summary['last_loss']:.3f} in {summary['seconds']:.0f} s -> {out}")


# --------------------------------------------------------------------------- shift
@app.command()
def shift(original: Path = typer.Option(..., help="Store extracted from the original model."),
          finetuned: Path = typer.Option(..., help="Store extracted from the fine-tuned model (same samples)."),
          out: Path = typer.Option(Path("runs/shift")), layer: int = typer.Option(-1),
          k: int = typer.Option(10, "-k", "--k"), method: str = typer.Option("kmeans"),
          matching: str = typer.Option("hungarian", help="hungarian or ot."),
          checkpoint: Optional[list[str]] = typer.Option(None, help="STEP=STORE of a checkpoint (repeat)."),
          ks: Optional[str] = typer.Option(None, help="Ablation over K, e.g. '5,10,20'."),
          layers: Optional[str] = typer.Option(None, help="Ablation over layers, e.g. '1,2,3'."),
          keywords: Optional[str] = typer.Option(None, help="Fine-tuning keywords: colors, places, sentiments."),
          model: Optional[str] = typer.Option(None, help="Model for word grounding (default: the original's)."),
          no_words: bool = typer.Option(False), seed: int = typer.Option(0), allow_partial: bool = _ALLOW_PARTIAL):
    """Concept matching, shift vectors, recovery, evolution and ablations between two models' stores."""
    from vlmsteer.data.keywords import keyword_set
    from vlmsteer.runinfo import write_run_json
    from vlmsteer.shift_report import ShiftConfig, run_shift

    a, b = _open_store(original, allow_partial), _open_store(finetuned, allow_partial)
    absolute = a.layer_index(layer)
    b.layer_index(layer)
    checkpoints = {}
    for item in checkpoint or []:
        step, _, path = item.partition("=")
        if not step.strip().isdigit() or not path:
            raise VlmsteerError(f"--checkpoint expects STEP=STORE, got {item!r}")
        checkpoints[int(step)] = _open_store(Path(path), allow_partial)
    cfg = ShiftConfig(layer=absolute, k=k, method=method, matching=matching, seed=seed,
                      keywords=keyword_set(keywords) if keywords else None)
    k_values = _parse_ints(ks, "--ks") if ks else []
    if any(v < 1 for v in k_values + [k]):
        raise VlmsteerError(f"-k and --ks need positive integers, got {[k] + k_values}")
    layer_values = [a.layer_index(v) for v in _parse_ints(layers, "--layers")] if layers else []
    vlm = None if no_words else _load_model(model or a.header["model_id"])
    result = run_shift(a, b, out, cfg, vlm=vlm, checkpoints=checkpoints, ks=k_values, layers=layer_values)
    write_run_json(out, options=dict(original=original, finetuned=finetuned, layer=absolute, k=k, method=method,
                                     matching=matching, keywords=keywords), seed=seed, model_id=a.header.get("model_id"))
    m = result["main"]
    out_console.print(f"mean recovery cosine: alpha 0 = {m['mean_recovery_alpha0']:.3f}, "
                      f"alpha 1 = {m['mean_recovery_alpha1']:.3f}; wrote {out}/shift.json, {out}/report.html")


# --------------------------------------------------------------------------- vectors
@vectors_app.command("coarse")
def vectors_coarse(store: Path = typer.Option(..., help="Feature store (source, and target unless --target-store)."),
                   out: Path = typer.Option(..., help="Output .safetensors file."),
                   source: Optional[str] = typer.Option(None, help="Source filter, e.g. 'response=yes'."),
                   target: Optional[str] = typer.Option(None, help="Target filter, e.g. 'response=no'."),
                   target_store: Optional[Path] = typer.Option(None, help="A second store for the target."),
                   layer: Optional[list[str]] = typer.Option(None, help="Layers (default: all in the store)."),
                   max_samples: Optional[int] = typer.Option(None, help="Use at most this many per side."),
                   seed: int = typer.Option(0), name: str = typer.Option("vector"),
                   allow_partial: bool = _ALLOW_PARTIAL):
    """Coarse vector: mean(target features) - mean(source features)."""
    from vlmsteer.steer.builders import coarse_vector, parse_filter

    a = _open_store(store, allow_partial)
    b = _open_store(target_store, allow_partial) if target_store else None
    layers = _parse_layers(layer) if layer else None
    vec = coarse_vector(a, parse_filter(source) if source else None, b, parse_filter(target) if target else None,
                        layers=layers, max_samples=max_samples, seed=seed)
    vec.save(out, name=name)
    out_console.print(f"{vec.method} vector {vec.source!r} -> {vec.target!r} from {vec.n_source} + {vec.n_target} "
                      f"samples, layers {vec.layers}, |v| = {vec.norm():.2f} -> {out}")


@vectors_app.command("concepts")
def vectors_concepts(dictionary: Path = typer.Option(..., help="dictionary.safetensors from vlmsteer concepts."),
                     out: Path = typer.Option(..., help="Output .safetensors file with all K·(K−1) vectors."),
                     layer: Optional[int] = typer.Option(None, help="Layer to steer (default: the dictionary's).")):
    """Fine-grained vectors between concepts: 'i->j' = u_j − u_i for every ordered pair."""
    from vlmsteer.concepts import load_dictionary
    from vlmsteer.steer.builders import all_concept_shifts
    from vlmsteer.steer.vector import save_vectors

    d, meta = load_dictionary(dictionary)
    layer = layer if layer is not None else meta.get("layer")
    if layer is None:
        raise VlmsteerError(f"{dictionary}: no layer recorded; pass --layer")
    labels = None
    cj = dictionary.parent / "concepts.json"
    if cj.exists():
        labels = [f"{c['index']}:{(c['words'] or ['?'])[0]}" for c in json.loads(cj.read_text())["concepts"]]
    vecs = all_concept_shifts(d.components_, int(layer), model_id=meta.get("model_id"), labels=labels)
    save_vectors(out, vecs)
    out_console.print(f"{len(vecs)} concept-pair vectors (layer {layer}) -> {out}")


@app.command()
def select(model: str = typer.Option(..., help="Hub id, model folder, or shapes-llava."),
           data: Path = typer.Option(..., help="VQAv2 folder."),
           vectors: Path = typer.Option(..., help="File of candidate vectors (e.g. from vectors concepts)."),
           out: Path = typer.Option(Path("runs/select"), help="Output folder."),
           alpha: float = typer.Option(1.0), region: str = typer.Option("last_prompt"),
           top_n: int = typer.Option(5, help="Answers kept per vector before the 2-means split."),
           relative_to: str = typer.Option("total", help="Answer increase relative to its baseline count "
                                                        "('base', (s-b)/(b+1)) or to all answers ('total', "
                                                        "points of share)."),
           distinct: bool = typer.Option(True, help="Show only the best vector per set of primary answers."),
           split: str = typer.Option("val2014"), limit: Optional[int] = typer.Option(500),
           seed: int = typer.Option(0), batch_size: int = typer.Option(64), show: int = typer.Option(15),
           allow_outside_images: bool = _ALLOW_OUTSIDE):
    """Rank candidate steering vectors with the paper's selection metric."""
    from vlmsteer.data import load_samples
    from vlmsteer.progress import progress_bar
    from vlmsteer.regions import Region
    from vlmsteer.runinfo import write_run_json
    from vlmsteer.runner import generate_responses
    from vlmsteer.steer import steer
    from vlmsteer.steer.selection import rank, selection_score
    from vlmsteer.steer.vector import load_vectors

    region_ = Region.parse(region)
    if relative_to not in ("base", "total"):
        raise VlmsteerError(f"--relative-to {relative_to!r}: choose base or total")
    candidates = load_vectors(vectors)
    samples = load_samples("vqav2", data, split=split, limit=limit, seed=seed,
                           allow_outside_images=allow_outside_images)
    vlm = _load_model(model)
    for v in candidates.values():
        v.check_model(vlm)
    base = [r.text for r in generate_responses(vlm, samples, batch_size=batch_size, max_new_tokens=3,
                                               description="baseline")]
    selections = []
    with progress_bar("candidates", len(candidates)) as advance:
        for name, vec in candidates.items():
            steered = [r.text for r in generate_responses(
                vlm, samples, batch_size=batch_size, max_new_tokens=3, progress=False,
                context=lambda b, v=vec: steer(vlm, v, b, alpha=alpha, region=region_))]
            selections.append(selection_score(base, steered, top_n=top_n, name=name, relative_to=relative_to))
            advance(1)
    results = [{**s.to_dict(), "source": candidates[s.name].source, "target": candidates[s.name].target}
               for s in rank(selections, distinct=distinct)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps({"alpha": alpha, "region": region_.value, "n": len(samples),
                                                    "ranking": results}, indent=2))
    write_run_json(out, options=dict(model=model, data=data, vectors=vectors, alpha=alpha, region=region,
                                     top_n=top_n, limit=limit, relative_to=relative_to, distinct=distinct),
                   seed=seed, model_id=model)
    table = Table(title=f"{len(results)} vectors ranked by the selection metric")
    for col in ("rank", "vector", "from", "to", "score", "primary answers"):
        table.add_column(col)
    for i, r in enumerate(results[:show], 1):
        table.add_row(str(i), r["name"], str(r["source"]), str(r["target"]), f"{r['score']:.2f}",
                      ", ".join(r["primary"]))
    out_console.print(table)


@app.command()
def sweep(model: str = typer.Option(..., help="Hub id, model folder, or shapes-llava."),
          data: Path = typer.Option(..., help="VQAv2 folder with held-out questions."),
          store: Path = typer.Option(..., help="Feature store to build the coarse vector from."),
          source: str = typer.Option(..., help="Source filter, e.g. 'answer=yes'."),
          target: str = typer.Option(..., help="Target filter, e.g. 'answer=no'."),
          out: Path = typer.Option(Path("runs/sweep")),
          layers: str = typer.Option("-1", help="Comma-separated layers."),
          alphas: str = typer.Option("0.5,1,2", help="Comma-separated alphas."),
          regions: str = typer.Option("last_prompt", help="Comma-separated regions."),
          n_samples: str = typer.Option("all", help="Comma-separated samples per side ('all' = every one)."),
          split: str = typer.Option("val2014"), limit: Optional[int] = typer.Option(500),
          seed: int = typer.Option(0), batch_size: int = typer.Option(64), allow_partial: bool = _ALLOW_PARTIAL,
          allow_outside_images: bool = _ALLOW_OUTSIDE):
    """Sweep a coarse vector over layers × alphas × regions × samples; one table and one PNG."""
    from vlmsteer.data import load_samples
    from vlmsteer.regions import Region
    from vlmsteer.runinfo import write_run_json
    from vlmsteer.steer.builders import parse_filter
    from vlmsteer.steer.sweep import SweepGrid, run_sweep, write_sweep

    st = _open_store(store, allow_partial)
    vlm = _load_model(model)
    try:
        grid = SweepGrid(layers=[vlm.layer_index(int(x)) for x in layers.split(",")],
                         alphas=[float(x) for x in alphas.split(",")],
                         regions=[Region.parse(x) for x in regions.split(",")],
                         n_samples=[None if x.strip() == "all" else int(x) for x in n_samples.split(",")])
    except ValueError as exc:
        raise VlmsteerError(f"bad sweep values ({exc})") from None
    missing = [l for l in grid.layers if l not in st.layers]
    if missing:
        raise VlmsteerError(f"{store}: layers {missing} not in this store (has {st.layers})")
    src, tgt = parse_filter(source), parse_filter(target)
    samples = load_samples("vqav2", data, split=split, limit=limit, seed=seed,
                           allow_outside_images=allow_outside_images)
    result = run_sweep(vlm, st, src, tgt, samples, grid, source_answer=src.get("answer"),
                       target_answer=tgt.get("answer"), batch_size=batch_size, seed=seed)
    write_sweep(result, out)
    write_run_json(out, options=dict(model=model, data=data, store=store, source=source, target=target,
                                     layers=layers, alphas=alphas, regions=regions, n_samples=n_samples), seed=seed,
                   model_id=model)
    types = list(result["baseline_accuracy"])
    table = Table(title=f"sweep: {source} -> {target} ({result['n']} questions)")
    for col in ["layer", "alpha", "region", "samples", "moved", "changed"] + [f"Δ {t}" for t in types]:
        table.add_column(col)
    for r in result["rows"]:
        moved = "" if r["moved_fraction"] is None else f"{100 * r['moved_fraction']:.1f} %"
        table.add_row(str(r["layer"]), str(r["alpha"]), r["region"], str(r["vector_samples"]), moved,
                      str(r["changed"]), *[f"{r['accuracy_delta'][t]:+.2f}" for t in types])
    out_console.print(table)
    out_console.print(f"wrote {out}/sweep.json, {out}/sweep.png")


# --------------------------------------------------------------------------- demo
@demo_app.callback()
def demo(ctx: typer.Context,
         out: Path = typer.Option(Path("runs/demo"), help="Output folder for the demo page and its reports."),
         n_scenes: int = typer.Option(400, help="Held-out scenes to generate (about 9 questions each)."),
         seed: int = typer.Option(7, help="Seed of the held-out world (the model was trained on 1000)."),
         batch_size: int = typer.Option(64), model: str = typer.Option("shapes-llava", help="Model to demo.")):
    """Run the whole story on the shipped model and write one HTML page linking every report."""
    if ctx.invoked_subcommand is not None:
        return
    from vlmsteer.demo.run import DemoSettings, run_demo

    _quiet_transformers()
    page = run_demo(out, DemoSettings(model=model, n_scenes=n_scenes, seed=seed, batch_size=batch_size))
    out_console.print(f"demo page: {page}")


@demo_app.command("train")
def demo_train(out: Path = typer.Option(..., help="Folder to save the trained model in."),
               seed: int = typer.Option(0), samples: int = typer.Option(480_000, help="Training samples."),
               threads: int = typer.Option(2, help="Torch CPU threads (2 on the 2-core reference machine)."),
               batch_size: int = typer.Option(32), lr: float = typer.Option(1e-3),
               warmup_steps: int = typer.Option(100),
               init_from: Optional[Path] = typer.Option(None, help="Continue from this model's weights."),
               count_questions: str = typer.Option("any", help="'any' or 'mostly_present' (curriculum phase 1)."),
               mix: Optional[str] = typer.Option(None, help="Task mix, e.g. 'vqa=0.55,caption=0.15,"
                                                            "style_caption=0.1,list=0.15,unsafe=0.05'.")):
    """Train shapes-llava from scratch on the shapes world (CPU only; about 40 minutes on 2 cores)."""
    from vlmsteer.demo.train import TrainConfig, train_demo_model

    _quiet_transformers()
    if count_questions not in ("any", "mostly_present"):
        raise VlmsteerError(f"--count-questions must be 'any' or 'mostly_present', got {count_questions!r}")
    cfg = TrainConfig(seed=seed, samples=samples, threads=threads, batch_size=batch_size, lr=lr,
                      warmup_steps=warmup_steps, init_from=str(init_from) if init_from else None,
                      count_questions=count_questions)
    if mix:
        try:
            cfg.mix = {k.strip(): float(v) for k, v in (part.split("=") for part in mix.split(","))}
        except ValueError:
            raise VlmsteerError(f"--mix expects task=weight pairs, got {mix!r}") from None
        unknown = set(cfg.mix) - {"vqa", "caption", "style_caption", "list", "unsafe"}
        if unknown:
            raise VlmsteerError(f"--mix: unknown task(s) {sorted(unknown)}")
    record = train_demo_model(out, cfg, log=lambda line: out_console.print(line, highlight=False))
    out_console.print(f"trained in {record['train_seconds']:.0f} s; saved to {out}")


# --------------------------------------------------------------------------- entry point
INTERRUPTED = 130


def _error(message: str, code: int = 2) -> int:
    err_console.print(f"error: {' '.join(str(message).split())}", highlight=False, markup=False, soft_wrap=True)
    return code


def _interrupted() -> int:
    err_console.print("interrupted: finished work is kept; rerun the same command to resume "
                      "(an extraction store continues from its last complete shard)", highlight=False, soft_wrap=True)
    return INTERRUPTED


def _is(exc: BaseException, name: str) -> bool:
    """Whether ``exc`` is a click-family exception called ``name``: matched by class name, so
    click's own classes and the copies typer vendors (typer >= 0.29) are both recognized."""
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors become one ``error: ...`` line and exit code 2;
    Ctrl-C exits with 130 and a line saying how to resume."""
    from vlmsteer.hooks import PositionError

    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="vlmsteer", standalone_mode=False)
    except VlmsteerError as exc:
        return _error(str(exc), exc.exit_code)
    except PositionError as exc:  # steering cannot tell where it is: never a silent no-op
        return _error(f"steering stopped: {exc}", 1)
    except KeyboardInterrupt:
        return _interrupted()
    except OSError as exc:
        if exc.filename is None:
            raise
        return _error(f"{exc.filename}: {exc.strerror or exc}")
    except Exception as exc:
        if _is(exc, "NoArgsIsHelpError"):  # a bare `vlmsteer` or group: show the help
            exc.show()
            return 2
        if _is(exc, "Exit"):
            code = int(getattr(exc, "exit_code", 0) or 0)
            return _interrupted() if code == INTERRUPTED else code
        if _is(exc, "Abort"):  # click < 8.2 / typer < 0.29 turn Ctrl-C into Abort
            return _interrupted()
        if _is(exc, "ClickException"):
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None and _is(exc, "UsageError") else ""
            return _error(exc.format_message() + hint, 2 if _is(exc, "UsageError") else 1)
        raise
    # typer >= 0.29 turns Ctrl-C into Exit(130), which non-standalone mode returns as a value
    if result == INTERRUPTED:
        return _interrupted()
    return result if isinstance(result, int) else 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
