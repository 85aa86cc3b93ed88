"""``vlmsteer diff``: what fine-tuning changed, by any registered diffing method."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vlmsteer.analysis.diffing_methods import DIFF_METHODS
from vlmsteer.cli.common import (
    _ALLOW_PARTIAL,
    _DEVICE,
    _DEVICE_MAP,
    _DTYPE,
    _OVERWRITE,
    _SEED,
    _current_params,
    app,
    out_console,
    registry_option,
)


@app.command()
def diff(original: Path = typer.Option(..., help="Store extracted from the original model."),
         finetuned: Path = typer.Option(..., help="Store extracted from the fine-tuned model (same samples)."),
         out: Path = typer.Option(Path("runs/diff"), help="Output folder."),
         method: str = registry_option("adl", registry=DIFF_METHODS),
         layer: Optional[int] = typer.Option(None, help="Model layer (default: the deepest in the original store)."),
         k: int = typer.Option(10, "-k", "--k", min=1, help="Concepts (--method concepts)."),
         latents: Optional[int] = typer.Option(None, min=1, help="Latents of the crosscoder or SAE (default: 4 × "
                                                                 "hidden size, at most one per 8 samples)."),
         l0: Optional[int] = typer.Option(None, min=1, help="Active latents per sample (default: latents / 8, at "
                                                            "most 32; sae-diff: latents / 32, at most 8)."),
         epochs: Optional[int] = typer.Option(None, min=1, help="Training epochs of the crosscoder or SAE "
                                                                "(default: about 1000 steps)."),
         top_words: int = typer.Option(15, min=1, help="Words of the readout."),
         top_images: int = typer.Option(8, min=0, help="Samples where the readout acts most (a latent's activation, "
                                                       "else the change along its vector)."),
         model: Optional[str] = typer.Option(None, help="Model for word grounding (default: the original's)."),
         no_words: bool = typer.Option(False, "--no-words", help="Skip word grounding (no model is loaded)."),
         seed: int = _SEED(), allow_partial: bool = _ALLOW_PARTIAL, dtype: str = _DTYPE, device: str = _DEVICE,
         device_map: Optional[str] = _DEVICE_MAP, overwrite: bool = _OVERWRITE):
    """What fine-tuning changed, from two models' stores of the same samples: how much (in units
    of the features' spread), a ranked readout (words), the differences as steering vectors, an
    HTML report. The stores' selector is the token region (extract with --selector mean_image,
    mean_text or mean_response)."""
    from vlmsteer.runs.diff import diff as run

    result = run(**_current_params())  # (the same option names)
    absolute = result["layer"]
    out_console.print(f"{method}, layer {absolute}: {'changed' if result['changed'] else 'unchanged'}: readout "
                      f"{result['readout']}, {result['relative_norm']:.3f} of the features' spread (noise floor "
                      f"{result['noise_floor']:.3f}); top words: {', '.join(result['words'][:8])} -> {out}/report.html")
