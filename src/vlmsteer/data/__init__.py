"""Datasets: one :class:`Sample` record type and loaders for VQAv2, COCO captions, JSONL and
the built-in shapes world."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from vlmsteer.data.coco import load_coco_captions
from vlmsteer.data.jsonl import load_jsonl
from vlmsteer.data.sample import Sample, subsample
from vlmsteer.data.vqav2 import load_vqav2
from vlmsteer.errors import VlmsteerError

__all__ = ["Sample", "DataFormat", "load_samples", "load_vqav2", "load_coco_captions", "load_jsonl", "subsample"]


class DataFormat(str, Enum):
    VQAV2 = "vqav2"
    COCO = "coco"
    JSONL = "jsonl"


def load_samples(fmt: DataFormat | str, path: str | Path, *, split: str = "val2014", images: str | Path | None = None,
                 limit: int | None = None, seed: int = 0, prompt: str | None = None) -> list[Sample]:
    """Load any supported format; ``prompt`` overrides the caption prompt (COCO) or is a
    ``{question}`` template (VQAv2)."""
    try:
        fmt = DataFormat(fmt)
    except ValueError:
        raise VlmsteerError(f"unknown data format {fmt!r}; choose one of: {', '.join(f.value for f in DataFormat)}") \
            from None
    if fmt is DataFormat.VQAV2:
        return load_vqav2(path, split=split, images=images, limit=limit, seed=seed,
                          prompt_template=prompt or "{question}")
    if fmt is DataFormat.COCO:
        kw = {"prompt": prompt} if prompt else {}
        return load_coco_captions(path, split=split, images=images, limit=limit, seed=seed, **kw)
    return load_jsonl(path, limit=limit, seed=seed)
