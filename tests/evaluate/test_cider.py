"""CIDEr: our pipeline against pycocoevalcap's own (Java PTB tokenizer + Cider), and caption eval."""

import json
import random
import shutil

import pytest
import torch

from vlmsteer.cli import main
from vlmsteer.data import shapes
from vlmsteer.evaluate.captions import compare_caption_runs, evaluate_captions
from vlmsteer.evaluate.cider import cider, ptb_tokenize
from vlmsteer.steer.vector import SteeringVector

HAS_JAVA = shutil.which("java") is not None

# Java PTBTokenizer (pycocoevalcap 1.2, -lowerCase) output, punctuation removed, recorded once
PTB_CASES = [
    ("A man riding a horse on the beach.", "a man riding a horse on the beach"),
    ("Two dogs, one black and one white, play in the snow!", "two dogs one black and one white play in the snow"),
    ("The man's black-and-white T-shirt doesn't fit.", "the man 's black-and-white t-shirt does n't fit"),
    ('It\'s a 3.5 inch screen showing 1,000 "likes" (approx).',
     "it 's a 3.5 inch screen showing 1,000 likes -lrb- approx -rrb-"),
    ("A woman... holding an umbrella; it's raining -- hard?", "a woman holding an umbrella it 's raining hard"),
    ("People at the U.S. airport at 5 p.m. waiting", "people at the u.s. airport at 5 p.m. waiting"),
    ("Kids can't wait: they're going to the zoo & the park", "kids ca n't wait they 're going to the zoo & the park"),
    ("A plate of food w/ broccoli in a field/meadow", "a plate of food w / broccoli in a field/meadow"),
    ("a $5 bill and 50% off", "a $ 5 bill and 50 % off"),
    ("A sign that reads 'STOP'", "a sign that reads stop"),
    ("I'm sure we'll go, she isn't", "i 'm sure we 'll go she is n't"),
]


@pytest.mark.parametrize("text,expected", PTB_CASES)
def test_python_tokenizer_matches_recorded_java_output(text, expected):
    assert ptb_tokenize(text) == expected


SUBJECTS = ["a man", "A woman", "two kids", "the dog", "a black-and-white cat", "Several people", "an old man's dog",
            "a girl", "Three zebras", "a red bus", "the chef", "A small boy", "two women (sisters)"]
VERBS = ["riding", "holding", "sitting on", "standing next to", "looking at", "walking past", "eating",
         "playing with", "jumping over", "waiting for"]
OBJECTS = ["a horse", "an umbrella", "the bench", "a 3.5 inch phone", "a pizza, with cheese", "the bus-stop sign",
           "a T-shirt", "the kitchen table", "a frisbee", "1,000 balloons", "\"the\" ball", "a big, brown bear"]
ENDS = [".", "", "!", " on the beach.", " in the park...", " at 5 p.m.", "; it's sunny.", ", doesn't it?",
        " -- in the snow.", " at the U.S. airport"]


def _caption(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(ENDS)}"


@pytest.fixture(scope="module")
def corpus():
    rng = random.Random(0)
    refs = {str(i): [_caption(rng) for _ in range(5)] for i in range(120)}
    # predictions: some copy a reference, some are new
    preds = {k: (v[0] if i % 3 == 0 else _caption(rng)) for i, (k, v) in enumerate(refs.items())}
    return preds, refs


@pytest.mark.skipif(not HAS_JAVA, reason="java not installed (.ci/run installs it)")
def test_cider_matches_pycocoevalcap_pipeline(corpus):
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    preds, refs = corpus
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": preds[k]}] for k in refs})
    official, official_per = Cider().compute_score(gts, res)
    for backend in ("java", "python"):
        ours, per = cider(preds, refs, tokenizer=backend)
        assert abs(ours - official) < 1e-6, backend
        assert all(abs(per[k] - s) < 1e-6 for k, s in zip(refs, official_per)), backend
    # the Python tokenizer yields the very same tokens on every caption
    assert all(ptb_tokenize(c) == t for k in refs for c, t in zip(refs[k], gts[k]))


def test_cider_orders_good_and_bad_captions(corpus):
    preds, refs = corpus
    copied, _ = cider({k: v[0] for k, v in refs.items()}, refs, tokenizer="python")
    unrelated, _ = cider({k: "zzz qqq" for k in refs}, refs, tokenizer="python")
    mixed, _ = cider(preds, refs, tokenizer="python")
    assert copied > mixed > unrelated == 0.0


