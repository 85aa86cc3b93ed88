"""Generic JSONL: one object per line with ``image``, ``prompt`` and optional ``answers``,
``answer_type``, ``question_type``, ``captions`` and ``id``; other keys go to ``meta``.
Relative image paths are resolved against the JSONL file's folder."""

from __future__ import annotations

from pathlib import Path

from vlmsteer.data.io import read_jsonl
from vlmsteer.data.sample import Sample, subsample
from vlmsteer.errors import input_error

KNOWN = {"id", "image", "prompt", "answers", "answer", "answer_type", "question_type", "captions"}


def load_jsonl(path: str | Path, limit: int | None = None, seed: int = 0, check_images: bool = True) -> list[Sample]:
    path = Path(path)
    rows = read_jsonl(path)
    samples = []
    for n, row in subsample(list(enumerate(rows, 1)), limit, seed):
        if "prompt" not in row:
            raise input_error(path, f"line {n} has no 'prompt'")
        image = row.get("image")
        if image is not None:
            image = Path(image) if Path(image).is_absolute() else path.parent / image
            if check_images and not image.exists():
                raise input_error(image, f"image of line {n} not found")
        answers = row.get("answers", [row["answer"]] if "answer" in row else [])
        if isinstance(answers, str):
            answers = [answers]
        samples.append(Sample(
            id=str(row.get("id", n)), image=image, prompt=row["prompt"], answers=list(answers),
            answer_type=row.get("answer_type"), question_type=row.get("question_type"),
            captions=list(row.get("captions", [])), meta={k: v for k, v in row.items() if k not in KNOWN},
        ))
    return samples
