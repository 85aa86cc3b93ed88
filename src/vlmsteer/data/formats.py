"""The registry of dataset formats (every command's ``--format``): each entry loads a dataset
into :class:`~vlmsteer.data.sample.Sample` records and says what its samples hold.

A new format is one file: write a loader ``load(path, *, split, images, limit, seed, prompt,
allow_outside_images) -> list[Sample]`` (read files with :func:`vlmsteer.data.io.read_json` /
``read_jsonl`` and resolve images with :func:`vlmsteer.data.io.dataset_file`, which give the
one-line errors) and call ``DATA_FORMATS.add("name", DatasetFormat(load), "one line")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vlmsteer.data.coco import load_coco_captions
from vlmsteer.data.jsonl import load_jsonl
from vlmsteer.data.safety import MM_SAFETYBENCH_IMAGE_TYPES, load_figstep, load_mm_safetybench
from vlmsteer.data.sample import Sample
from vlmsteer.data.vqav2 import load_vqav2
from vlmsteer.registry import Registry


@dataclass(frozen=True)
class DatasetFormat:
    load: Callable[..., list[Sample]]  # (path, *, split, images, limit, seed, prompt, allow_outside_images)
    reference: str = "answers"  # the reference text its samples carry: answers or captions
    safety: bool = False  # prompts to be graded for refusal (eval safety takes it)


DATA_FORMATS: Registry[DatasetFormat] = Registry("data format", "--format")


def _vqav2(path, *, split, images, limit, seed, prompt, allow_outside_images):
    return load_vqav2(path, split=split, images=images, limit=limit, seed=seed,
                      prompt_template=prompt or "{question}", allow_outside_images=allow_outside_images)


def _coco(path, *, split, images, limit, seed, prompt, allow_outside_images):
    return load_coco_captions(path, split=split, images=images, limit=limit, seed=seed,
                              allow_outside_images=allow_outside_images, **({"prompt": prompt} if prompt else {}))


def _mm_safetybench(path, *, split, images, limit, seed, prompt, allow_outside_images):
    return load_mm_safetybench(path, image_type=split if split in MM_SAFETYBENCH_IMAGE_TYPES else "SD_TYPO",
                               limit=limit, seed=seed, allow_outside_images=allow_outside_images)


def _figstep(path, *, split, images, limit, seed, prompt, allow_outside_images):
    return load_figstep(path, limit=limit, seed=seed, allow_outside_images=allow_outside_images)


def _jsonl(path, *, split, images, limit, seed, prompt, allow_outside_images):
    return load_jsonl(path, limit=limit, seed=seed, allow_outside_images=allow_outside_images)


DATA_FORMATS.add("vqav2", DatasetFormat(_vqav2), "official VQAv2 question and annotation files",
                 {"split": "split in the file names", "images": "image folder", "prompt": "a {question} template"})
DATA_FORMATS.add("coco", DatasetFormat(_coco, reference="captions"), "COCO captions (captions_SPLIT.json)",
                 {"split": "split in the file names", "images": "image folder", "prompt": "the caption prompt"})
DATA_FORMATS.add("jsonl", DatasetFormat(_jsonl, safety=True), "one JSON object per line (image, prompt, answer)")
DATA_FORMATS.add("mm-safetybench", DatasetFormat(_mm_safetybench, safety=True),
                 "MM-SafetyBench (--split names the image type: SD, SD_TYPO or TYPO)", {"split": "image type"})
DATA_FORMATS.add("figstep", DatasetFormat(_figstep, safety=True), "FigStep's SafeBench typographic prompts")
