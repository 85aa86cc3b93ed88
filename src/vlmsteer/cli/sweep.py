"""``vlmsteer sweep``: layers x alphas x regions x samples, or a dictionary edit's values."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vlmsteer.cli.common import (
    _ACTIVE,
    _ADAPTER,
    _ALLOW_OTHER_MODEL,
    _ALLOW_OUTSIDE,
    _ALLOW_PARTIAL,
    _ANSWERS_FORMAT,
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
    _LATENT,
    _MAX_PIXELS,
    _OVERWRITE,
    _SEED,
    _SPLIT,
    _VQA_TOKENS,
    _condition_identity,
    _condition_spec,
    _edit_spec,
    _load_samples,
    _steering,
    app,
    command_identity,
    command_run_json,
    out_console,
)
from vlmsteer.cli.engine import _ENGINE, _engine
from vlmsteer.errors import VlmsteerError
from vlmsteer.runs.models import load_model, open_store
from vlmsteer.runs.protocol import claim, publish


@app.command()
def sweep(model: str = typer.Option(..., help="Hub id, model folder, or shapes-llava."),
          adapter: Optional[Path] = _ADAPTER,
          data: Path = typer.Option(..., help="VQAv2 folder with held-out questions, or a dataset of --format."),
          fmt: str = _ANSWERS_FORMAT(),
          store: Optional[Path] = typer.Option(None, help="Feature store to build the coarse vector from (not "
                                                          "with --edit-dictionary)."),
          source: str = typer.Option(..., help="Source filter, e.g. 'answer=yes'."),
          target: str = typer.Option(..., help="Target filter, e.g. 'answer=no'."),
          out: Path = typer.Option(Path("runs/sweep"), help="Output folder."),
          layers: Optional[str] = typer.Option(None, help="Comma-separated layers (default -1; a dictionary "
                                                          "edit: the dictionary's layer)."),
          alphas: str = typer.Option("0.5,1,2", help="Comma-separated alphas; with --edit clamp|scale, the "
                                                     "values or factors."),
          regions: str = typer.Option("last_prompt", help="Comma-separated regions."),
          n_samples: str = typer.Option("all", help="Comma-separated samples per side ('all' = every one)."),
          split: str = _SPLIT,
          limit: Optional[int] = typer.Option(500, min=1, help="Use a seeded random subset of this many questions."),
          seed: int = _SEED(), batch_size: int = _BATCH(64), max_new_tokens: int = _VQA_TOKENS,
          allow_partial: bool = _ALLOW_PARTIAL,
          dictionary: Optional[Path] = _DICTIONARY, concept: Optional[list[str]] = _CONCEPT,
          condition_store: Optional[Path] = _CONDITION_STORE, active: Optional[str] = _ACTIVE,
          condition_layer: Optional[int] = _CONDITION_LAYER,
          edit_dictionary: Optional[Path] = _EDIT_DICTIONARY, edit: str = _EDIT,
          latent: Optional[list[str]] = _LATENT, dtype: str = _DTYPE,
          device: str = _DEVICE, device_map: Optional[str] = _DEVICE_MAP,
          allow_outside_images: bool = _ALLOW_OUTSIDE, max_image_pixels: int = _MAX_PIXELS,
          allow_other_model: bool = _ALLOW_OTHER_MODEL, overwrite: bool = _OVERWRITE, engine: str = _ENGINE,
          visual: bool = typer.Option(False, "--visual", help="Sweep visual steering (per sample, the image's "
                                                              "residual minus a blank image's; see eval "
                                                              "--visual-alpha) over layers × alphas × regions.")):
    """Sweep a coarse vector over layers × alphas × regions × samples, a dictionary edit
    (--edit-dictionary) over values × regions, or visual steering (--visual) over layers × alphas ×
    regions; one table and one PNG."""
    from vlmsteer.data.filters import Filter
    from vlmsteer.data.identity import dataset_identity
    from vlmsteer.positions import Region
    from vlmsteer.report.plots import write_sweep
    from vlmsteer.runs.sweep import SweepGrid, run_sweep
    from vlmsteer.steer.vector import check_same_model

    engine = _engine(engine)
    source_filter, target_filter = Filter.parse(source), Filter.parse(target)
    condition = _condition_spec(dictionary, concept, condition_store, active, allow_partial, condition_layer)
    edit_spec = _edit_spec(edit_dictionary, edit, latent, 0.0)
    if [store is not None, edit_spec is not None, visual].count(True) != 1:
        raise VlmsteerError("sweep a coarse vector (--store), a dictionary edit (--edit-dictionary) or visual "
                            "steering (--visual): one of them")
    if visual and (condition is not None or n_samples != "all"):
        raise VlmsteerError("--visual builds no vector: it takes neither a condition nor --n-samples")
    alpha_values = _sweep_values(alphas, "--alphas", float)
    sample_counts = _sweep_values(n_samples, "--n-samples", lambda x: None if x == "all" else int(x))
    if any(n is not None and n < 1 for n in sample_counts):
        raise VlmsteerError(f"--n-samples needs positive counts or 'all', got {n_samples!r}")
    region_values = [Region.parse(x) for x in _sweep_values(regions, "--regions", str)]
    layer_values = _sweep_values(layers or "-1", "--layers", int)
    with publish(out, overwrite) as pub:
        st = open_store(store, allow_partial) if store is not None else None
        vlm = load_model(model, adapter, dtype, device, device_map, max_image_pixels=max_image_pixels)
        edit_steering = _steering(vlm, None, None, 0.0, [layers] if layers else None, region_values[0],
                                  condition, allow_other_model, edit_spec) if edit_spec else None
        if st is not None:
            if st.hidden_size != vlm.hidden_size:
                raise VlmsteerError(f"{store}: features of size {st.hidden_size} but {vlm.model_id} has hidden size "
                                    f"{vlm.hidden_size}")
            check_same_model(st.header.get("model"), vlm, f"store {store}", allow_other_model)
        grid = SweepGrid(layers=[vlm.layer_index(x) for x in layer_values], alphas=alpha_values,
                         regions=region_values, n_samples=sample_counts)
        samples = _load_samples(fmt, data, split=split, limit=limit, seed=seed,
                                allow_outside_images=allow_outside_images, max_image_pixels=max_image_pixels)
        claim(pub, command_identity(model=vlm.identity, data=dataset_identity(samples),
                                  store=st.fingerprint if st is not None else None,
                                  edit=edit_steering.identity() if edit_steering else None, visual=visual,
                                  condition=_condition_identity(condition, vlm, grid.layers, allow_other_model)))
        result = run_sweep(vlm, st, source_filter, target_filter, samples, grid, batch_size=batch_size,
                           max_new_tokens=max_new_tokens, seed=seed, condition=condition, progress=True,
                           edit=edit_steering, engine=engine, visual=visual)
        write_sweep(result, pub.stage)
        command_run_json(pub, model_id=vlm.model_id, revision=vlm.revision)
    types = list(result["baseline_accuracy"])
    table = Table(title=f"sweep: {source} -> {target} ({result['n']} questions)")
    strength = {"clamp": "value", "scale": "factor"}.get((result["edit"] or {}).get("mode"), "alpha")
    for col in ["layer", strength, "region", "samples", "moved", "changed"] + [f"Δ {t}" for t in types]:
        table.add_column(col)
    for r in result["rows"]:
        moved = "" if r["moved_fraction"] is None else f"{100 * r['moved_fraction']:.1f} %"
        table.add_row(str(r["layer"]), str(r["alpha"]), r["region"], str(r["vector_samples"] or ""), moved,
                      str(r["changed"]), *[f"{r['accuracy_delta'][t]:+.2f}" for t in types])
    out_console.print(table)
    out_console.print(f"wrote {out}/sweep.json, {out}/sweep.png")


def _sweep_values(text: str, option: str, parse) -> list:
    """Comma-separated values of a sweep option, each parsed; a one-line error otherwise."""
    parts = [x.strip() for x in text.split(",")]
    try:
        values = [parse(x) for x in parts if x]
    except ValueError:
        raise VlmsteerError(f"{option}: bad value in {text!r}") from None
    if not values:
        raise VlmsteerError(f"{option}: give at least one value")
    if parse is float and not all(math.isfinite(v) for v in values):
        raise VlmsteerError(f"{option}: values must be finite numbers, got {text!r}")
    return values
