"""CHAIR (Rohrbach et al., 2018: "Object Hallucination in Image Captioning"), computed as the
standalone reference computes it (Maxlinn/CHAIR-metric-standalone ``chair.py``, itself
LisaAnne/Hallucination's ``utils/chair.py`` with Recall added), case by case:

- a caption is lower-cased, split into sentences and words as ``nltk.word_tokenize`` does,
  every word made singular as ``pattern.en.singularize`` does (:mod:`.singular`), then two-word
  objects joined (``hot dog``, ``baby bird`` -> ``bird``, ``wine glas`` -> ``wine glass``), ``seat``
  dropped where ``toilet`` is named, and every word of the synonym table kept as its object
  (the first word of its line: ``puppy`` -> ``dog``). The table is the reference's, spaces and
  all: its ``" motor bike"`` and ``" cheesecake"`` carry a leading space, so these two never match.
- an image's ground truth is the union of its instance categories and the objects its reference
  captions name, read the same way, from COCO-format ``instances_*.json`` and ``captions_*.json``.
- per caption: the objects named (every mention), those absent from the image (hallucinated),
  CHAIR_s (1 if any), CHAIR_i (hallucinated / named), Recall (distinct true objects named /
  true objects); overall CHAIR_s = hallucinating captions / captions, CHAIR_i = hallucinated
  mentions / mentions, Recall = sum of distinct true objects named / sum of true objects.

Where the reference crashes or is silently wrong this says so instead: it divides by zero when
no caption names an object (CHAIR_i) or no image has a true object (Recall) — here those are
None; a caption of an image the annotations do not hold counts every object as hallucinated
there — here it is an error naming the image.

Sentence splitting is NLTK's Punkt algorithm without its trained English parameters (not
installable here): they decide only whether a period after an abbreviation, an initial or a
number ends a sentence, which changes those tokens and never an object word (no object in
the table is an English abbreviation, and a period after an ordinary word always ends one).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Callable, Iterable, Mapping, Sequence

from vlmsteer.errors import VlmsteerError
from vlmsteer.evaluate.singular import singularize
from vlmsteer.registry import Registry


@dataclass(frozen=True)
class ChairVocabulary:
    """The objects CHAIR looks for and how words become them.

    ``synonyms``: lines of words, the first of each line the object every word of the line
    stands for (a later line wins for a word in two); ``double_words``: two-word phrases read as
    one word (the value: the word they become); ``drop_with``: word -> the word it is dropped
    for when both appear (``seat`` with ``toilet``)."""

    synonyms: tuple[tuple[str, ...], ...]
    double_words: Mapping[str, str]
    drop_with: Mapping[str, str] = field(default_factory=dict)

    @property
    def objects(self) -> dict[str, str]:
        """word -> the object it names."""
        return _objects(self.synonyms)

    @classmethod
    def from_text(cls, text: str, double_words: Mapping[str, str], drop_with: Mapping[str, str] | None = None):
        """Lines of comma-and-space separated words (the reference's ``synonyms.txt``)."""
        lines = tuple(tuple(line.strip().split(", ")) for line in text.splitlines() if line.strip())
        return cls(lines, dict(double_words), dict(drop_with or {}))


@lru_cache(maxsize=8)
def _objects(synonyms: tuple[tuple[str, ...], ...]) -> dict[str, str]:
    return {word: line[0] for line in synonyms for word in line}


def coco_vocabulary() -> ChairVocabulary:
    """The reference's COCO table and its hard-coded rules."""
    text = resources.files("vlmsteer.evaluate").joinpath("chair_coco_synonyms.txt").read_text()
    doubles = {w: w for w in (
        "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal", "stop light",
        "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball", "baseball bat", "baseball glove",
        "tennis racket", "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear", "hair drier",
        "potted plant", "bow tie", "laptop computer", "stove top oven", "home plate", "train track")}
    # "baby bird" is a bird, not a person; "passenger jet" a jet
    for animal in ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
                   "animal", "cub"):
        doubles[f"baby {animal}"] = doubles[f"adult {animal}"] = animal
    for vehicle in ("jet", "train"):
        doubles[f"passenger {vehicle}"] = vehicle
    doubles.update({"bow tie": "tie", "toilet seat": "toilet", "wine glas": "wine glass"})
    return ChairVocabulary.from_text(text, doubles, {"seat": "toilet"})


def shapes_vocabulary() -> ChairVocabulary:
    """The shapes world's objects: its four shape kinds (plurals are made singular as for COCO)."""
    from vlmsteer.data.shapes import SHAPES

    return ChairVocabulary(tuple((kind,) for kind in SHAPES), {})


# the object tables CHAIR can score with (``--objects``); an entry is a function returning a vocabulary
CHAIR_OBJECTS: Registry[Callable[[], ChairVocabulary]] = Registry("CHAIR object table", "--objects")
CHAIR_OBJECTS.add("coco", coco_vocabulary, "COCO's 80 categories with the reference's synonyms and rules")
CHAIR_OBJECTS.add("shapes", shapes_vocabulary, "the shapes world's four shape kinds (its instances_*.json)")


# --- words ------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _tokenizers():
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer(), NLTKWordTokenizer()


def caption_words(caption: str) -> list[str]:
    """The caption's words as the reference reads them before objects are looked up:
    lower-cased, tokenized as ``nltk.word_tokenize`` does, each made singular."""
    sentences, words = _tokenizers()
    return [singularize(w) for sentence in sentences.tokenize(caption.lower()) for w in words.tokenize(sentence)]


