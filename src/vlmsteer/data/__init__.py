"""Datasets: one :class:`Sample` record type, loaders behind one registry of formats
(:data:`DATA_FORMATS`, see :mod:`vlmsteer.data.formats`) and the built-in shapes world."""

from __future__ import annotations

from pathlib import Path

from vlmsteer.data.coco import load_coco_captions
from vlmsteer.data.filters import Filter, as_filter
from vlmsteer.data.formats import DATA_FORMATS, DatasetFormat
from vlmsteer.data.identity import DEFAULT_MAX_IMAGE_PIXELS, fingerprint_samples
from vlmsteer.data.io import collector_paused
from vlmsteer.data.jsonl import load_jsonl
from vlmsteer.data.safety import load_figstep, load_mm_safetybench
from vlmsteer.data.sample import Sample, subsample
from vlmsteer.data.shapes_scenes import SCENE_KINDS  # (registers the hallucination testbed's scene kinds)
from vlmsteer.data.vqav2 import load_vqav2
from vlmsteer.errors import VlmsteerError

__all__ = ["Sample", "Filter", "DATA_FORMATS", "SCENE_KINDS", "DatasetFormat", "load_samples", "load_vqav2",
           "load_coco_captions",
           "load_jsonl", "load_mm_safetybench", "load_figstep", "subsample"]


def load_samples(fmt: str, path: str | Path, *, split: str = "val2014", images: str | Path | None = None,
                 limit: int | None = None, seed: int = 0, prompt: str | None = None,
                 allow_outside_images: bool = False, where: Filter | str | None = None,
                 max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> list[Sample]:
    """Load any supported format; ``prompt`` overrides the caption prompt (COCO) or is a
    ``{question}`` template (VQAv2); for MM-SafetyBench ``split`` names the image type
    (SD, SD_TYPO or TYPO; default SD_TYPO). Image paths written in a dataset file must stay
    inside its folder unless ``allow_outside_images``. ``where`` keeps the samples that match
    a filter, before the seeded ``limit`` subset is drawn. An empty selection is an error.

    Every selected sample gets its content digest (text and image bytes, see
    :mod:`vlmsteer.data.identity`); images must be regular files of at most
    ``max_image_pixels`` pixels (None: no limit), checked from their headers."""
    where = as_filter(where)
    with collector_paused():
        samples = _load(fmt, path, split=split, images=images, limit=None if where else limit, seed=seed,
                        prompt=prompt, allow_outside_images=allow_outside_images)
        if where is not None:
            samples = subsample(where.samples(samples), limit, seed)
    if where is not None and not samples:
        raise VlmsteerError(f"{path}: no sample matches the filter {where}")
    if not samples:
        raise VlmsteerError(f"{path}: no samples" + (" selected (limit 0)" if limit == 0 else " in this dataset"))
    fingerprint_samples(samples, max_image_pixels)
    return samples


def _load(fmt: str, path: str | Path, **options) -> list[Sample]:
    return DATA_FORMATS.get(fmt).load(path, **options)
