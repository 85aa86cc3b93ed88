"""The one filter type: parsed once, printed back canonically, the same rule for samples,
store records, vectors and conditions."""

from __future__ import annotations

import numpy as np
import pytest

from vlmsteer.data.filters import Condition, Filter, Op
from vlmsteer.data.sample import Sample
from vlmsteer.errors import VlmsteerError


@pytest.mark.parametrize("text, conditions, canonical", [
    ("answer=yes", [("answer", Op.EQUALS, ("yes",))], "answer=yes"),
    (" answer_type = number , response=1|one", [("answer_type", Op.EQUALS, ("number",)),
                                                ("response", Op.EQUALS, ("1", "one"))],
     "answer_type=number,response=1|one"),
    ("response!~colors,meta.style=plain", [("response", Op.LACKS, ("colors",)), ("meta.style", Op.EQUALS, ("plain",))],
     "response!~colors,meta.style=plain"),
    ("question_type=what color is the, answer~colors",
     [("question_type", Op.EQUALS, ("what color is the",)), ("answer", Op.HAS, ("colors",))],
     "question_type=what color is the,answer~colors"),
    ("prompt=a, b or c", [("prompt", Op.EQUALS, ("a, b or c",))], "prompt=a, b or c"),  # comma inside a value
])
def test_parse_and_print_back(text, conditions, canonical):
    f = Filter.parse(text)
    assert [(c.field, c.op, c.values) for c in f.conditions] == conditions
    assert str(f) == canonical
    assert Filter.parse(str(f)) == f  # canonical text round-trips


@pytest.mark.parametrize("text, message", [
    ("", "empty filter"),
    ("answer", "expected field=value"),
    ("answer=", "incomplete condition"),
    ("response~smells", "unknown keyword set 'smells'"),
    ("response~colors|places", "names one keyword set"),
])
def test_bad_filters_are_one_line_errors(text, message):
    with pytest.raises(VlmsteerError, match=message):
        Filter.parse(text)


def test_samples_and_records_follow_one_rule():
    """The same filter keeps the same items whether they are samples or store records:
    answers compare VQA-normalized ("Two." == "2"), keyword conditions match whole words."""
    samples = [Sample("a", None, "how many?", answers=["Two."], answer_type="number", meta={"style": "plain"}),
               Sample("b", None, "what color?", answers=["red"], answer_type="other", meta={"style": "colors"}),
               Sample("c", None, "is it reddish?", answers=["yes"], answer_type="yes/no", meta={"style": "plain"})]
    records = [{"id": s.id, "answer": s.answer, "prompt": s.prompt, "answer_type": s.answer_type, "meta": s.meta}
               for s in samples]
    cases = {"answer=2": ["a"], "answer=two|yes": ["a", "c"], "answer~colors": ["b"], "prompt!~colors": ["a", "b", "c"],
             "meta.style=plain,answer_type=yes/no": ["c"], "answer_type=other|number": ["a", "b"]}
    for text, want in cases.items():
        f = Filter.parse(text)
        assert [s.id for s in f.samples(samples)] == want, text
        assert [r["id"] for r in records if f.matches_record(r)] == want, text


def test_store_select_takes_a_filter(tmp_path):
    from vlmsteer.store import FeatureStore, StoreWriter

    w = StoreWriter(tmp_path / "s", {"hidden_size": 2, "layers": [0], "num_layers": 1})
    w.write_shard([{"id": "0", "response": "Yes"}, {"id": "1", "response": "no"}, {"id": "2", "response": "yes."}],
                  {0: np.zeros((3, 2), np.float32)})
    w.finish()
    store = FeatureStore.open(tmp_path / "s")
    assert store.select("response=yes").tolist() == [0, 2]
    assert store.select(Filter.parse("response=no")).tolist() == [1]
    assert store.select().tolist() == [0, 1, 2]


def test_value_of_names_the_answer_a_filter_asks_for():
    assert Filter.parse("answer=yes").value_of("answer", "response") == "yes"
    assert Filter.parse("answer_type=number,response=3").value_of("answer", "response") == "3"
    assert Filter.parse("answer=yes|no").value_of("answer") is None
    assert Filter.parse("response~colors").value_of("response") is None


def test_condition_is_a_value():
    c = Condition("answer", Op.EQUALS, ("yes",))
    assert c == Condition("answer", Op("="), ("yes",)) and str(c) == "answer=yes"
    assert Filter.of("answer=yes", Condition("answer_type", Op.EQUALS, ("yes/no",))) == \
        Filter.parse("answer=yes,answer_type=yes/no")
