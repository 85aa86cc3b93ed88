"""``vlmsteer vectors coarse|concepts``, ``select`` and ``sweep``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vlmsteer.cli.common import (_ACTIVE, _ALLOW_OTHER_MODEL, _ALLOW_OUTSIDE, _ALLOW_PARTIAL, _ALPHA, app, _BATCH,
                                 _CONCEPT, _condition_spec, _CONDITION_STORE, _DEVICE, _DEVICE_MAP, _DICTIONARY,
                                 _DTYPE, _EDIT, _EDIT_DICTIONARY, _edit_spec, _LATENT, _load_samples, _MAX_PIXELS,
                                 out_console, _OVERWRITE, _parse_layers, _REGION, command_identity, _SEED, _steering,
                                 _SPLIT, vectors_app, command_run_json)
from vlmsteer.runs.models import load_model, open_store
from vlmsteer.runs.protocol import claim, publish
from vlmsteer.cli.engine import _engine, _ENGINE
from vlmsteer.errors import VlmsteerError


@vectors_app.command("coarse")
def vectors_coarse(store: Path = typer.Option(..., help="Feature store (source, and target unless --target-store)."),
                   out: Path = typer.Option(..., help="Output .safetensors file."),
                   source: Optional[str] = typer.Option(None, help="Source filter, e.g. 'response=yes'."),
                   target: Optional[str] = typer.Option(None, help="Target filter, e.g. 'response=no'."),
                   target_store: Optional[Path] = typer.Option(None, help="A second store for the target."),
                   layer: Optional[list[str]] = typer.Option(None, help="Layers (default: all in the store)."),
                   max_samples: Optional[int] = typer.Option(None, min=1, help="Use at most this many per side."),
                   seed: int = _SEED(), name: str = typer.Option("vector", help="Name of the vector in the file."),
                   allow_partial: bool = _ALLOW_PARTIAL, overwrite: bool = _OVERWRITE):
    """Coarse vector: mean(target features) - mean(source features)."""
    from vlmsteer.data.filters import as_filter
    from vlmsteer.steer.builders import coarse_vector

    source_filter, target_filter = as_filter(source), as_filter(target)
    a = open_store(store, allow_partial)
    b = open_store(target_store, allow_partial) if target_store else None
    layers = _parse_layers(layer) if layer else None
    vec = coarse_vector(a, source_filter, b, target_filter, layers=layers, max_samples=max_samples, seed=seed)
    _check_vector_file(out, {name: vec}, overwrite)
    vec.save(out, name=name)
    out_console.print(f"{vec.method} vector {vec.source!r} -> {vec.target!r} from {vec.n_source} + {vec.n_target} "
                      f"samples, layers {vec.layers}, |v| = {vec.norm():.2f} -> {out}")


@vectors_app.command("concepts")
def vectors_concepts(dictionary: Path = typer.Option(..., help="dictionary.safetensors from vlmsteer concepts, or "
                                                               "an SAELens folder."),
                     out: Path = typer.Option(..., help="Output .safetensors file."),
                     layer: Optional[int] = typer.Option(None, help="Layer to steer (default: the dictionary's)."),
                     pair: Optional[list[str]] = typer.Option(None, help="Only these pairs 'i->j' (indices or top "
                                                                         "words, e.g. 'circle->square'); repeat."),
                     latent: Optional[list[str]] = typer.Option(None, help="SAE: these latents' decoder directions "
                                                                           "(index or top word), named 'latent:i'; "
                                                                           "repeat."),
                     overwrite: bool = _OVERWRITE):
    """Fine-grained vectors between concepts: 'i->j' = u_j − u_i for every ordered pair (or the
    --pair ones), or a sparse autoencoder's decoder directions (--latent)."""
    from vlmsteer.concepts import load_dictionary
    from vlmsteer.steer.builders import concept_vectors
    from vlmsteer.steer.vector import save_vectors

    d, meta = load_dictionary(dictionary)
    layer = layer if layer is not None else meta.get("layer")
    if layer is None:
        raise VlmsteerError(f"{dictionary}: no layer recorded; pass --layer")
    vecs = concept_vectors(d, int(layer), meta, dictionary, pairs=pair or (), latents=latent or ())
    _check_vector_file(out, vecs, overwrite)
    save_vectors(out, vecs)
    what = "latent directions" if latent else "concept-pair vectors"
    out_console.print(f"{len(vecs)} {what} (layer {layer}) -> {out}")


def _check_vector_file(out: Path, vectors: dict, overwrite: bool) -> None:
    """An existing file at ``out`` holding other vectors is refused unless ``overwrite`` (the
    same vectors again: written again, unchanged)."""
    from vlmsteer.steer.vector import load_vectors

    if overwrite or not out.exists():
        return
    try:
        old = {k: v.digest() for k, v in load_vectors(out).items()}
    except VlmsteerError:
        old = None
    if old != {k: v.digest() for k, v in vectors.items()}:
        raise VlmsteerError(f"{out}: holds other vectors (or another file); choose another output file, or "
                            "overwrite it", "overwrite")


