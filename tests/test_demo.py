"""The shipped model and a reduced demo, end to end on the CPU."""

from __future__ import annotations

import json

import pytest

from vlmsteer.loading import demo_model_path
from vlmsteer.model import VLM

pytestmark = pytest.mark.skipif(not (demo_model_path() / "config.json").exists(),
                                reason="the shipped demo model is not in this checkout")


def test_shipped_model_resolves_and_answers():
    from vlmsteer.data import shapes
    from vlmsteer.data.sample import Sample
    from vlmsteer.evaluate.vqa_run import run_vqa
    import random

    vlm = VLM.load("shapes-llava")
    assert vlm.architecture == "LlavaForConditionalGeneration"
    assert VLM.load("vlmsteer/shapes-llava").num_layers == vlm.num_layers
    rng = random.Random(0)
    samples = []
    for i in range(40):
        scene = shapes.make_scene(31337, i)
        for q in shapes.questions(scene, rng):
            samples.append(Sample(f"{i}-{len(samples)}", shapes.render(scene), q.text, [q.answer] * 10, q.answer_type))
    _, report = run_vqa(vlm, samples, batch_size=64, max_new_tokens=3, progress=False)
    assert report.micro >= 85.0, report.per_type


def test_reduced_demo_writes_the_page(tmp_path):
    from vlmsteer.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-scenes", "30"]) == 0
    page = (out / "index.html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    for section in ("Baseline VQA accuracy", "Baseline captions", "Yes → No", "Steering captions",
                    "Neutralizing an attribute", "Refusal steering", "Linear separability"):
        assert section in page
    assert summary["vqa"]["n"] > 200
    assert summary["yes_to_no"]["fine_grained"]["source"]["before"] > 0
    assert set(summary["caption_styles"]) == {"colors", "places", "sentiments"}
    assert summary["caption_styles"]["colors"]["best"]["cider_before"] > 0
    assert summary["safety"]["harmful_prompts"] == 30 * 4
    assert len(summary["separability"]["layers"]) == 4
    assert (out / "separability" / "pca_layers.png").exists()
    for stage in ("vqa-baseline", "captions-style", "neutralize", "safety", "separability"):
        assert (out / stage / "run.json").exists(), stage
    assert (out / "vectors" / "yes-to-no.safetensors").exists()
    assert json.loads((out / "run.json").read_text())["model_id"] == "shapes-llava"


@pytest.mark.parametrize("question_type,words,k,need", [
    ("what color is the", ("red", "green", "blue", "yellow", "white", "black"), 6, 5),
    ("what shape is", ("circle", "square", "triangle", "diamond"), 4, 3),
])
def test_answer_concepts_ground_to_distinct_words(tmp_path, question_type, words, k, need):
    """Issue 5, acceptance 3: K-Means concepts of colour (shape) answers ground to different
    colour (shape) words first."""
    from vlmsteer.concepts import KMeansConcepts, ground_text
    from vlmsteer.data import load_vqav2, shapes
    from vlmsteer.data.filters import Condition, Filter, Op
    from vlmsteer.extract import ExtractConfig, extract
    from vlmsteer.selectors import Selector

    shapes.write_dataset(tmp_path / "d", 200, seed=11)
    samples = Filter((Condition("question_type", Op.EQUALS, (question_type,)),)).samples(load_vqav2(tmp_path / "d"))
    vlm = VLM.load("shapes-llava")
    last = vlm.num_layers - 1
    store, _ = extract(vlm, samples, tmp_path / "s", ExtractConfig(layers=[last], selector=Selector("last_prompt"),
                                                                    batch_size=64), progress=False)
    concepts = KMeansConcepts(k=k, seed=0).fit(store.features(last))
    first = [g.words[0] for g in ground_text(vlm, concepts)]
    assert len(set(first) & set(words)) >= need, first


def test_selection_finds_no_and_a_colour_on_the_shipped_model(tmp_path):
    """Issue 6, acceptance 4, reduced: concept-pair vectors of a K-Means dictionary of the
    model's answer features, ranked by the selection metric."""
    from vlmsteer.concepts import KMeansConcepts
    from vlmsteer.data import load_vqav2, shapes
    from vlmsteer.extract import ExtractConfig, extract
    from vlmsteer.evaluate.runner import generate_responses
    from vlmsteer.selectors import Selector
    from vlmsteer.steer import Steering
    from vlmsteer.steer.builders import all_concept_shifts
    from vlmsteer.steer.selection import rank, selection_score

    shapes.write_dataset(tmp_path / "build", 80, seed=12)
    shapes.write_dataset(tmp_path / "held", 30, seed=13)
    vlm = VLM.load("shapes-llava")
    last = vlm.num_layers - 1
    store, _ = extract(vlm, load_vqav2(tmp_path / "build"), tmp_path / "s",
                       ExtractConfig(layers=[last], selector=Selector("last_prompt"), batch_size=64), progress=False)
    concepts = KMeansConcepts(k=12, seed=0).fit(store.features(last))
    held = load_vqav2(tmp_path / "held")[:200]
    base = [r.text for r in generate_responses(vlm, held, batch_size=100, max_new_tokens=3, progress=False)]
    selections = []
    for name, v in all_concept_shifts(concepts.components_, layer=last).items():
        steered = [r.text for r in generate_responses(vlm, held, batch_size=100, max_new_tokens=3, progress=False,
                                                      steering=Steering(v, region="last_prompt"))]
        selections.append(selection_score(base, steered, name=name))
    top = [s.primary for s in rank(selections, distinct=True)[:5]]
    colours = {"red", "green", "blue", "yellow", "white", "black"}
    assert ["no"] in top and any(len(p) == 1 and p[0] in colours for p in top), top
