"""``vlmsteer concepts``: a concept dictionary of a store, grounded and reported."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vlmsteer.cli.common import (
    _ALLOW_PARTIAL,
    _DEVICE_MAP,
    _DTYPE,
    _OVERWRITE,
    _SEED,
    _checked_device,
    _current_params,
    app,
    err_console,
    out_console,
    registry_option,
    resumes,
)
from vlmsteer.concepts.methods import CONCEPT_METHODS


@app.command()
@resumes("a sparse autoencoder trains on from its last checkpoint; other methods start again")
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

    result = run(**_current_params(), note=lambda line: err_console.print(line))  # (the same option names)
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
