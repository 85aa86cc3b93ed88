from vlmsteer.data.keywords import COLORS, GENDER, PLACES, filter_samples, keyword_set
from vlmsteer.data.sample import Sample


def test_whole_word_matching():
    assert COLORS.find("A Red car and a reddish one") == ["red"]
    assert COLORS.find("redder than red-ish") == []
    assert GENDER.find("a woman and a man, not a human or manager") == ["woman", "man"]
    assert not GENDER.matches("shepherd")


def test_multi_word_terms():
    assert PLACES.find("waiting at the Bus Stop near the bus-stop") == ["bus stop", "bus stop"]
    assert PLACES.find("a bus stopped") == []
    assert PLACES.find("the living room") == ["living room"]


def test_subset_filter_keeps_matching_captions():
    samples = [Sample("1", None, "p", captions=["a red bus", "a bus"]), Sample("2", None, "p", captions=["a bus"])]
    sub = filter_samples(samples, keyword_set("colors"))
    assert [s.id for s in sub] == ["1"] and sub[0].captions == ["a red bus"]
    assert samples[0].captions == ["a red bus", "a bus"]  # the input is not modified


def test_keyword_conditions_filter_samples():
    from vlmsteer.data.filters import Filter
    from vlmsteer.data.sample import Sample

    samples = [Sample("a", None, "describe", captions=["a red circle", "a circle"]),
               Sample("b", None, "describe", captions=["a circle on the beach"]),
               Sample("c", None, "is it red ?", answers=["yes"], answer_type="yes/no")]
    assert [s.id for s in Filter.parse("captions~colors").samples(samples)] == ["a"]
    assert [s.id for s in Filter.parse("captions!~colors").samples(samples)] == ["b", "c"]
    assert [s.id for s in Filter.parse("prompt~colors,answer=yes").samples(samples)] == ["c"]


def test_cooccurring_set_names_the_testbeds_object_only():
    from vlmsteer.data.filters import Filter

    cooccurring = keyword_set("cooccurring")
    assert cooccurring.find("a red square on the beach with a Yellow circle .") == ["yellow circle"]
    assert cooccurring.find("a yellow circle and a white circle .") == ["yellow circle", "white circle"]
    assert cooccurring.find("a yellow square and a red circle .") == [] and not cooccurring.matches("yellow circles")
    samples = [Sample("h", None, "describe", captions=["a square on the beach with a yellow circle ."]),
               Sample("g", None, "describe", captions=["a yellow square on the beach ."])]
    assert [s.id for s in Filter.parse("captions!~cooccurring").samples(samples)] == ["g"]
