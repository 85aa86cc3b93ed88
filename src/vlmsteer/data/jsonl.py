"""Generic JSONL: one object per line with ``image``, ``prompt`` and optional ``answers``,
``answer_type``, ``question_type``, ``captions`` and ``id``; other keys go to ``meta``.
Relative image paths are resolved against the JSONL file's folder and must stay inside it
unless ``allow_outside_images``."""

from __future__ import annotations

from pathlib import Path

from vlmsteer.data.identity import check_unique_ids, regular_file
from vlmsteer.data.io import dataset_file, read_jsonl, require_string, require_strings
from vlmsteer.data.sample import Sample, subsample
from vlmsteer.errors import input_error

KNOWN = {"id", "image", "prompt", "answers", "answer", "answer_type", "question_type", "captions"}


def load_jsonl(path: str | Path, limit: int | None = None, seed: int = 0, check_images: bool = True,
               allow_outside_images: bool = False) -> list[Sample]:
    path = Path(path)
    rows = read_jsonl(path)
    for n, row in enumerate(rows, 1):
        if "id" in row and (not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool)):
            raise input_error(path, f"line {n}: 'id' must be a string or an integer, got {row['id']!r}"[:200])
    check_unique_ids([str(row.get("id", n)) for n, row in enumerate(rows, 1)], path, lambda i: f"line {i + 1}")
    samples = []
    for n, row in subsample(list(enumerate(rows, 1)), limit, seed):
        if "prompt" not in row:
            raise input_error(path, f"line {n} has no 'prompt'")
        prompt = require_string(row["prompt"], path, f"line {n}: 'prompt'")
        image = row.get("image")
        if image is not None:
            image = dataset_file(path.parent, image, path, f"line {n}", allow_outside_images)
            if check_images:
                regular_file(image, f"image of line {n}")
        answers = row.get("answers", [row["answer"]] if "answer" in row else [])
        optional = {k: require_string(row[k], path, f"line {n}: {k!r}") if row.get(k) is not None else None
                    for k in ("answer_type", "question_type")}
        samples.append(Sample(
            id=str(row.get("id", n)), image=image, prompt=prompt,
            answers=require_strings(answers, path, f"line {n}: 'answers'"),
            captions=require_strings(row.get("captions", []), path, f"line {n}: 'captions'"),
            meta={k: v for k, v in row.items() if k not in KNOWN}, **optional,
        ))
    return samples