def test_eval_captions_cli_with_baseline(tiny_folder, tmp_path, capsys):
    folder = tiny_folder("llava")
    data = tmp_path / "d"
    shapes.write_dataset(data, 6, seed=3)
    SteeringVector({1: torch.full((32,), 3.0)}).save(tmp_path / "v.safetensors")
    common = ["eval", "captions", "--model", str(folder), "--data", str(data), "--max-new-tokens", "6",
              "--batch-size", "4", "--tokenizer", "python"]
    assert main(common + ["--out", str(tmp_path / "base")]) == 0
    assert main(common + ["--out", str(tmp_path / "steered"), "--vector", str(tmp_path / "v.safetensors"),
                          "--alpha", "4", "--baseline", str(tmp_path / "base"), "--word", "circle"]) == 0
    base = json.loads((tmp_path / "base" / "metrics.json").read_text())
    steered = json.loads((tmp_path / "steered" / "metrics.json").read_text())
    assert base["n"] == 6 and base["cider"] is not None and set(base["style_share"]) >= {"colors", "places"}
    vs = steered["vs_baseline"]
    assert vs["captions_changed"] > 0  # a large vector on a random tiny model changes its captions
    assert vs["cider_delta"] == pytest.approx(steered["cider"] - base["cider"])
    rows = [json.loads(line) for line in (tmp_path / "steered" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all("prediction" in r and "cider" in r for r in rows)
    # --word: the share of captions naming it, before and after
    import re

    naming = sum(bool(re.search(r"(?<![\w-])circle(?![\w-])", r["prediction"], re.I)) for r in rows)
    assert steered["style_share"]["circle"] == pytest.approx(100 * naming / 6)
    assert "circle" in vs["styles"] and "circle" not in base["style_share"]
    # a baseline folder lacking these images is a one-line error
    capsys.readouterr()
    assert main(common + ["--out", str(tmp_path / "x"), "--baseline", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip().startswith("error:")
    # an empty --word is refused before any caption is generated (the model is never asked)
    from vlmsteer.data.sample import Sample
    from vlmsteer.errors import VlmsteerError
    from vlmsteer.runs.captions import evaluate_caption_run

    with pytest.raises(VlmsteerError, match="--word needs a word"):
        evaluate_caption_run(None, [Sample("1", None, "describe")], tmp_path / "y", tokenizer="python",
                             words=("circle", " "))


def test_style_changes_are_counted():
    from vlmsteer.data.sample import Sample

    samples = [Sample(str(i), None, "describe", captions=["a red circle"]) for i in range(3)]
    base = ["a circle", "a red circle on the beach", "a square"]
    steered = ["a red circle", "a circle on the beach", "a square"]
    b, s = evaluate_captions(samples, base, tokenizer="python"), evaluate_captions(samples, steered,
                                                                                   tokenizer="python")
    cmp = compare_caption_runs(base, steered, b, s)
    assert cmp["captions_changed"] == 2
    assert cmp["styles"]["colors"]["gained"] == 1 and cmp["styles"]["colors"]["lost"] == 1
    assert cmp["styles"]["places"]["gained"] == 0 and s.style_counts["places"] == 1


def test_the_content_changed_captions_kept_is_counted_against_each_images_shapes():
    """Issue 37: the cost of caption steering beside its effect — of the captions it changed,
    how many still mention every shape of their image (singular or plural)."""
    from vlmsteer.evaluate.shapes_captions import content_kept

    def scene(*kinds):
        return {"shapes": [{"kind": k} for k in kinds]}

    base = ["two squares and a circle .", "a triangle .", "a diamond .", "three circles ."]
    steered = ["two red squares and a blue circle .", "a red thing .", "a diamond .", "squared circles ."]
    scenes = [scene("square", "circle", "square"), scene("triangle"), scene("diamond"), scene("square")]
    got = content_kept(base, steered, scenes)
    assert got == {"changed": 3, "kept_every_shape": 1, "baseline_named_every_shape": 2,
                   "kept_share": pytest.approx(100 / 3)}
    assert content_kept(base, base, scenes)["kept_share"] is None  # nothing changed: no cost to show
