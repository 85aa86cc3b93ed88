"""POPE question files (``{"question_id", "image", "text", "label"}`` per line, as the POPE
repository ships them: ``coco_pope_{random,popular,adversarial}.json``) and answer files
(``{"question_id", "answer"}`` per line; LLaVA's ``"text"`` is read as the answer too; or a
vlmsteer run folder's ``predictions.jsonl``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlmsteer.data.identity import check_unique_ids
from vlmsteer.data.io import read_jsonl, require_keys, require_string
from vlmsteer.errors import input_error

POPE_LABELS = ("yes", "no")


@dataclass(frozen=True)
class PopeQuestion:
    question_id: int | str
    image: str
    text: str
    label: str  # "yes" or "no"


def _id(value, path, where):
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise input_error(path, f"{where}: question_id must be an integer or a string, got {value!r}"[:200])
    return value


def read_pope_questions(path: str | Path) -> list[PopeQuestion]:
    """The questions of a POPE file, in file order; each label must be ``yes`` or ``no`` (the
    reference reads anything but ``no`` as yes: a typo would silently count as an object present)."""
    path = Path(path)
    questions = []
    for n, row in enumerate(read_jsonl(path), 1):
        where = f"line {n}"
        require_keys(row, ["question_id", "image", "text", "label"], path, where)
        label = require_string(row["label"], path, f"{where}: label")
        if label not in POPE_LABELS:
            raise input_error(path, f"{where}: label {label!r} is neither 'yes' nor 'no'")
        questions.append(PopeQuestion(_id(row["question_id"], path, where), require_string(row["image"], path, f"{where}: image"),
                                      require_string(row["text"], path, f"{where}: text"), label))
    if not questions:
        raise input_error(path, "holds no POPE questions")
    check_unique_ids([q.question_id for q in questions], path)
    return questions


def read_pope_answers(path: str | Path) -> dict:
    """question_id -> the model's answer text, from an answer file or a run folder."""
    path = Path(path)
    if path.is_dir():
        rows = read_jsonl(path / "predictions.jsonl")
        id_key, keys = "id", ("prediction",)
        path = path / "predictions.jsonl"
    else:
        rows = read_jsonl(path)
        id_key, keys = "question_id", ("answer", "text")
    answers = {}
    for n, row in enumerate(rows, 1):
        key = next((k for k in keys if k in row), None)
        if id_key not in row or key is None:
            raise input_error(path, f"line {n} lacks {id_key!r} or {' / '.join(map(repr, keys))}")
        qid = _id(row[id_key], path, f"line {n}")
        if qid in answers:
            raise input_error(path, f"line {n}: question {qid!r} is answered twice")
        answers[qid] = require_string(row[key], path, f"line {n}: {key}")
    if not answers:
        raise input_error(path, "holds no answers")
    return answers
