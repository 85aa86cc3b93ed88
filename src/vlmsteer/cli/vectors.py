"""``vlmsteer vectors coarse|random|concepts|visual``: steering vectors from stores, dictionaries and images."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vlmsteer.cli.common import (
    _ADAPTER,
    _ALLOW_PARTIAL,
    _BATCH,
    _DEVICE,
    _DTYPE,
    _OVERWRITE,
    _SEED,
    _load_samples,
    _parse_layers,
    out_console,
    registry_option,
    vectors_app,
)
from vlmsteer.data.formats import DATA_FORMATS
from vlmsteer.errors import VlmsteerError
from vlmsteer.runs.models import open_store


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


@vectors_app.command("random")
def vectors_random(like: Path = typer.Option(..., help="The vector file whose control this is."),
                   out: Path = typer.Option(..., help="Output .safetensors file."),
                   name: Optional[str] = typer.Option(None, help="Which vector of --like (default: its only one)."),
                   seed: int = _SEED(), overwrite: bool = _OVERWRITE):
    """The random-vector control: at each layer of --like, a random direction of the same norm;
    steer with it exactly as with --like (same --alpha, --layer, --region, condition)."""
    from vlmsteer.steer.builders import random_control
    from vlmsteer.steer.vector import load_vector

    vec = random_control(load_vector(like, name), seed)
    _check_vector_file(out, {name or "vector": vec}, overwrite)
    vec.save(out, name=name or "vector")
    out_console.print(f"random control of {like} (seed {seed}), layers {vec.layers}, |v| = {vec.norm():.2f} -> {out}")


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


@vectors_app.command("visual")
def vectors_visual(model: str = typer.Option(..., help="Hub id, model folder, or shapes-llava."),
                   data: Path = typer.Option(..., help="Dataset with images (of --format)."),
                   fmt: str = registry_option("vqav2", "--format", registry=DATA_FORMATS),
                   out: Path = typer.Option(..., help="Output .safetensors file."),
                   adapter: Optional[Path] = _ADAPTER,
                   layer: Optional[list[str]] = typer.Option(None, help="Layers (default: every layer)."),
                   method: str = typer.Option("pca", help="pca: the differences' first principal direction, "
                                                          "scaled like their mean (VTI); mean: their mean."),
                   limit: Optional[int] = typer.Option(50, min=2, help="Samples (a few dozen suffice)."),
                   seed: int = _SEED(), batch_size: int = _BATCH(16),
                   name: str = typer.Option("visual", help="Name of the vector in the file."),
                   dtype: str = _DTYPE, device: str = _DEVICE, overwrite: bool = _OVERWRITE):
    """A fixed visual shift direction (VTI-style): per sample, the last prompt token's residual with
    its image minus with a blank image, summarised over the samples; steer with --vector."""
    from vlmsteer.runs.models import load_model
    from vlmsteer.steer.visual import visual_shift_vector

    samples = _load_samples(fmt, data, limit=limit, seed=seed)
    vlm = load_model(model, adapter, dtype, device)
    vec = visual_shift_vector(vlm, samples, _parse_layers(layer) if layer else None, method=method,
                              batch_size=batch_size, progress=True)
    _check_vector_file(out, {name: vec}, overwrite)
    vec.save(out, name=name)
    out_console.print(f"{vec.method} vector from {len(samples)} samples, layers {vec.layers}, |v| = {vec.norm():.2f} "
                      f"-> {out}")


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
