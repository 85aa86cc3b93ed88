"""The official VQAv2 accuracy, table-driven, normalization edge cases included; crafted
cases scored by the official evaluator itself (tests/evaluate/vqa_official_cases.json)."""

import json
from pathlib import Path

import pytest

from vlmsteer.data.vqav2 import entry_identity
from vlmsteer.errors import VlmsteerError
from vlmsteer.evaluate.vqa import compare_runs, evaluate_vqa, normalize_answer, vqa_accuracy

OFFICIAL = json.loads((Path(__file__).parent / "vqa_official_cases.json").read_text())["cases"]

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
    ("were", "were"),  # not in the official contraction table
    ("well", "well"),
    ("im", "im"),  # the official key is "Im": never matched after lower-casing
    ("aint", "ain't"),
    ("couldnt've", "couldn't've"),
    ("somebody'd", "somebodyd"),  # the official table's odd entry
    ("a." * 40, "a" * 32 + "a." * 8),  # at most 32 periods are removed (re.UNICODE passed as count)
    ("5:30", "5:30"),
    ("it's", "it's"),
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


@pytest.mark.parametrize("case", OFFICIAL, ids=lambda c: repr(c["prediction"])[:20])
def test_equals_the_official_evaluator_question_by_question(case):
    entries = case["answers"]
    ours = vqa_accuracy(case["prediction"], [e["answer"] for e in entries], [entry_identity(e) for e in entries])
    assert round(100 * ours, 2) == case["official_accuracy"]


def test_a_single_reference_answer_scores_exact_match():
    # the leave-one-out formula would give 0 whatever the prediction (nothing left to match)
    assert vqa_accuracy("no", ["no"]) == 1.0 and vqa_accuracy(" no ", ["no"]) == 1.0
    assert vqa_accuracy("yes", ["no"]) == 0.0
    assert vqa_accuracy("two", ["2"]) == 0.0 and vqa_accuracy("two", ["2"], always_normalize=True) == 1.0
    report = evaluate_vqa(["no", "yes"], [["no"], ["no"]], [None, None])
    assert report.micro == 50.0


def test_identical_entries_without_ids_are_left_out_together():
    """The official code leaves out every entry equal to the left-out one (dict comparison)."""
    same = [{"answer": "yes", "answer_confidence": "yes"}] * 10
    assert vqa_accuracy("yes", ["yes"] * 10, [entry_identity(e) for e in same]) == 0.0
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0  # plain strings: every entry distinct


def test_loader_keeps_entry_identities(tmp_path):
    from vlmsteer.data import load_vqav2, shapes

    shapes.write_dataset(tmp_path, n=2, seed=3)
    s = load_vqav2(tmp_path)[0]
    assert len(s.answer_ids) == len(s.answers) and len(set(s.answer_ids)) == len(s.answers)


def test_empty_evaluation_is_an_error():
    with pytest.raises(VlmsteerError, match="no predictions"):
        evaluate_vqa([], [], [])
