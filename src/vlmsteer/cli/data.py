"""``vlmsteer data``: generate the shapes world, check dataset files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vlmsteer.cli.common import (
    _ALLOW_OUTSIDE,
    _IMAGES,
    _LIMIT,
    _MAX_PIXELS,
    _OVERWRITE,
    _SEED,
    _SPLIT,
    command_identity,
    command_run_json,
    data_app,
    out_console,
    registry_argument,
    registry_option,
)
from vlmsteer.data import SCENE_KINDS
from vlmsteer.data.formats import DATA_FORMATS
from vlmsteer.errors import VlmsteerError
from vlmsteer.runs.protocol import claim, publish


@data_app.command("shapes")
def data_shapes(out: Path = typer.Option(..., help="Output folder."),
                n: int = typer.Option(1000, min=1, help="Number of scenes (images)."),
                seed: int = _SEED(0, "World seed; the demo model was trained on seed 1000."),
                split: str = typer.Option("val2014", help="Split name used in the file names."),
                start: int = typer.Option(0, min=0, help="Index of the first scene."),
                scenes: str = registry_option("plain", "--scenes", registry=SCENE_KINDS,
                                              intro="Scene kind (cooccurring, pattern-breaking: the hallucination "
                                                    "testbed): "),
                overwrite: bool = _OVERWRITE):
    """Generate shapes-world scenes in the official VQAv2 and COCO caption formats (with COCO
    instances and POPE question files: what CHAIR and POPE read)."""
    from vlmsteer.data import shapes
    from vlmsteer.progress import progress_bar

    if n < 1:
        raise VlmsteerError(f"--n must be >= 1, got {n}")
    with publish(out, overwrite) as pub:
        claim(pub, command_identity())
        with progress_bar("rendering scenes", n) as advance:
            paths = shapes.write_dataset(pub.stage, n=n, seed=seed, split=split, start=start, progress=advance,
                                         scenes=scenes)
        command_run_json(pub)
    for name, p in paths.items():
        out_console.print(f"{name:12s} {out / p.relative_to(pub.stage)}")


@data_app.command("check")
def data_check(fmt: str = registry_argument(..., metavar="FORMAT", registry=DATA_FORMATS),
               path: Path = typer.Argument(..., help="Dataset folder or file."),
               split: str = _SPLIT, images: Optional[Path] = _IMAGES,
               limit: Optional[int] = _LIMIT, seed: int = _SEED(),
               allow_outside_images: bool = _ALLOW_OUTSIDE, max_image_pixels: int = _MAX_PIXELS):
    """Load a dataset, decode every selected image, and summarize it."""
    from collections import Counter

    from vlmsteer.data import load_samples
    from vlmsteer.loading import check_images

    samples = load_samples(fmt, path, split=split, images=images, limit=limit, seed=seed,
                           allow_outside_images=allow_outside_images, max_image_pixels=max_image_pixels)
    decoded = check_images(samples, progress=True, max_pixels=max_image_pixels)
    types = Counter(s.answer_type for s in samples if s.answer_type)
    out_console.print(f"{len(samples)} samples, {decoded} images decoded"
                      + (f"; answer types: {dict(types)}" if types else ""))
    if samples:
        s = samples[0]
        out_console.print(f"first: id={s.id} prompt={s.prompt!r} answer={s.answer!r} "
                          f"captions={len(s.captions)} image={s.image_path}")
