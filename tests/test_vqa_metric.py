"""The official VQAv2 accuracy, table-driven, normalization edge cases included."""

import pytest

from vlmsteer.evaluate.vqa import compare_runs, evaluate_vqa, normalize_answer, vqa_accuracy

TEN = 10

NORMALIZE = [
    ("Yes", "yes"),
    ("  yes\n", "yes"),
    ("two", "2"),
    ("Two dogs.", "2 dogs"),
    ("a dog", "dog"),
    ("The Red one", "red 1"),
    ("dont know", "don't know"),
    ("isnt", "isn't"),
    ("it's", "it's"),
    ("red, white", "red white"),
    ("red,white", "red white"),
    ("1,000", "1000"),
    ("3.5", "3.5"),
    ("end.", "end"),
    ("t-shirt", "t shirt"),
    ("none", "0"),
    ("(yes)", "yes"),
]


@pytest.mark.parametrize("raw, expected", NORMALIZE)
def test_normalization(raw, expected):
    assert normalize_answer(raw) == expected


ACCURACY = [
    # prediction, references, expected accuracy
    ("yes", ["yes"] * TEN, 1.0),
    ("no", ["yes"] * TEN, 0.0),
    ("Yes", ["yes"] * 9 + ["no"], 1.0),  # references disagree: everything normalized
    ("yes", ["yes"] * 3 + ["no"] * 7, 0.9),  # 3 matches: 7 subsets keep 3 (1.0), 3 keep 2 (2/3)
    ("yes", ["yes"] * 2 + ["no"] * 8, 0.6),  # 8 subsets with 2 matches (2/3), 2 with 1 (1/3)
    ("yes", ["yes"] + ["no"] * 9, 0.3),
    ("2", ["two"] * 5 + ["2"] * 5, 1.0),  # "two" -> "2" once references disagree
    ("two", ["2"] * TEN, 0.0),  # the official quirk: identical references, prediction not normalized
    ("a dog", ["dog"] * 5 + ["cat"] * 5, 1.0),
    ("dog", ["dog"] * 4 + ["cat"] * 6, 1.0),
]


@pytest.mark.parametrize("pred, refs, expected", ACCURACY)
def test_accuracy(pred, refs, expected):
    assert vqa_accuracy(pred, refs) == pytest.approx(expected)


def test_always_normalize_option():
    assert vqa_accuracy("two", ["2"] * TEN, always_normalize=True) == 1.0


def test_report_per_type_micro_macro_and_counts():
    rep = evaluate_vqa(["yes", "no", "2", "red"], [["yes"] * 10, ["yes"] * 10, ["2"] * 10, ["blue"] * 10],
                       ["yes/no", "yes/no", "number", "other"])
    assert rep.per_type == {"number": 100.0, "other": 0.0, "yes/no": 50.0}
    assert rep.micro == 50.0 and rep.macro == pytest.approx(50.0)
    assert rep.answer_counts == {"yes": 1, "no": 1, "2": 1, "red": 1}


def test_compare_runs_counts_moves():
    out = compare_runs(["yes", "yes", "no", "2"], ["no", "yes", "no", "no"], source="yes", target="no")
    assert out["changed"] == 2 and out["source"]["delta"] == -1 and out["target"]["delta"] == 2
    assert out["source_moved_to_target"] == 1 and out["source_moved_fraction"] == 0.5
