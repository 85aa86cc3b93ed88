"""POPE question files: read with one-line errors, and built for a world whose objects are
known as POPE's main.py samples them (random, popular and adversarial negatives)."""

import json

import pytest

from vlmsteer.data import shapes
from vlmsteer.data.pope import build_pope, load_pope_samples, read_pope_questions
from vlmsteer.errors import VlmsteerError

IMAGES = [("a.jpg", ["dog", "cat", "apple"]), ("b.jpg", ["dog", "cat", "car"]), ("c.jpg", ["dog", "apple", "bus"]),
          ("d.jpg", ["car", "bus", "train"]), ("e.jpg", ["umbrella"])]


@pytest.mark.parametrize("strategy", ["random", "popular", "adversarial"])
def test_positives_then_absent_negatives_in_pairs(strategy):
    qs = build_pope(IMAGES, strategy, sample_num=2, seed=3)
    assert len(qs) == 4 * 4  # e.jpg has fewer than sample_num objects: left out, as in POPE
    assert [q["question_id"] for q in qs] == list(range(1, 17))
    assert [q["label"] for q in qs] == ["yes", "no"] * 8
    for k in range(0, len(qs), 4):
        name = qs[k]["image"]
        objs = dict(IMAGES)[name]
        asked = [q["text"].split("Is there a")[1].split(" in the image?")[0].removeprefix("n").strip() for q in qs[k:k + 4]]
        assert asked[0] == objs[0] and asked[2] == objs[1]
        assert asked[1] not in objs and asked[3] not in objs and asked[1] != asked[3]


def test_popular_takes_the_most_frequent_absent_object_and_adversarial_the_most_co_occurring():
    popular = build_pope(IMAGES, "popular", sample_num=2)
    # frequencies: dog 3, cat 2, apple 2, car 2, bus 2 ... ; for d.jpg (car, bus, train) dog is absent
    d = [q for q in popular if q["image"] == "d.jpg"]
    assert d[1]["text"] == "Is there a dog in the image?" and d[3]["text"] == "Is there a cat in the image?"
    adversarial = build_pope(IMAGES, "adversarial", sample_num=2)
    # "car" co-occurs with dog and cat (b.jpg) and with bus, train (d.jpg): dog first seen
    d = [q for q in adversarial if q["image"] == "d.jpg"]
    assert d[1]["text"] == "Is there a dog in the image?"
    a = [q for q in adversarial if q["image"] == "a.jpg"]  # dog co-occurs most with cat (2), then apple (2)
    assert a[1]["text"] != "Is there a cat in the image?"  # present objects are never negatives
    assert "an" in build_pope([("x", ["apple"]), ("y", ["umbrella"])], "random", sample_num=1)[1]["text"].split()


def test_the_shapes_world_ships_pope_files_and_coco_instances(tmp_path):
    paths = shapes.write_dataset(tmp_path, n=20, seed=4)
    scenes = {s["image_id"]: s for s in json.loads(paths["scenes"].read_text())["scenes"]}
    for strategy in ("random", "popular", "adversarial"):
        qs = read_pope_questions(paths[f"pope_{strategy}"])
        for q in qs:
            scene = scenes[shapes.image_id_of(q.image)]
            present = {f"{s['color']} {s['kind']}" for s in scene["shapes"]}
            obj = q.text.removeprefix("is there a ").removeprefix("n ").removesuffix(" ?")
            assert (obj in present) == (q.label == "yes"), q
    instances = json.loads(paths["instances"].read_text())
    assert sum(len(s["shapes"]) for s in scenes.values()) == len(instances["annotations"])
    samples = load_pope_samples(paths["pope_adversarial"])
    assert samples[0].answers in (["yes"], ["no"]) and samples[0].image_path.endswith(".png")


def test_a_pattern_breaking_worlds_adversarial_negatives_are_the_learnt_co_occurrence(tmp_path):
    # ranked by the co-occurring world's statistics over 1000 scenes: counted over the world's own
    # 40, chance co-occurrences would outrank the learnt one
    paths = shapes.write_dataset(tmp_path, n=40, seed=3, scenes="pattern-breaking")
    for strategy, share in (("adversarial", 0.6), ("popular", 1.0)):
        negatives = [q.text for q in read_pope_questions(paths[f"pope_{strategy}"]) if q.label == "no"]
        learnt = [t for t in negatives if t in ("is there a yellow circle ?", "is there a white circle ?")]
        assert len(learnt) >= share * len(negatives), (strategy, len(learnt), len(negatives))


@pytest.mark.parametrize("row, needle", [
    ({"question_id": 1, "image": "x.jpg", "text": "?", "label": "maybe"}, "neither 'yes' nor 'no'"),
    ({"question_id": 1, "image": "x.jpg", "text": "?"}, "missing key(s) 'label'"),
    ({"question_id": [1], "image": "x.jpg", "text": "?", "label": "no"}, "question_id must be"),
])
def test_question_files_are_checked(tmp_path, row, needle):
    path = tmp_path / "q.json"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(VlmsteerError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        read_pope_questions(path)
