"""``vlmsteer store import|export``: features from and for other tools."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vlmsteer.cli.common import _ALLOW_PARTIAL, _OVERWRITE, out_console, store_app
from vlmsteer.errors import VlmsteerError
from vlmsteer.runs.models import open_store


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
