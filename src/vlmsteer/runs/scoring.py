"""``vlmsteer score pope`` and ``vlmsteer score chair``: score answers or captions made anywhere
(a vlmsteer run folder or another tool's file) as POPE's and CHAIR's references do, and write
``metrics.json`` (CHAIR also ``rows.jsonl``: each caption's mentioned and hallucinated objects)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from vlmsteer.data.io import read_json, read_json_and_digest, read_jsonl
from vlmsteer.data.pope import PopeQuestion
from vlmsteer.errors import VlmsteerError, input_error
from vlmsteer.evaluate.chair import ChairScores, ChairVocabulary, check_known, coco_vocabulary, ground_truth
from vlmsteer.evaluate.pope import PopeScores, pope_scores
from vlmsteer.outputs import atomic_write_json, atomic_write_text, make_folder

CHAIR_FILES = ("instances_{split}2014.json", "captions_{split}2014.json")


def file_identity(path: str | Path) -> dict:
    """A scored input by content: the digest of its bytes (a run folder: of its predictions)."""
    import hashlib

    from vlmsteer.data.identity import regular_file

    path = Path(path)
    path = path / "predictions.jsonl" if path.is_dir() else path
    regular_file(path, "file")
    with open(path, "rb") as f:  # streamed: COCO's train annotations are 450 MB
        return {"name": path.name, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def chair_annotation_files(folder: str | Path) -> list[Path]:
    """The COCO annotation files of ``folder`` that CHAIR reads: instances and captions of each
    split (train, val 2014) that has both."""
    folder = Path(folder)
    splits = [s for s in ("train", "val") if all((folder / f.format(split=s)).is_file() for f in CHAIR_FILES)]
    return [folder / f.format(split=s) for s in splits for f in CHAIR_FILES]


def score_pope(questions: Sequence[PopeQuestion], answers: dict) -> PopeScores:
    """The reference's figures for ``answers`` (question_id -> text) to ``questions``, joined by
    question id (the reference pairs lines by order, so a reordered answer file is silently
    scored against the wrong labels there): every question needs exactly one answer."""
    by_id = {str(k): v for k, v in answers.items()}
    missing = [q.question_id for q in questions if str(q.question_id) not in by_id]
    if missing:
        raise VlmsteerError(f"{len(missing)} of {len(questions)} POPE questions have no answer "
                            f"(first: question_id {missing[0]!r})")
    extra = len(by_id) - len(questions)
    if extra:
        known = {str(q.question_id) for q in questions}
        stray = next(k for k in by_id if k not in known)
        raise VlmsteerError(f"{extra} answer(s) are to questions the question file does not hold "
                            f"(first: question_id {stray!r})")
    return pope_scores([by_id[str(q.question_id)] for q in questions], [q.label for q in questions])


def read_captions(path: str | Path) -> list[tuple[int | str, str]]:
    """(image_id, caption) pairs from a JSONL (or JSON list) of ``{"image_id", "caption"}``, or a
    vlmsteer run folder's ``predictions.jsonl`` (its sample ids are COCO image ids)."""
    path = Path(path)
    if path.is_dir():
        path, id_key, text_key = path / "predictions.jsonl", "id", "prediction"
    else:
        id_key, text_key = "image_id", "caption"
    rows = read_json(path, "captions file") if path.suffix == ".json" else read_jsonl(path)
    if not isinstance(rows, list):
        raise input_error(path, "expected a list of {\"image_id\", \"caption\"} objects")
    pairs = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or id_key not in row or text_key not in row:
            raise input_error(path, f"entry {n} lacks {id_key!r} or {text_key!r}")
        image_id, caption = coco_id(row.get("image_id", row[id_key])), row[text_key]
        if not isinstance(caption, str):
            raise input_error(path, f"entry {n}: the caption must be a string, got {caption!r}"[:200])
        pairs.append((image_id, caption))
    if not pairs:
        raise input_error(path, "holds no captions")
    return pairs


def read_chair_annotations(folder: str | Path) -> tuple[list[dict], list[dict], list[dict]]:
    """COCO's instances and captions files of ``folder``, as the reference reads them (train and
    val 2014; a folder holding only one split's pair is read as that split alone), and each file
    by content (:func:`file_identity`'s record, from the same read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise input_error(folder, "annotations folder not found" if not folder.exists() else "not a folder")
    files = chair_annotation_files(folder)
    if not files:
        raise input_error(folder, "holds neither instances_val2014.json + captions_val2014.json nor the train2014 pair "
                                  "(COCO's annotation files, as CHAIR reads them)")
    instances, captions, identities = [], [], []
    for path in files:
        data, digest = read_json_and_digest(path, "COCO annotation file")
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            raise input_error(path, "not a COCO annotation file (no 'annotations' list)")
        (instances if path.name.startswith("instances") else captions).append(data)
        identities.append({"name": path.name, "sha256": digest})
    return instances, captions, identities


@dataclass
class ChairAnnotations:
    """A folder's COCO annotations read once, with the object table to score with (``score chair``
    and ``eval captions --chair``, which scores its captions and its baseline's against one truth)
    and the files by content (for the run's identity)."""

    instances: list[dict]
    captions: list[dict]
    files: list[dict]
    vocab: ChairVocabulary

    @classmethod
    def read(cls, folder: str | Path, vocab: ChairVocabulary | None = None) -> "ChairAnnotations":
        return cls(*read_chair_annotations(folder), vocab or coco_vocabulary())

    def truth(self, image_ids: Sequence) -> dict:
        """The ground truth of ``image_ids`` (see :func:`coco_id`); a one-line error where one is
        not in the annotations."""
        ids = [coco_id(i) for i in image_ids]
        truth = ground_truth(self.instances, self.captions, self.vocab, image_ids=set(ids))
        check_known(ids, truth)
        return truth


def coco_id(value):
    """An image id as COCO writes it: an integer (a run folder writes it as text)."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


def write_pope_scores(out: str | Path, scores: PopeScores) -> None:
    out = make_folder(out)
    atomic_write_json(out / "metrics.json", {"pope": scores.to_dict()}, durable=False, indent=2)


def write_chair_scores(out: str | Path, scores: ChairScores) -> None:
    from dataclasses import asdict

    out = make_folder(out)
    atomic_write_text(out / "rows.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in scores.rows))
    atomic_write_json(out / "metrics.json", {"chair": scores.summary()}, durable=False, indent=2)
