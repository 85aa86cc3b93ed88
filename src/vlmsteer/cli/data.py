"""``vlmsteer info`` and ``vlmsteer data shapes|check``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vlmsteer.cli.common import (_ALLOW_OUTSIDE, app, data_app, _DEVICE, _DEVICE_MAP, _DTYPE, err_console, _IMAGES,
                                 _LIMIT, _MAX_PIXELS, out_console, _OVERWRITE, command_identity, _SEED, _SPLIT,
                                 command_run_json)
from vlmsteer.runs.models import load_model
from vlmsteer.runs.protocol import claim, publish
from vlmsteer.cli.common import registry_argument
from vlmsteer.data.formats import DATA_FORMATS
from vlmsteer.errors import VlmsteerError


@app.command()
def info(model: str = typer.Argument(..., help="Hub id, model folder, or shapes-llava."),
         adapter: Optional[Path] = typer.Option(None, help="LoRA adapter folder."),
         trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                                help="Allow the model's own code to run."),
         dtype: str = _DTYPE, device: str = _DEVICE, device_map: Optional[str] = _DEVICE_MAP):
    """Print a model's architecture, layer count, hidden size, vocabulary size and image-token count."""
    from vlmsteer.evaluate.runinfo import version_warnings, versions

    vlm = load_model(model, adapter, dtype, device, device_map, trust_remote_code=trust_remote_code)
    table = Table(show_header=False)
    for k, v in vlm.describe().items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    for name, version in versions().items():
        table.add_row(name, version)
    out_console.print(table)
    for line in version_warnings():
        err_console.print(f"warning: {line}", highlight=False, soft_wrap=True)


@data_app.command("shapes")
def data_shapes(out: Path = typer.Option(..., help="Output folder."),
                n: int = typer.Option(1000, min=1, help="Number of scenes (images)."),
                seed: int = _SEED(0, "World seed; the demo model was trained on seed 1000."),
                split: str = typer.Option("val2014", help="Split name used in the file names."),
                start: int = typer.Option(0, min=0, help="Index of the first scene."),
                overwrite: bool = _OVERWRITE):
    """Generate shapes-world scenes in the official VQAv2 and COCO caption formats."""
    from vlmsteer.data import shapes
    from vlmsteer.progress import progress_bar

    if n < 1:
        raise VlmsteerError(f"--n must be >= 1, got {n}")
    with publish(out, overwrite) as pub:
        claim(pub, command_identity())
        with progress_bar("rendering scenes", n) as advance:
            paths = shapes.write_dataset(pub.stage, n=n, seed=seed, split=split, start=start, progress=advance)
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


