"""``vlmsteer extract``, ``concepts`` and ``separability``: features and what they hold."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vlmsteer.cli.common import (_ADAPTER, _ALLOW_OUTSIDE, _ALLOW_PARTIAL, app, _BATCH, _checked_device, _DEVICE,
                                 _DEVICE_MAP, _DTYPE, _IMAGES, _load_samples, _MAX_NEW_TOKENS, _MAX_PIXELS,
                                 err_console, out_console, _OVERWRITE, _parse_layers, _PROMPT, command_identity,
                                 _SEED, _SPLIT, store_app, command_run_json)
from vlmsteer.runs.models import load_model, open_store
from vlmsteer.runs.protocol import claim, publish, rank_and_world
from vlmsteer.cli.common import registry_option
from vlmsteer.cli.engine import _engine, _ENGINE
from vlmsteer.concepts.methods import CONCEPT_METHODS
from vlmsteer.data.formats import DATA_FORMATS
from vlmsteer.positions import SELECTORS
from vlmsteer.errors import VlmsteerError


@app.command()
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


@app.command()
def concepts(store: Path = typer.Argument(..., help="Feature store folder."),
             out: Path = typer.Option(..., help="Output folder."),
             method: str = registry_option("kmeans", registry=CONCEPT_METHODS, intro="Clustering methods take -k, "
                                           "sparse autoencoders --latents and --l0.",
                                           where=lambda e: e.value.family != "paired"),
             k: int = typer.Option(20, "-k", "--k", min=1, help="Number of concepts (clustering methods)."),
             latents: Optional[int] = typer.Option(None, min=1, help="SAE latents (default 1024)."),
             l0: int = typer.Option(32, min=1, help="SAE: active latents per row (TopK's k; the target L0 of "
                                                    "the others)."),
             epochs: Optional[int] = typer.Option(None, min=1, help="SAE: passes over the rows (default: enough "
                                                                    "for about 1000 steps, at most 50)."),
             batch_size: int = typer.Option(1024, min=1, help="SAE: rows per training step."),
             lr: Optional[float] = typer.Option(None, min=0, help="SAE: Adam learning rate (default "
                                                                  "2e-4 / sqrt(latents / 16384))."),
             train_dtype: str = typer.Option("float32", help="SAE: float32, or bfloat16 for the encoder product."),
             held_out: float = typer.Option(0.1, min=0, max=0.9, help="Fraction of rows kept out of the fit; "
                                                                      "FVU, L0, dead and dense are measured on them."),
             saelens: bool = typer.Option(False, "--saelens", help="SAE: also write it as an SAELens folder "
                                                                   "(OUT/saelens: cfg.json + sae_weights.safetensors)."),
             report_concepts: int = typer.Option(64, min=1, help="SAE: concept cards in report.html (the most "
                                                                 "used; every concept is in concepts.json)."),
             layer: Optional[int] = typer.Option(None, help="Model layer to use (negative counts from the model's "
                                                             "end; default: the deepest layer in the store)."),
             model: Optional[str] = typer.Option(None, help="Model for word grounding (default: the store's)."),
             no_words: bool = typer.Option(False, "--no-words", help="Skip word grounding and the splice cost (no "
                                                                     "model needed)."),
             splice_samples: int = typer.Option(100, min=0, help="Responses of the store the model re-reads "
                                                                 "with the reconstruction spliced in (loss "
                                                                 "recovered; 0: skip; loads the whole model)."),
             top_words: int = typer.Option(15, min=1, help="Words per concept."),
             top_images: int = typer.Option(8, min=0, help="Most activating images per concept (0: none)."),
             seed: int = _SEED(),
             backend: str = typer.Option("auto", help="K-Means: sklearn (reference, n_init 10), torch (chunked, "
                                                       "bounded memory), faiss (optional extra: a sample of 256 "
                                                       "rows per concept) or auto (sklearn up to 2^25 values)."),
             dtype: str = _DTYPE, device: str = typer.Option("cpu", callback=_checked_device,
                                                             help="Device for the grounding model and the torch "
                                                                  "K-Means backend."),
             device_map: Optional[str] = _DEVICE_MAP,
             allow_partial: bool = _ALLOW_PARTIAL, overwrite: bool = _OVERWRITE):
    """Learn concepts from stored features; ground them in words and images; measure the splice cost;
    write an HTML report."""
    from vlmsteer.runs.concepts import concepts as run

    result = run(store, out, method=method, k=k, latents=latents, l0=l0, epochs=epochs, batch_size=batch_size, lr=lr,
                 train_dtype=train_dtype, held_out=held_out, saelens=saelens, report_concepts=report_concepts,
                 layer=layer, model=model, no_words=no_words, splice_samples=splice_samples, top_words=top_words,
                 top_images=top_images, seed=seed, backend=backend, dtype=dtype, device=device,
                 device_map=device_map, allow_partial=allow_partial, overwrite=overwrite,
                 note=lambda line: err_console.print(line))
    n, absolute, sae = result["k"], result["layer"], CONCEPT_METHODS.get(method).family == "sae"
    table = Table(title=f"{n} {method} concepts, layer {absolute}"
                        + (f" (the {report_concepts} most used)" if sae and n > report_concepts else ""))
    table.add_column("#", justify="right")
    table.add_column("size", justify="right")
    table.add_column("words")
    for c in sorted(result["concepts"], key=lambda c: -c["size"])[:report_concepts] if sae else result["concepts"]:
        table.add_row(str(c["index"]), str(c["size"]), ", ".join(c["words"][:8]))
    out_console.print(table)
    q = result["quality"]
    out_console.print(f"{q['rows']} rows ({q['n_rows']}): FVU {q['fvu']:.4f}, L0 {q['l0']:.1f}, dead "
                      f"{100 * q['dead']:.1f} %, dense {100 * q['dense']:.1f} %")
    if result["splice"]:
        c = result["splice"]
        out_console.print(f"splice at layer {absolute} ({c['positions']}, {c['n_samples']} responses, {c['n_tokens']} "
                          f"tokens): cross-entropy {c['clean']:.4f} clean, {c['spliced']:.4f} spliced, {c['zero']:.4f} "
                          f"zeroed; loss recovered {100 * c['loss_recovered']:.1f} %")
    out_console.print(f"wrote {out}/report.html, {out}/concepts.json, {out}/dictionary.safetensors"
                      + (f", {out}/saelens" if saelens else ""))


@app.command("separability")
def separability_cmd(store: Path = typer.Argument(..., help="Feature store folder (extract several layers)."),
                     out: Path = typer.Option(..., help="Output folder."),
                     label: str = typer.Option("answer", help="Record field to predict (e.g. answer, "
                                                              "answer_type, meta.style)."),
                     layer: Optional[list[str]] = typer.Option(None, help="Layers (default: all in the store)."),
                     top: Optional[int] = typer.Option(None, min=2, help="Keep only the most frequent labels "
                                                                    "(default: every label with --folds samples); "
                                                                    "the samples left out are counted and printed."),
                     folds: int = typer.Option(5, min=2, help="Cross-validation folds."),
                     seed: int = _SEED(),
                     allow_partial: bool = _ALLOW_PARTIAL, overwrite: bool = _OVERWRITE):
    """Per-layer linear-probe accuracy and PCA plots of features coloured by a label (PNG + JSON)."""
    from vlmsteer.analysis.separability import separability
    from vlmsteer.report.plots import write_separability

    with publish(out, overwrite) as pub:
        st = open_store(store, allow_partial)
        claim(pub, command_identity(store=st.fingerprint))
        result = separability(st, label=label, layers=_parse_layers(layer) if layer else None, top=top, folds=folds,
                              seed=seed)
        write_separability(st, result, pub.stage, seed=seed)
        command_run_json(pub, model_id=st.header.get("model_id"))
    table = Table(title=f"linear separability of {label!r} ({result.n_samples} samples, "
                        f"{len(result.labels)} labels; majority class {result.majority_baseline:.1f} %)")
    for col in ("layer", "probe accuracy %", "PCA variance (2 comps)"):
        table.add_column(col, justify="right")
    for r in result.layers:
        table.add_row(str(r.layer), f"{r.probe_accuracy:.1f} ± {r.probe_accuracy_std:.1f}",
                      f"{sum(r.pca_explained):.2f}")
    out_console.print(table)
    if result.n_samples < result.n_labelled:
        why = f"the {top} most frequent labels with" if top else "labels with"
        out_console.print(f"left out {result.n_labelled - result.n_samples} of {result.n_labelled} samples "
                          f"({result.left_out_labels} labels): the probe uses {why} at least {folds} samples "
                          f"(--folds)", highlight=False)
    out_console.print(f"wrote {out}/report.html, {out}/separability.json, {out}/probe_accuracy.png, "
                      f"{out}/pca_layers.png")




@store_app.command("import")
def store_import(features: Path = typer.Option(..., help="(N, D) features: .npy or .safetensors (one tensor)."),
                 records: Path = typer.Option(..., help="JSONL with one record (an object with an 'id') per row."),
                 layer: int = typer.Option(..., help="Model layer the features come from."),
                 out: Path = typer.Option(..., help="Store folder to write."),
                 num_layers: Optional[int] = typer.Option(None, help="The model's number of layers (default "
                                                                      "layer + 1)."),
                 model: Optional[str] = typer.Option(None, help="Model id, for word grounding later.")):
    """Make a store from features extracted by another tool (float16 stays float16)."""
    from vlmsteer.store_io import import_features

    st = import_features(features, records, layer, out, num_layers=num_layers, model_id=model, progress=True)
    out_console.print(f"{len(st)} samples × {st.hidden_size} ({st.layer_arrays(st.layers[0])[0].dtype}), "
                      f"layer {st.layers[0]} -> {out}")


@store_app.command("export")
def store_export(store: Path = typer.Argument(..., help="Feature store folder."),
                 layer: int = typer.Option(..., help="Layer to export."),
                 features: Path = typer.Option(..., help="Output array: .npy or .safetensors."),
                 records: Path = typer.Option(..., help="Output records JSONL."),
                 allow_partial: bool = _ALLOW_PARTIAL, overwrite: bool = _OVERWRITE):
    """Write one layer of a store as an (N, D) array and its records as JSONL."""
    from vlmsteer.store_io import export_features

    if features.resolve() == records.resolve():
        raise VlmsteerError(f"--features and --records name the same file ({features}); give two files")
    for path in (features, records):
        if path.exists() and not overwrite:
            raise VlmsteerError(f"{path}: already exists; choose another file, or overwrite it", "overwrite")
    n = export_features(open_store(store, allow_partial), layer, features, records)
    out_console.print(f"{n} rows -> {features}, {records}")
