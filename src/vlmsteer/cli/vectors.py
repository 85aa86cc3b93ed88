"""``vlmsteer vectors coarse|concepts``: steering vectors from stores and dictionaries."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vlmsteer.cli.common import _ALLOW_PARTIAL, _OVERWRITE, _SEED, _parse_layers, out_console, vectors_app
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
