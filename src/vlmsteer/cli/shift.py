"""``vlmsteer shift``: the paper's fine-tuning shift analysis between two stores."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vlmsteer.analysis.shift import MATCHINGS
from vlmsteer.cli.common import (
    _ALLOW_PARTIAL,
    _DEVICE,
    _DEVICE_MAP,
    _DTYPE,
    _OVERWRITE,
    _SEED,
    _parse_ints,
    app,
    command_identity,
    command_run_json,
    out_console,
    registry_option,
)
from vlmsteer.concepts.methods import CONCEPT_METHODS
from vlmsteer.errors import VlmsteerError
from vlmsteer.runs.models import grounding_identity, load_head, open_store
from vlmsteer.runs.protocol import claim, publish


@app.command()
def shift(original: Path = typer.Option(..., help="Store extracted from the original model."),
          finetuned: Path = typer.Option(..., help="Store extracted from the fine-tuned model (same samples)."),
          out: Path = typer.Option(Path("runs/shift"), help="Output folder."),
          layer: Optional[int] = typer.Option(None, help="Model layer (default: the deepest in the original store)."),
          k: int = typer.Option(10, "-k", "--k", min=1, help="Concepts per model."),
          method: str = registry_option("kmeans", registry=CONCEPT_METHODS,
                                        where=lambda e: e.value.family == "clustering"),
          matching: str = registry_option("hungarian", registry=MATCHINGS),
          checkpoint: Optional[list[str]] = typer.Option(None, help="STEP=STORE of a checkpoint (repeat)."),
          ks: Optional[str] = typer.Option(None, help="Ablation over K, e.g. '5,10,20'."),
          layers: Optional[str] = typer.Option(None, help="Ablation over layers, e.g. '1,2,3'."),
          keywords: Optional[str] = typer.Option(None, help="Fine-tuning keywords: colors, places, sentiments."),
          model: Optional[str] = typer.Option(None, help="Model for word grounding (default: the original's)."),
          no_words: bool = typer.Option(False, "--no-words", help="Skip word grounding (no model needed)."),
          seed: int = _SEED(), allow_partial: bool = _ALLOW_PARTIAL,
          dtype: str = _DTYPE, device: str = _DEVICE, device_map: Optional[str] = _DEVICE_MAP,
          overwrite: bool = _OVERWRITE):
    """Concept matching, shift vectors, recovery, evolution and ablations between two models' stores."""
    from vlmsteer.data.keywords import keyword_set
    from vlmsteer.runs.shift import ShiftConfig, run_shift

    a, b = open_store(original, allow_partial), open_store(finetuned, allow_partial)
    absolute = a.layer_index(layer) if layer is not None else max(a.layers)
    b.layer_index(absolute)
    checkpoints = {}
    for item in checkpoint or []:
        step, _, path = item.partition("=")
        if not step.strip().isdigit() or not path:
            raise VlmsteerError(f"--checkpoint expects STEP=STORE, got {item!r}")
        checkpoints[int(step)] = open_store(Path(path), allow_partial)
    cfg = ShiftConfig(layer=absolute, k=k, method=method, matching=matching, seed=seed,
                      keywords=keyword_set(keywords) if keywords else None)
    k_values = _parse_ints(ks, "--ks") if ks else []
    if any(v < 1 for v in k_values + [k]):
        raise VlmsteerError(f"-k and --ks need positive integers, got {[k] + k_values}")
    layer_values = [a.layer_index(v) for v in _parse_ints(layers, "--layers")] if layers else []
    from vlmsteer.store import check_paired

    for other in [b, *checkpoints.values()]:
        check_paired(a, other, "a fine-tuning shift", same_samples=True)
    with publish(out, overwrite) as pub:
        vlm = None if no_words else load_head(model or a.header["model_id"], dtype, device, device_map)
        claim(pub, command_identity(original=a.fingerprint, finetuned=b.fingerprint,
                                  checkpoints={str(k): v.fingerprint for k, v in checkpoints.items()},
                                  grounding=grounding_identity(vlm, a)))
        result = run_shift(a, b, pub.stage, cfg, vlm=vlm, checkpoints=checkpoints, ks=k_values, layers=layer_values)
        command_run_json(pub, model_id=a.header.get("model_id"))
    m = result["main"]
    out_console.print(f"mean recovery cosine: alpha 0 = {m['mean_recovery_alpha0']:.3f}, "
                      f"alpha 1 = {m['mean_recovery_alpha1']:.3f}; wrote {out}/shift.json, {out}/report.html")
