"""``vlmsteer eval vqa|captions|safety``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vlmsteer.cli.common import (_ALLOW_OUTSIDE, _ALPHA, _BASELINE, _LAYERS, _LIMIT, _NAME, _VECTOR,
                                 _load_model, _steering_context, eval_app, out_console)
from vlmsteer.errors import VlmsteerError


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
    from vlmsteer.evaluate.runinfo import write_run_json

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
    from vlmsteer.evaluate.runinfo import write_run_json

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
    from vlmsteer.evaluate.runinfo import write_run_json
    from vlmsteer.evaluate.runner import generate_responses

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


