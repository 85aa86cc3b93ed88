"""POPE question files (``{"question_id", "image", "text", "label"}`` per line, as the POPE
repository ships them: ``coco_pope_{random,popular,adversarial}.json``) and answer files
(``{"question_id", "answer"}`` per line; LLaVA's ``"text"`` is read as the answer too; or a
vlmsteer run folder's ``predictions.jsonl``); and question files built for a world whose
objects are known, as POPE's ``main.py`` samples them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlmsteer.data.identity import check_unique_ids
from vlmsteer.data.io import read_jsonl, require_keys, require_string
from vlmsteer.data.sample import Sample
from vlmsteer.errors import VlmsteerError, input_error

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
        questions.append(PopeQuestion(_id(row["question_id"], path, where),
                                      require_string(row["image"], path, f"{where}: image"),
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


# --- building question files (POPE's sampling, for a world whose objects are known) ------------

POPE_STRATEGIES = ("random", "popular", "adversarial")


def _with_article(template: str, obj: str) -> str:
    text = template.format(obj)
    if obj[:1].lower() in "aeiou":
        text = text.replace(f"a {obj}", f"an {obj}", 1)
    return text


def build_pope(images: list[tuple[str, list[str]]], strategy: str, *, sample_num: int = 3,
               template: str = "Is there a {} in the image?", seed: int = 0,
               universe: list[str] | None = None,
               statistics_from: list[tuple[str, list[str]]] | None = None) -> list[dict]:
    """POPE questions as POPE's ``main.py`` samples them: for each image with at least
    ``sample_num`` objects, its first ``sample_num`` objects asked about (label ``yes``), each
    followed by one absent object (``no``) chosen at random (``random``), the most frequent
    over all images (``popular``) or the object seen most often with that positive
    (``adversarial``; ties in first-seen order), falling back to random where none is left.
    ``images``: (image file name, its distinct objects in order); ``universe``: every object a
    random negative may be drawn from (default, as POPE: those of the images);
    ``statistics_from``: other images whose object frequencies and co-occurrences rank the
    popular and adversarial negatives (the data a model learnt from; default, as POPE: the images
    asked about)."""
    import random
    from collections import Counter

    if strategy not in POPE_STRATEGIES:
        raise ValueError(f"strategy must be one of {POPE_STRATEGIES}")
    images = [(name, list(dict.fromkeys(objs))) for name, objs in images]
    images = [(name, objs) for name, objs in images if len(objs) >= sample_num]
    learnt = images if statistics_from is None else [(n, list(dict.fromkeys(o))) for n, o in statistics_from]
    frequency = Counter(o for _, objs in learnt for o in objs)
    every = list(universe) if universe is not None else list(dict.fromkeys(o for _, objs in images for o in objs))
    popular = [o for o, _ in sorted(frequency.items(), key=lambda kv: kv[1], reverse=True)]
    together: dict[str, Counter] = {}
    for _, objs in learnt:
        for o in objs:
            together.setdefault(o, Counter()).update(x for x in objs if x != o)
    by_cooccurrence = {o: [x for x, _ in sorted(c.items(), key=lambda kv: kv[1], reverse=True)]
                       for o, c in together.items()}
    rng = random.Random(seed)
    questions, qid = [], 1
    for name, objs in images:
        asked: list[str] = []
        for positive in objs[:sample_num]:
            asked.append(positive)
            questions.append({"question_id": qid, "image": name, "text": _with_article(template, positive),
                              "label": "yes"})
            qid += 1
            ranked = {"random": [], "popular": popular, "adversarial": by_cooccurrence.get(positive, [])}[strategy]
            negative = next((o for o in ranked if o not in asked and o not in objs), None)
            if negative is None:
                left = [o for o in every if o not in asked and o not in objs]
                if not left:
                    raise VlmsteerError(f"image {name} leaves no absent object to ask about: give more images "
                                        f"or a larger universe of objects")
                negative = rng.choice(left)
            asked.append(negative)
            questions.append({"question_id": qid, "image": name, "text": _with_article(template, negative),
                              "label": "no"})
            qid += 1
    return questions


def load_pope_samples(path: str | Path, images: str | Path | None = None, limit: int | None = None, seed: int = 0,
                      allow_outside_images: bool = False) -> list[Sample]:
    """A POPE question file as samples (id: the question id, answer: the label); images are
    looked up in ``images`` (default: the file's folder, or its ``val2014`` folder where the
    names are COCO val2014 names)."""
    from vlmsteer.data.identity import regular_file
    from vlmsteer.data.io import dataset_file
    from vlmsteer.data.sample import subsample

    path = Path(path)
    questions = read_pope_questions(path)
    if images is None:
        images = path.parent / "val2014" if (path.parent / "val2014").is_dir() else path.parent
    samples = []
    for n, q in subsample(list(enumerate(questions, 1)), limit, seed):
        image = dataset_file(images, q.image, path, f"line {n}", allow_outside_images)
        regular_file(image, f"image of line {n}")
        samples.append(Sample(id=str(q.question_id), image=image, prompt=q.text, answers=[q.label],
                              answer_type="yes/no", question_type="is there a",
                              meta={"pope_label": q.label, "question_id": q.question_id}))
    return samples
