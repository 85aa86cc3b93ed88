"""VQAv2 in its official layout.

``root`` holds ``v2_OpenEnded_mscoco_<split>_questions.json`` and
``v2_mscoco_<split>_annotations.json`` (directly or in ``Questions/`` and
``Annotations/``), and images named ``COCO_<split>_<image_id:012d>.jpg`` (or ``.png``) in
``root/<split>/`` or a given image folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Hashable

from vlmsteer.data.identity import check_unique_ids, regular_file
from vlmsteer.data.io import inside_folder, read_json, require_keys
from vlmsteer.data.sample import Sample, subsample
from vlmsteer.errors import VlmsteerError, input_error


def entry_identity(entry: dict) -> Hashable:
    """What, besides its answer text, tells an official answer entry apart from another
    (``answer_id``, ``answer_confidence``, ...): compared as the official code compares dicts."""
    rest = tuple(sorted((str(k), v) for k, v in entry.items() if k != "answer"))
    try:
        hash(rest)  # scalar values, the usual case: the sorted items are the identity
        return rest
    except TypeError:
        pass

    def frozen(v: Any) -> Hashable:
        if isinstance(v, dict):
            return tuple(sorted((str(k), frozen(x)) for k, x in v.items()))
        if isinstance(v, (list, tuple)):
            return tuple(frozen(x) for x in v)
        return v
    return frozen({k: v for k, v in entry.items() if k != "answer"})


def _answer_ids(entries: list) -> list[Hashable]:
    """Per answer entry, what tells it apart (:func:`entry_identity`). Entries with distinct
    ``answer_id`` (the official files) are all distinct: their positions say as much, without
    building each identity (10 per question)."""
    try:
        ids = {a["answer_id"] for a in entries}
    except (KeyError, TypeError):  # an entry without answer_id, not a dict, or an unhashable id
        ids = set()
    if len(ids) == len(entries) and None not in ids:
        return list(range(len(entries)))
    return [entry_identity(a) if isinstance(a, dict) else i for i, a in enumerate(entries)]


def _hashable(value: Any, path: Path, where: str) -> None:
    if not isinstance(value, (int, str)) or isinstance(value, bool):
        raise input_error(path, f"{where}: question_id must be an integer or a string, got {value!r}"[:200])


def _find(root: Path, sub: str, name: str) -> Path | None:
    for cand in (root / name, root / sub / name):
        if cand.exists():
            return cand
    return None


class CocoImages:
    """Images under COCO naming in one folder, found from one listing of it (not a file-system
    lookup per question: VQAv2 val has 214k questions on 40k images)."""

    EXTENSIONS = (".jpg", ".png", ".jpeg")  # in this order of preference

    def __init__(self, folder: Path, split: str, allow_outside: bool = False):
        self.folder, self.split, self.allow_outside = folder, split, allow_outside
        self._paths: dict[int, tuple[Path, bool]] = {}  # ~5 questions per image: one Path each
        try:
            with os.scandir(folder) as entries:
                self.names = {e.name for e in entries if e.is_file()}
        except OSError:  # no such folder: every image is missing
            self.names = set()

    def path(self, image_id: int) -> tuple[Path, bool]:
        """The image of ``image_id`` (``.jpg`` first, symlinks resolved: it must stay inside the
        folder unless ``allow_outside``) and whether it exists."""
        image_id = int(image_id)
        found = self._paths.get(image_id)
        if found is None:
            found = self._paths[image_id] = self._look_up(image_id)
        return found

    def _look_up(self, image_id: int) -> tuple[Path, bool]:
        stem = f"COCO_{self.split}_{image_id:012d}"
        for ext in self.EXTENSIONS:
            if stem + ext in self.names:
                return inside_folder(self.folder, self.folder / (stem + ext), self.folder, f"image {stem + ext}",
                                     self.allow_outside), True
        return Path(os.path.abspath(self.folder / (stem + ".jpg"))), False


def available_splits(root: Path) -> list[str]:
    found = set()
    for p in list(root.glob("v2_OpenEnded_mscoco_*_questions.json")) + list(
            root.glob("Questions/v2_OpenEnded_mscoco_*_questions.json")):
        found.add(p.name[len("v2_OpenEnded_mscoco_"):-len("_questions.json")])
    return sorted(found)


def load_vqav2(root: str | Path, split: str = "val2014", images: str | Path | None = None,
               limit: int | None = None, seed: int = 0, prompt_template: str = "{question}",
               check_images: bool = True, allow_outside_images: bool = False) -> list[Sample]:
    root = Path(root)
    if not root.is_dir():
        raise input_error(root, "VQAv2 folder not found")
    qname = f"v2_OpenEnded_mscoco_{split}_questions.json"
    aname = f"v2_mscoco_{split}_annotations.json"
    qpath = _find(root, "Questions", qname)
    if qpath is None:
        splits = available_splits(root)
        hint = f"; splits found: {', '.join(splits)}" if splits else ""
        raise input_error(root / qname, f"no questions file for split {split!r}{hint}")
    apath = _find(root, "Annotations", aname)
    if apath is None:
        raise input_error(root / aname, f"no annotations file for split {split!r}")
    qdata = read_json(qpath, "questions file")
    require_keys(qdata, ["questions"], qpath)
    adata = read_json(apath, "annotations file")
    require_keys(adata, ["annotations"], apath)
    if not isinstance(adata["annotations"], list) or not isinstance(qdata["questions"], list):
        raise input_error(apath if not isinstance(adata["annotations"], list) else qpath, "expected a list of entries")
    annotations = {}
    for i, ann in enumerate(adata["annotations"]):
        require_keys(ann, ["question_id", "answers"], apath, f"annotations[{i}]")
        _hashable(ann["question_id"], apath, f"annotations[{i}]")
        annotations[ann["question_id"]] = ann
    if len(annotations) != len(adata["annotations"]):
        check_unique_ids([a["question_id"] for a in adata["annotations"]], apath, lambda i: f"annotations[{i}]")
    found_images = CocoImages(Path(images) if images is not None else root / split, split, allow_outside_images)
    questions = qdata["questions"]
    for i, q in enumerate(questions):
        require_keys(q, ["question_id", "image_id", "question"], qpath, f"questions[{i}]")
        _hashable(q["question_id"], qpath, f"questions[{i}]")
    check_unique_ids([str(q["question_id"]) for q in questions], qpath, lambda i: f"questions[{i}]")
    samples = []
    for q in subsample(questions, limit, seed):
        ann = annotations.get(q["question_id"])
        if ann is None:
            raise input_error(apath, f"no annotation for question {q['question_id']} of {qpath.name}")
        image, exists = found_images.path(q["image_id"])
        if check_images and not exists:
            regular_file(image, f"image of question {q['question_id']}")  # says why: missing, a folder, a pipe
            raise input_error(image, f"image of question {q['question_id']} not found")
        answers = [a["answer"] if isinstance(a, dict) else str(a) for a in ann["answers"]]
        answer_ids = _answer_ids(ann["answers"])
        meta = {"image_id": q["image_id"], "question_id": q["question_id"], "split": split}
        if "multiple_choice_answer" in ann:
            meta["multiple_choice_answer"] = ann["multiple_choice_answer"]
        samples.append(Sample(
            id=str(q["question_id"]), image=image, prompt=prompt_template.format(question=q["question"]),
            answers=answers, answer_type=ann.get("answer_type"), question_type=ann.get("question_type"),
            meta=meta, answer_ids=answer_ids,
        ))
    if not samples and questions:
        raise VlmsteerError(f"{qpath}: no samples selected")
    return samples
