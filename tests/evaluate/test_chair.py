"""CHAIR as its standalone reference computes it (benchmarks/chair_parity.py compares with the
reference's own code on 1000 random captions; these cases pin its rules and quirks)."""

import json
from pathlib import Path

import pytest

from vlmsteer.errors import VlmsteerError
from vlmsteer.evaluate.chair import caption_objects, caption_words, chair_scores, coco_vocabulary, ground_truth
from vlmsteer.evaluate.singular import singularize

VOCAB = coco_vocabulary()


def test_the_reference_runs_own_outputs_are_reproduced_word_for_word():
    cases = json.loads((Path(__file__).parent / "chair_reference_cases.json").read_text())["cases"]
    for case in cases:
        found = caption_objects(case["caption"], VOCAB)
        assert found.words == case["words"]
        assert found.objects == case["objects"]


@pytest.mark.parametrize("word, singular", [
    # Pattern's singularize, as printed by Pattern itself (benchmarks/chair_parity.py)
    ("bus", "bu"), ("buses", "bus"), ("glass", "glas"), ("glasses", "glass"), ("people", "person"),
    ("women", "woman"), ("four", "fmy"), ("taxes", "taxe"), ("pi", "pus"), ("dogs'", "dog's"), ("'", "'s"),
    ("'s", "'"), ("mothers-in-law", "mother-in-law"), ("knives", "knife"), ("olives", "olife"),
    ("pies", "py"), ("oxenford", "oxford"), ("skis", "ski"), ("scissors", "scissors"), ("ice", "ice"),
    ("s", "s"), ("cookies", "cookies"), ("Doggies", "doggies"), ("data", "datum"), ("Dogs", "Dog"), ("BUSES", "BUS"), ("sheep", "sheep"),
])
def test_singularize_keeps_patterns_quirks(word, singular):
    assert singularize(word) == singular


def test_words_are_tokenized_as_nltk_and_made_singular():
    assert caption_words("Two Dogs, a cat's bowl... and buses!") == [
        "two", "dog", ",", "a", "cat", "'", "bowl", "...", "and", "bus", "!"]
    # a period ends a sentence after an ordinary word (the word loses it), not after a number
    assert caption_words("a dog. a cat 2. done") == ["a", "dog", ".", "a", "cat", "2.", "done"]


@pytest.mark.parametrize("caption, objects", [
    ("two hot dogs and a baby bird", ["hot dog", "bird"]),
    ("a passenger jet", ["airplane"]),
    ("wine glasses on a table", ["wine glass", "dining table"]),
    ("a toilet seat", ["toilet"]),
    ("the seat of the toilet", ["toilet"]),  # seat is dropped where a toilet is named
    ("a seat", ["chair"]),
    ("a motor bike", []),  # the table's " motor bike" keeps a leading space: never matched
    ("a cheesecake", []),  # likewise " cheesecake"
    ("a puppy and a kitten", ["dog", "cat"]),
    ("people and a woman", ["person", "person"]),
    ("a bus", []),  # "bus" -> "bu", which names nothing
])
def test_objects_follow_the_reference_rules(caption, objects):
    assert caption_objects(caption, VOCAB).objects == objects


def _coco(image_objects: dict, captions: dict):
    cats = [{"id": i + 1, "name": line[0]} for i, line in enumerate(VOCAB.synonyms)]
    ids = {c["name"]: c["id"] for c in cats}
    images = [{"id": i} for i in image_objects]
    inst = {"images": images, "categories": cats,
            "annotations": [{"image_id": i, "category_id": ids[o]} for i, objs in image_objects.items() for o in objs]}
    caps = {"images": images, "annotations": [{"image_id": i, "caption": c} for i, cs in captions.items() for c in cs]}
    return [inst], [caps]


def test_figures_per_caption_and_overall():
    inst, caps = _coco({1: ["dog"], 2: ["cat", "couch"], 3: []}, {1: ["a puppy on a sofa"], 2: ["a cat"], 3: ["a wall"]})
    truth = ground_truth(inst, caps, VOCAB)
    assert truth == {1: {"dog", "couch"}, 2: {"cat", "couch"}, 3: set()}  # captions add objects to the truth
    s = chair_scores([(1, "A dog and a cat."), (2, "A cat on a couch."), (3, "An empty room.")], truth, VOCAB)
    assert [r.chair_s for r in s.rows] == [1, 0, 0]
    assert s.rows[0].hallucinated == [["cat", "cat"]] and s.rows[0].chair_i == 0.5 and s.rows[0].recall == 0.5
    assert s.rows[2].recall == 0.0 and s.rows[2].chair_i == 0.0
    assert s.chair_s == pytest.approx(1 / 3, abs=1e-12)
    assert s.chair_i == pytest.approx(1 / 4, abs=1e-12)  # 1 hallucinated of 4 mentions
    assert s.recall == pytest.approx((1 + 2) / (2 + 2 + 0), abs=1e-12)
    assert s.mean_length == pytest.approx((5 + 5 + 3) / 3)


def test_where_the_reference_divides_by_zero_or_is_silently_wrong():
    inst, caps = _coco({1: []}, {1: ["a wall"]})
    truth = ground_truth(inst, caps, VOCAB)
    s = chair_scores([(1, "nothing at all")], truth, VOCAB)
    assert s.chair_i is None and s.recall is None and s.chair_s == 0.0
    with pytest.raises(VlmsteerError, match="not in the annotations"):
        chair_scores([(7, "a dog")], truth, VOCAB)
    bad = [{"images": [{"id": 1}], "categories": [{"id": 1, "name": "unicorn"}],
            "annotations": [{"image_id": 1, "category_id": 1}]}]
    with pytest.raises(VlmsteerError, match="'unicorn'"):
        ground_truth(bad, caps, VOCAB)
    with pytest.raises(VlmsteerError, match="no captions"):
        chair_scores([], truth, VOCAB)