_VQA_TOKENS = typer.Option(3, min=1, help="Tokens generated per answer (short VQA answers need few).")


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


def _condition_identity(spec, vlm, layers, allow_other_model: bool):
    """The digests of the conditions ``spec`` builds at ``layers`` (where steering starts),
    after checking they were made for ``vlm``; None without a condition."""
    if spec is None:
        return None
    digests = {}
    for layer in sorted(set(layers)):
        built = spec.build(layer)
        built.check_model(vlm, allow_other_model)
        digests[str(layer)] = built.digest()
    return digests


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
           condition_store: Optional[Path] = _CONDITION_STORE, active: Optional[str] = _ACTIVE, dtype: str = _DTYPE,
           device: str = _DEVICE, device_map: Optional[str] = _DEVICE_MAP,
           allow_outside_images: bool = _ALLOW_OUTSIDE, max_image_pixels: int = _MAX_PIXELS,
           allow_other_model: bool = _ALLOW_OTHER_MODEL, overwrite: bool = _OVERWRITE, engine: str = _ENGINE):
    """Rank candidate steering vectors with the paper's selection metric."""
    from vlmsteer.evaluate.selection_run import rank_vectors, write_selection
    from vlmsteer.steer.vector import load_vectors

    from vlmsteer.data.identity import dataset_identity

    engine = _engine(engine)
    condition = _condition_spec(dictionary, concept, condition_store, active)
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


@app.command()
def sweep(model: str = typer.Option(..., help="Hub id, model folder, or shapes-llava."),
          data: Path = typer.Option(..., help="VQAv2 folder with held-out questions."),
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
          edit_dictionary: Optional[Path] = _EDIT_DICTIONARY, edit: str = _EDIT,
          latent: Optional[list[str]] = _LATENT, dtype: str = _DTYPE,
          device: str = _DEVICE, device_map: Optional[str] = _DEVICE_MAP,
          allow_outside_images: bool = _ALLOW_OUTSIDE, max_image_pixels: int = _MAX_PIXELS,
          allow_other_model: bool = _ALLOW_OTHER_MODEL, overwrite: bool = _OVERWRITE, engine: str = _ENGINE):
    """Sweep a coarse vector over layers × alphas × regions × samples, or a dictionary edit
    (--edit-dictionary) over values × regions; one table and one PNG."""
    from vlmsteer.evaluate.sweep import SweepGrid, run_sweep
    from vlmsteer.report.plots import write_sweep
    from vlmsteer.data.filters import Filter
    from vlmsteer.positions import Region

    from vlmsteer.data.identity import dataset_identity
    from vlmsteer.steer.vector import check_same_model

    engine = _engine(engine)
    source_filter, target_filter = Filter.parse(source), Filter.parse(target)
    condition = _condition_spec(dictionary, concept, condition_store, active, allow_partial)
    edit_spec = _edit_spec(edit_dictionary, edit, latent, 0.0)
    if (store is None) == (edit_spec is None):
        raise VlmsteerError("sweep a coarse vector (--store) or a dictionary edit (--edit-dictionary): one of them")
    alpha_values = _sweep_values(alphas, "--alphas", float)
    sample_counts = _sweep_values(n_samples, "--n-samples", lambda x: None if x == "all" else int(x))
    if any(n is not None and n < 1 for n in sample_counts):
        raise VlmsteerError(f"--n-samples needs positive counts or 'all', got {n_samples!r}")
    region_values = [Region.parse(x) for x in _sweep_values(regions, "--regions", str)]
    layer_values = _sweep_values(layers or "-1", "--layers", int)
    with publish(out, overwrite) as pub:
        st = open_store(store, allow_partial) if store is not None else None
        vlm = load_model(model, None, dtype, device, device_map, max_image_pixels=max_image_pixels)
        edit_steering = _steering(vlm, None, None, 0.0, [layers] if layers else None, region_values[0],
                                  condition, allow_other_model, edit_spec) if edit_spec else None
        if st is not None:
            if st.hidden_size != vlm.hidden_size:
                raise VlmsteerError(f"{store}: features of size {st.hidden_size} but {vlm.model_id} has hidden size "
                                    f"{vlm.hidden_size}")
            check_same_model(st.header.get("model"), vlm, f"store {store}", allow_other_model)
        grid = SweepGrid(layers=[vlm.layer_index(x) for x in layer_values], alphas=alpha_values,
                         regions=region_values, n_samples=sample_counts)
        samples = _load_samples("vqav2", data, split=split, limit=limit, seed=seed,
                                allow_outside_images=allow_outside_images, max_image_pixels=max_image_pixels)
        claim(pub, command_identity(model=vlm.identity, data=dataset_identity(samples),
                                  store=st.fingerprint if st is not None else None,
                                  edit=edit_steering.identity() if edit_steering else None,
                                  condition=_condition_identity(condition, vlm, grid.layers, allow_other_model)))
        result = run_sweep(vlm, st, source_filter, target_filter, samples, grid, batch_size=batch_size,
                           max_new_tokens=max_new_tokens, seed=seed, condition=condition, progress=True,
                           edit=edit_steering, engine=engine)
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


