"""``vlmsteer separability``: per-layer linear probes and PCA plots of a store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vlmsteer.cli.common import (
    _ALLOW_PARTIAL,
    _OVERWRITE,
    _SEED,
    _parse_layers,
    app,
    command_identity,
    command_run_json,
    out_console,
)
from vlmsteer.runs.models import open_store
from vlmsteer.runs.protocol import claim, publish


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