@dataclass
class CaptionObjects:
    words: list[str]  # the caption's words after two-word objects are joined
    mentions: list[str]  # every word that names an object, in order
    objects: list[str]  # the object each mention names
    positions: list[int]  # where each mention starts among the words before joining


def caption_objects(caption: str, vocab: ChairVocabulary) -> CaptionObjects:
    """The objects ``caption`` names, mention by mention."""
    raw = caption_words(caption)
    words, starts, i = [], [], 0
    while i < len(raw):
        starts.append(i)
        pair = " ".join(raw[i:i + 2])
        if pair in vocab.double_words:
            words.append(vocab.double_words[pair])
            i += 2
        else:
            words.append(raw[i])
            i += 1
    joined = list(words)
    for dropped, other in vocab.drop_with.items():
        if other in words and dropped in words:
            words = [w for w in words if w != dropped]
    table = vocab.objects
    # (the reference reads the start positions by index into the list left after dropping: kept)
    positions = [starts[k] for k, w in enumerate(words) if w in table]
    mentions = [w for w in words if w in table]
    return CaptionObjects(joined, mentions, [table[w] for w in mentions], positions)


# --- ground truth -------------------------------------------------------------------------------

def ground_truth(instances: Iterable[Mapping], captions: Iterable[Mapping], vocab: ChairVocabulary,
                 image_ids: Iterable[int] | None = None) -> dict[int, set[str]]:
    """Per image, its true objects: the categories of its instances and the objects its reference
    captions name. ``instances`` and ``captions``: COCO-format dicts (``categories``, ``images``,
    ``annotations``), any number of each (the reference reads train and val); ``image_ids``
    limits the work to those images (every other image's truth is not needed to score them)."""
    wanted = None if image_ids is None else set(image_ids)
    table = vocab.objects
    truth: dict[int, set[str]] = defaultdict(set)
    for coco in instances:
        names = {c["id"]: c["name"] for c in coco.get("categories", [])}
        for ann in coco.get("annotations", []):
            if wanted is None or ann["image_id"] in wanted:
                name = names.get(ann["category_id"])
                if name not in table:
                    raise VlmsteerError(f"instance category {name!r} (id {ann['category_id']}) is not an object "
                                        f"of the CHAIR vocabulary")
                truth[ann["image_id"]].add(table[name])
    for coco in captions:
        for ann in coco.get("annotations", []):
            if wanted is None or ann["image_id"] in wanted:
                truth[ann["image_id"]].update(caption_objects(ann["caption"], vocab).objects)
    known = {img["id"] for coco in (*instances, *captions) for img in coco.get("images", [])}
    return {i: truth.get(i, set()) for i in (known if wanted is None else wanted & known)}


# --- scores ----------------------------------------------------------------------------------------

@dataclass
class ChairRow:
    image_id: int
    caption: str
    mentioned: list[str]  # the object of every mention
    hallucinated: list[list[str]]  # [word, object] of every mention of an absent object
    truth: list[str]  # the image's true objects (sorted)
    chair_s: int
    chair_i: float
    recall: float
    length: int  # words (split on whitespace)


@dataclass
class ChairScores:
    n: int
    chair_s: float
    chair_i: float | None  # None where no caption names an object (the reference divides by zero)
    recall: float | None  # None where no image has a true object (likewise)
    mean_length: float
    mentions: int
    hallucinated_mentions: int
    rows: list[ChairRow] = field(repr=False)

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "rows"}


def check_known(image_ids: Iterable, truth: Mapping) -> None:
    """A one-line error where an image has no ground truth (the reference would count every
    object its caption names as hallucinated)."""
    missing = sorted({i for i in image_ids if i not in truth}, key=str)
    if missing:
        raise VlmsteerError(f"{len(missing)} caption image id(s) are not in the annotations (first: {missing[0]!r}); "
                            f"the reference would count every object they name as hallucinated")


def chair_scores(captions: Sequence[tuple[int, str]], truth: Mapping[int, set[str]],
                 vocab: ChairVocabulary) -> ChairScores:
    """CHAIR_s, CHAIR_i, Recall and mean length of ``(image_id, caption)`` pairs against
    :func:`ground_truth`."""
    if not captions:
        raise VlmsteerError("no captions to score")
    check_known([i for i, _ in captions], truth)
    rows, hallucinating, mentions, wrong, recalled, true_total = [], 0, 0, 0, 0, 0
    for image_id, caption in captions:
        found, gt = caption_objects(caption, vocab), truth[image_id]
        bad = [[w, o] for w, o in zip(found.mentions, found.objects) if o not in gt]
        hit = {o for o in found.objects if o in gt}
        mentions += len(found.objects)
        wrong += len(bad)
        hallucinating += bool(bad)
        recalled += len(hit)
        true_total += len(gt)
        rows.append(ChairRow(image_id, caption, found.objects, bad, sorted(gt), int(bool(bad)),
                             len(bad) / len(found.mentions) if found.mentions else 0.0,
                             len(hit) / len(gt) if gt else 0.0, len(caption.split())))
    return ChairScores(len(rows), hallucinating / len(rows), wrong / mentions if mentions else None,
                       recalled / true_total if true_total else None,
                       sum(r.length for r in rows) / len(rows), mentions, wrong, rows)


__all__ = ["ChairVocabulary", "CHAIR_OBJECTS", "coco_vocabulary", "shapes_vocabulary", "caption_words",
           "caption_objects", "ground_truth", "check_known", "ChairRow", "ChairScores", "chair_scores"]
