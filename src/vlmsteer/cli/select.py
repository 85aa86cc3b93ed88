"""``vlmsteer select``: rank candidate vectors by the paper's selection metric."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vlmsteer.cli.common import (
    _ACTIVE,
    _ALLOW_OTHER_MODEL,
    _ALLOW_OUTSIDE,
    _ALPHA,
    _BATCH,
    _CONCEPT,
    _CONDITION_LAYER,
    _CONDITION_STORE,
    _DEVICE,
    _DEVICE_MAP,
    _DICTIONARY,
    _DTYPE,
    _MAX_PIXELS,
    _OVERWRITE,
    _REGION,
    _SEED,
    _SPLIT,
    _VQA_TOKENS,
    _condition_identity,
    _condition_spec,
    _load_samples,
    app,
    command_identity,
    command_run_json,
    out_console,
)
from vlmsteer.cli.engine import _ENGINE, _engine
from vlmsteer.runs.models import load_model
from vlmsteer.runs.protocol import claim, publish


@app.command()
def select(model: str = typer.Option(..., help="Hub id, model folder, or shapes-llava."),
           data: Path = typer.Option(..., help="VQAv2 folder."),
           vectors: Path = typer.Option(..., help="File of candidate vectors (e.g. from vectors concepts)."),
           out: Path = typer.Option(Path("runs/select"), help="Output folder."),
           alpha: float = _ALPHA, region: str = _REGION("last_prompt", "the position that predicts the answer"),
           top_n: int = typer.Option(5, min=2, help="Answers kept per vector before the 2-means split."),
           relative_to: str = typer.Option("base", help="Answer increase relative to its baseline count "
                                                       "('base', (s-b)/(b+1), the paper's) or to all answers "
                                                       "('total', points of share); selection.json has both."),
           distinct: bool = typer.Option(True, "--distinct/--no-distinct",
                                         help="Show only the best vector per set of primary answers."),
           split: str = _SPLIT,
          limit: Optional[int] = typer.Option(500, min=1, help="Use a seeded random subset of this many questions."),
           seed: int = _SEED(), batch_size: int = _BATCH(64),
           show: int = typer.Option(15, min=1, help="Rows of the printed ranking."),
           max_new_tokens: int = _VQA_TOKENS,
           dictionary: Optional[Path] = _DICTIONARY, concept: Optional[list[str]] = _CONCEPT,
           condition_store: Optional[Path] = _CONDITION_STORE, active: Optional[str] = _ACTIVE,
           condition_layer: Optional[int] = _CONDITION_LAYER, dtype: str = _DTYPE,
           device: str = _DEVICE, device_map: Optional[str] = _DEVICE_MAP,
           allow_outside_images: bool = _ALLOW_OUTSIDE, max_image_pixels: int = _MAX_PIXELS,
           allow_other_model: bool = _ALLOW_OTHER_MODEL, overwrite: bool = _OVERWRITE, engine: str = _ENGINE):
    """Rank candidate steering vectors with the paper's selection metric."""
    from vlmsteer.data.identity import dataset_identity
    from vlmsteer.runs.select import rank_vectors, write_selection
    from vlmsteer.steer.vector import load_vectors

    engine = _engine(engine)
    condition = _condition_spec(dictionary, concept, condition_store, active, layer=condition_layer)
    candidates = load_vectors(vectors)
    with publish(out, overwrite) as pub:
        samples = _load_samples("vqav2", data, split=split, limit=limit, seed=seed,
                                allow_outside_images=allow_outside_images, max_image_pixels=max_image_pixels)
        vlm = load_model(model, None, dtype, device, device_map, max_image_pixels=max_image_pixels)
        for vec in candidates.values():
            vec.check_model(vlm, allow_other_model=allow_other_model)
        first_layers = [min(v.layers) for v in candidates.values()]
        claim(pub, command_identity(model=vlm.identity, data=dataset_identity(samples),
                                  vectors={k: v.digest() for k, v in candidates.items()},
                                  condition=_condition_identity(condition, vlm, first_layers, allow_other_model)))
        result = rank_vectors(vlm, samples, candidates, alpha=alpha, region=region, top_n=top_n,
                              relative_to=relative_to, distinct=distinct, batch_size=batch_size,
                              max_new_tokens=max_new_tokens, condition=condition, progress=True, engine=engine)
        write_selection(result, pub.stage)
        command_run_json(pub, model_id=vlm.model_id, revision=vlm.revision)
    results = result["ranking"]
    table = Table(title=f"{len(results)} vectors ranked by the selection metric")
    for col in ("rank", "vector", "from", "to", "score", "primary answers"):
        table.add_column(col)
    for i, r in enumerate(results[:show], 1):
        table.add_row(str(i), r["name"], str(r["source"]), str(r["target"]), f"{r['score']:.2f}",
                      ", ".join(r["primary"]))
    out_console.print(table)
