"""Datasets: one :class:`Sample` record type and loaders for VQAv2, COCO captions, JSONL and
the built-in shapes world."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from vlmsteer.data.coco import load_coco_captions
from vlmsteer.data.filters import Filter, as_filter
from vlmsteer.data.identity import DEFAULT_MAX_IMAGE_PIXELS, fingerprint_samples
from vlmsteer.data.io import collector_paused
from vlmsteer.data.jsonl import load_jsonl
from vlmsteer.data.safety import MM_SAFETYBENCH_IMAGE_TYPES, load_figstep, load_mm_safetybench
from vlmsteer.data.sample import Sample, subsample
from vlmsteer.data.vqav2 import load_vqav2
from vlmsteer.errors import VlmsteerError

__all__ = ["Sample", "Filter", "DataFormat", "load_samples", "load_vqav2", "load_coco_captions", "load_jsonl", "load_mm_safetybench",
           "load_figstep", "subsample"]


class DataFormat(str, Enum):
    VQAV2 = "vqav2"
    COCO = "coco"
    JSONL = "jsonl"
    MM_SAFETYBENCH = "mm-safetybench"
    FIGSTEP = "figstep"


def load_samples(fmt: DataFormat | str, path: str | Path, *, split: str = "val2014", images: str | Path | None = None,
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


def _load(fmt: DataFormat | str, path: str | Path, *, split: str, images: str | Path | None, limit: int | None,
          seed: int, prompt: str | None, allow_outside_images: bool) -> list[Sample]:
    try:
        fmt = DataFormat(fmt)
    except ValueError:
        raise VlmsteerError(f"unknown data format {fmt!r}; choose one of: {', '.join(f.value for f in DataFormat)}") \
            from None
    if fmt is DataFormat.VQAV2:
        return load_vqav2(path, split=split, images=images, limit=limit, seed=seed,
                          prompt_template=prompt or "{question}", allow_outside_images=allow_outside_images)
    if fmt is DataFormat.COCO:
        kw = {"prompt": prompt} if prompt else {}
        return load_coco_captions(path, split=split, images=images, limit=limit, seed=seed,
                                  allow_outside_images=allow_outside_images, **kw)
    if fmt is DataFormat.MM_SAFETYBENCH:
        return load_mm_safetybench(path, image_type=split if split in MM_SAFETYBENCH_IMAGE_TYPES else "SD_TYPO",
                                   limit=limit, seed=seed, allow_outside_images=allow_outside_images)
    if fmt is DataFormat.FIGSTEP:
        return load_figstep(path, limit=limit, seed=seed, allow_outside_images=allow_outside_images)
    return load_jsonl(path, limit=limit, seed=seed, allow_outside_images=allow_outside_images)
