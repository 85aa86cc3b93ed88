"""POPE scored as its reference evaluate.py (RUCAIBox/POPE) does, quirks included."""

import pytest

from vlmsteer.errors import VlmsteerError
from vlmsteer.evaluate.pope import pope_answer, pope_scores


@pytest.mark.parametrize("text, read", [
    ("Yes, there is a dog in the image.", "yes"),
    ("No, there is no dog.", "no"),
    ("There is not a dog", "no"),
    ("no", "no"), ("No", "no"), ("No.", "no"),
    ("NO", "yes"),  # case: only "No", "no" and "not" count
    ("Not really", "yes"),
    ("no\nthere is none", "yes"),  # split on single spaces: "no\nthere" is one piece
    ("Yes. No, not at all.", "yes"),  # only the first sentence
    (".no", "yes"),  # the first sentence is empty
    ("nothing is there", "yes"), ("I cannot see one", "yes"),  # whole pieces only
    ("no,", "no"), ("there is no, dog", "no"),  # commas go before the split
    ("", "yes"),
])
def test_an_answer_reads_as_the_reference_reads_it(text, read):
    assert pope_answer(text) == read


def test_the_five_figures_and_the_confusion_counts():
    answers = ["Yes.", "No.", "yes", "There is no cat.", "Yes", "no", "NO", "not"]
    labels = ["yes", "no", "no", "yes", "yes", "no", "no", "Yes"]  # "Yes" is positive: only "no" is negative
    s = pope_scores(answers, labels)
    # preds: y n y n y n y n ; truth: y n n y y n n y
    assert (s.tp, s.fp, s.tn, s.fn) == (2, 2, 2, 2)
    assert s.accuracy == 0.5 and s.precision == 0.5 and s.recall == 0.5 and s.f1 == 0.5
    assert s.yes_ratio == 0.5 and s.n == 8


def test_where_the_reference_crashes_or_truncates_this_says_so():
    never_yes = pope_scores(["no", "no"], ["yes", "no"])
    assert never_yes.precision is None and never_yes.f1 is None and never_yes.recall == 0.0
    assert never_yes.accuracy == 0.5 and never_yes.yes_ratio == 0.0
    with pytest.raises(VlmsteerError, match="2 answers for 3 POPE labels"):
        pope_scores(["yes", "no"], ["yes", "no", "no"])
    with pytest.raises(VlmsteerError, match="no POPE answers"):
        pope_scores([], [])
