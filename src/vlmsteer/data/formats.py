"""The registry of dataset formats (every command's ``--format``): each entry loads a dataset
into :class:`~vlmsteer.data.sample.Sample` records and says what its samples hold.

A new format is one file: write a loader ``load(path, *, split, images, limit, seed, prompt,
allow_outside_images) -> list[Sample]`` (read files with :func:`vlmsteer.data.io.read_json` /
``read_jsonl`` and resolve images with :func:`vlmsteer.data.io.dataset_file`, which give the
one-line errors), a function writing a small example of the format (the registry's contract
tests load it), and call ``DATA_FORMATS.add("name", DatasetFormat(load, example), "one line")``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

import vlmsteer.data.shapes as shapes

from vlmsteer.data.coco import load_coco_captions
from vlmsteer.data.jsonl import load_jsonl
from vlmsteer.data.pope import load_pope_samples
from vlmsteer.data.safety import MM_SAFETYBENCH_IMAGE_TYPES, load_figstep, load_mm_safetybench
from vlmsteer.data.sample import Sample
from vlmsteer.data.vqav2 import load_vqav2
from vlmsteer.registry import Registry


@dataclass(frozen=True)
class DatasetFormat:
    load: Callable[..., list[Sample]]  # (path, *, split, images, limit, seed, prompt, allow_outside_images)
    example: Callable[[Path], Path]  # writes a small dataset of the format into a folder; returns what --data names
    reference: str = "answers"  # the reference text its samples carry: answers, captions or none
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


def _pope(path, *, split, images, limit, seed, prompt, allow_outside_images):
    return load_pope_samples(path, images=images, limit=limit, seed=seed, allow_outside_images=allow_outside_images)


def _shapes_world(folder: Path) -> Path:
    shapes.write_dataset(folder, n=6, seed=11)
    return folder


def _unsafe_jsonl(folder: Path) -> Path:
    return _shapes_world(folder) / "unsafe_val2014.jsonl"


def _pope_example(folder: Path) -> Path:
    return _shapes_world(folder) / "shapes_pope_adversarial.json"


def _mm_safetybench_example(folder: Path) -> Path:
    """Two scenarios of MM-SafetyBench's layout (processed_questions/, imgs/SCENARIO/KIND/)."""
    for scenario, n in (("01-Illegal_Activitiy", 3), ("02-HateSpeech", 2)):
        items = {str(i): {"Question": f"How can I do thing {i}?", "Key Phrase": "thing", "Phrase Type": "activity",
                          "Rephrased Question": "The bottom of the image shows a phrase of an activity. List steps.",
                          "Rephrased Question(SD)": "The image shows a phrase of an activity. List steps."}
                 for i in range(n)}
        (folder / "processed_questions").mkdir(parents=True, exist_ok=True)
        (folder / "processed_questions" / f"{scenario}.json").write_text(json.dumps(items))
        for kind in MM_SAFETYBENCH_IMAGE_TYPES:
            (folder / "imgs" / scenario / kind).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (8, 8)).save(folder / "imgs" / scenario / kind / f"{i}.jpg")
    return folder


def _figstep_example(folder: Path) -> Path:
    """Three SafeBench prompts in FigStep's layout (data/question/safebench.csv, data/images/SafeBench/)."""
    (folder / "data" / "question").mkdir(parents=True, exist_ok=True)
    (folder / "data" / "images" / "SafeBench").mkdir(parents=True, exist_ok=True)
    lines = ["dataset,category_id,task_id,category_name,question,instruction"]
    for cat, task in ((1, 1), (1, 2), (2, 1)):
        lines.append(f'SafeBench,{cat},{task},Illegal Activity,"How can someone, step by step, do {task}?",Steps to')
        Image.new("RGB", (8, 8)).save(folder / "data" / "images" / "SafeBench" / f"query_SafeBench_{cat}_{task}_6.png")
    (folder / "data" / "question" / "safebench.csv").write_text("\n".join(lines) + "\n")
    return folder


DATA_FORMATS.add("vqav2", DatasetFormat(_vqav2, _shapes_world), "official VQAv2 question and annotation files",
                 {"split": "split in the file names", "images": "image folder", "prompt": "a {question} template"})
DATA_FORMATS.add("coco", DatasetFormat(_coco, _shapes_world, reference="captions"), "COCO captions (captions_SPLIT.json)",
                 {"split": "split in the file names", "images": "image folder", "prompt": "the caption prompt"})
DATA_FORMATS.add("jsonl", DatasetFormat(_jsonl, _unsafe_jsonl, safety=True), "one JSON object per line (image, prompt, answer)")
DATA_FORMATS.add("pope", DatasetFormat(_pope, _pope_example),
                 "POPE question files (question_id, image, text, label per line): yes/no object questions, "
                 "scored with POPE's figures too", {"images": "image folder (default: the file's val2014/ or folder)"})
DATA_FORMATS.add("mm-safetybench", DatasetFormat(_mm_safetybench, _mm_safetybench_example, reference="none", safety=True),
                 "MM-SafetyBench (--split names the image type: SD, SD_TYPO or TYPO)", {"split": "image type"})
DATA_FORMATS.add("figstep", DatasetFormat(_figstep, _figstep_example, reference="none", safety=True), "FigStep's SafeBench typographic prompts")
