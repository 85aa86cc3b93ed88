"""The shipped model and a reduced demo, end to end on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vlmsteer.data import shapes
from vlmsteer.loading import demo_model_path
from vlmsteer.model import VLM

pytestmark = pytest.mark.skipif(not (demo_model_path() / "config.json").exists(),
                                reason="the shipped demo model is not in this checkout")


def test_shipped_model_resolves_and_answers():
    from vlmsteer.data import shapes
    from vlmsteer.data.sample import Sample
    from vlmsteer.runs.vqa import run_vqa
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


@pytest.fixture(scope="module")
def reduced_demo(tmp_path_factory):
    """A reduced demo (30 held-out scenes), and its page as a reader saw it while the last stage ran."""
    from vlmsteer.cli import main
    from vlmsteer.demo import run

    out = tmp_path_factory.mktemp("demo") / "demo"
    seen = {}
    separability = run._Demo.layers

    def layers(self):
        seen["page"] = (out / "index.html").read_text()
        return separability(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run._Demo, "layers", layers)
        assert main(["demo", "--out", str(out), "--n-scenes", "30"]) == 0
    return out, seen["page"]


@pytest.mark.slow
def test_reduced_demo_writes_every_section_with_its_report_progressively(reduced_demo):
    import re

    from vlmsteer.demo.page import STAGES

    out, running_page = reduced_demo
    seen = {"page": running_page}
    assert 'http-equiv="refresh"' in seen["page"] and "running…" in seen["page"]
    assert 'href="shift/report.html"' in seen["page"] and 'href="separability/report.html"' not in seen["page"]
    page = (out / "index.html").read_text()
    assert "refresh" not in page and "running" not in page
    summary = json.loads((out / "summary.json").read_text())
    for stage in STAGES:  # every section, its report linked and written, its run recorded
        assert f'id="{stage.key}"' in page and f'href="{stage.folder}/report.html"' in page, stage
        assert (out / stage.folder / "report.html").is_file() and (out / stage.folder / "run.json").is_file(), stage
    # reports first, raw files apart after them
    assert page.index('href="separability/report.html"') < page.index('id="files"')
    assert not re.search(r'href="[^"]+\.(json|jsonl|safetensors)"', page[:page.index('id="files"')])
    assert summary["vqa"]["n"] > 200
    assert summary["concepts"]["k"] == 12 and all(c["words"] for c in summary["concepts"]["concepts"])
    assert (out / "concepts" / "dictionary.safetensors").exists() and (out / "concepts" / "pca.png").exists()
    assert summary["yes_to_no"]["fine_grained"]["source"]["before"] > 0
    assert set(summary["caption_styles"]) == {"colors", "places", "sentiments"}
    assert summary["caption_styles"]["colors"]["best"]["cider_before"] > 0
    assert summary["safety"]["harmful_prompts"] == 30 * 4
    shift = summary["shift"]
    assert [e["step"] for e in shift["evolution"]] == [30, 60, 90] and [a["k"] for a in shift["ks"]] == [5, 10, 15]
    assert {"recovery_vs_alpha.png", "evolution.png", "ks.png"} <= set(shift["plots"])
    assert shift["loss"][1] < shift["loss"][0]  # the fine-tune learned something
    halluc = summary["hallucination"]  # the organism hallucinates, the coarse vectors take it back
    shipped, before, after = (halluc[k]["chair"]["chair_s"] for k in ("shipped", "organism_before", "organism_after"))
    assert before >= shipped + 0.2 and after <= before / 2, halluc
    f1 = [halluc[k]["pope"]["f1"] for k in ("shipped", "organism_before", "organism_after")]
    assert f1[1] <= f1[0] - 0.1 and f1[2] >= f1[1] + 0.05, f1  # POPE too: it says yes to absent circles, less so
    assert halluc["answer_vector"]["alpha"] in (4, 6, 8, 12, 16)  # of those swept on its vector world
    mended = json.loads((out / "hallucination" / "metrics.json").read_text())["mended"]
    assert len(mended) == halluc["captions_mended"] > 0 and all(m["invented"] for m in mended)
    report = (out / "hallucination" / "report.html").read_text()
    assert "Captions that lost an invented object" in report and "data:image/png;base64" in report
    assert len(summary["separability"]["layers"]) == 4
    assert (out / "separability" / "pca_layers.png").exists()
    assert (out / "yes-to-no" / "yes-to-no.safetensors").exists()
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
    from vlmsteer.positions import Selector

    shapes.write_dataset(tmp_path / "d", 200, seed=11)
    samples = Filter((Condition("question_type", Op.EQUALS, (question_type,)),)).samples(load_vqav2(tmp_path / "d"))
    vlm = VLM.load("shapes-llava")
    last = vlm.num_layers - 1
    store, _ = extract(vlm, samples, tmp_path / "s", ExtractConfig(layers=[last], selector=Selector("last_prompt"),
                                                                    batch_size=64), progress=False)
    concepts = KMeansConcepts(k=k, seed=0).fit(store.features(last))
    first = [g.words[0] for g in ground_text(vlm, concepts)]
    assert len(set(first) & set(words)) >= need, first


@pytest.mark.slow
def test_selection_finds_no_and_a_colour_on_the_shipped_model(tmp_path):
    """Issue 6, acceptance 4, reduced: concept-pair vectors of a K-Means dictionary of the
    model's answer features, ranked by the selection metric."""
    from vlmsteer.concepts import KMeansConcepts
    from vlmsteer.data import load_vqav2, shapes
    from vlmsteer.extract import ExtractConfig, extract
    from vlmsteer.runs.generation import generate_responses
    from vlmsteer.positions import Selector
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
        selections.append(selection_score(base, steered, name=name, relative_to="total"))
    top = [s.primary for s in rank(selections, distinct=True)[:5]]
    colours = {"red", "green", "blue", "yellow", "white", "black"}
    assert ["no"] in top and any(len(p) == 1 and p[0] in colours for p in top), top


def test_fine_grained_yes_to_no_from_the_cli(tmp_path, capsys):
    """Issue 15, acceptance 1 (reduced): from the CLI alone, the Yes->No vector applied only where
    the "yes" concept of a store is active moves the "yes" answers and leaves number and other
    questions alone; the same command without the condition is coarse steering."""
    from vlmsteer.cli import main

    shapes.write_dataset(tmp_path / "build", 60, seed=31)
    shapes.write_dataset(tmp_path / "held", 25, seed=32)
    held = str(tmp_path / "held")
    assert main(["extract", "--model", "shapes-llava", "--data", str(tmp_path / "build"), "--layer", "-1",
                 "--selector", "last_prompt", "--out", str(tmp_path / "s")]) == 0
    assert main(["vectors", "coarse", "--store", str(tmp_path / "s"), "--source", "answer=yes", "--target",
                 "answer=no", "--out", str(tmp_path / "v.safetensors")]) == 0
    common = ["--model", "shapes-llava", "--data", held, "--max-new-tokens", "3"]
    assert main(["eval", "vqa", *common, "--out", str(tmp_path / "base")]) == 0
    steer = ["--vector", str(tmp_path / "v.safetensors"), "--region", "last_prompt", "--baseline",
             str(tmp_path / "base"), "--source", "yes", "--target", "no"]
    assert main(["eval", "vqa", *common, *steer, "--condition-store", str(tmp_path / "s"), "--active", "answer=yes",
                 "--out", str(tmp_path / "fine")]) == 0
    assert main(["eval", "vqa", *common, *steer, "--out", str(tmp_path / "coarse")]) == 0
    fine = json.loads((tmp_path / "fine" / "metrics.json").read_text())
    coarse = json.loads((tmp_path / "coarse" / "metrics.json").read_text())
    vs = fine["vs_baseline"]
    assert vs["source_moved_fraction"] >= 0.8, vs
    assert abs(vs["accuracy_delta"]["number"]) <= 3 and abs(vs["accuracy_delta"]["other"]) <= 3, vs
    assert fine["steering"]["condition"]["kind"] == "nearest_concept"
    assert fine["steering"]["condition"]["active"] == ["yes"]
    assert json.loads((tmp_path / "fine" / "run.json").read_text())["options"]["active"] == "answer=yes"
    # without the condition every question is steered: other answer types break
    assert coarse["steering"]["condition"] is None
    assert coarse["vs_baseline"]["accuracy_delta"]["number"] < -20, coarse["vs_baseline"]


def test_dictionary_condition_steers_only_its_concept(tmp_path):
    """``--dictionary D --concept I``: rows whose feature the dictionary assigns elsewhere are
    not steered at all (their answers equal the unsteered ones)."""
    from vlmsteer.cli import main
    from vlmsteer.concepts import load_dictionary
    from vlmsteer.store import FeatureStore

    shapes.write_dataset(tmp_path / "w", 20, seed=33)
    w = str(tmp_path / "w")
    assert main(["extract", "--model", "shapes-llava", "--data", w, "--layer", "-1", "--selector", "last_prompt",
                 "--out", str(tmp_path / "s")]) == 0
    assert main(["concepts", str(tmp_path / "s"), "--layer", "-1", "-k", "4", "--out", str(tmp_path / "c")]) == 0
    assert main(["vectors", "concepts", "--dictionary", str(tmp_path / "c" / "dictionary.safetensors"),
                 "--out", str(tmp_path / "vc.safetensors")]) == 0
    d, meta = load_dictionary(tmp_path / "c" / "dictionary.safetensors")
    store = FeatureStore.open(tmp_path / "s")
    assigned = d.assign(store.features(meta["layer"]))
    active = int(np.bincount(assigned).argmax())
    other = (active + 1) % 4
    common = ["--model", "shapes-llava", "--data", w, "--max-new-tokens", "3"]
    assert main(["eval", "vqa", *common, "--out", str(tmp_path / "base")]) == 0
    assert main(["eval", "vqa", *common, "--vector", str(tmp_path / "vc.safetensors"), "--name",
                 f"{active}->{other}", "--alpha", "3", "--region", "last_prompt", "--dictionary",
                 str(tmp_path / "c" / "dictionary.safetensors"), "--concept", str(active),
                 "--out", str(tmp_path / "fine")]) == 0
    rows = lambda p: {json.loads(x)["id"]: json.loads(x)["prediction"]  # noqa: E731
                      for x in (p / "predictions.jsonl").read_text().splitlines()}
    base, fine = rows(tmp_path / "base"), rows(tmp_path / "fine")
    ids = [r["id"] for r in store.records]
    outside = [i for i, a in zip(ids, assigned) if a != active]
    inside = [i for i, a in zip(ids, assigned) if a == active]
    assert outside and all(base[i] == fine[i] for i in outside)
    assert sum(base[i] != fine[i] for i in inside) > 0
    run = json.loads((tmp_path / "fine" / "run.json").read_text())
    assert run["steering"]["condition"]["kind"] == "dictionary" and run["steering"]["condition"]["active"][0].startswith(
        f"{active}:")


@pytest.mark.parametrize("paired", [False, True])
def test_per_concept_neutralization_routes_each_image_to_its_concept_vector(tmp_path, paired):
    """The paper's per-concept vectors: one per colour concept, each steering only the images
    routed to it; routing before generation equals the same condition applied inside
    generation, and images routed to no concept keep their baseline caption."""
    from vlmsteer.data import load_coco_captions, shapes
    from vlmsteer.data.keywords import COLORS
    from vlmsteer.runs.captions import run_captions
    from vlmsteer.runs.experiments import GenerationSettings
    from vlmsteer.runs.neutralization import per_concept_routes, routed_captions
    from vlmsteer.model import VLM
    from vlmsteer.positions import Region
    from vlmsteer.steer import Steering
    from vlmsteer.steer.conditions import NearestConceptCondition

    vlm = VLM.load("shapes-llava")
    shapes.write_dataset(tmp_path / "build", 80, seed=1501)
    shapes.write_dataset(tmp_path / "held", 60, seed=501)
    build = load_coco_captions(tmp_path / "build", prompt=shapes.CAPTION_PROMPT)
    held = load_coco_captions(tmp_path / "held", prompt=shapes.CAPTION_PROMPT)
    g = GenerationSettings(batch_size=32, max_new_tokens=24)
    routes = per_concept_routes(vlm, build, COLORS, shapes.STYLE_PROMPTS["plain"], 2, tmp_path / "work", g,
                                k_attribute=3, k_neutral=3, paired=paired)
    assert routes.vectors[0] is None and len(routes.vectors) >= 3 and routes.labels[0] == "neutral"
    assert all(v.layers == [2] and v.method == "concept-pair" for v in routes.vectors[1:])
    groups = routes.route(vlm, held, tmp_path / "held-prompts", g)
    assert set(groups) <= set(range(len(routes.vectors))) and (groups == 0).any() and (groups > 0).any()
    base = run_captions(vlm, held, batch_size=32, max_new_tokens=24)
    steered = routed_captions(vlm, held, base, routes, groups, 6.0, g)
    assert all(s == b for s, b, c in zip(steered, base, groups) if c == 0)
    assert any(s != b for s, b, c in zip(steered, base, groups) if c > 0)
    c = int(np.bincount(groups)[1:].argmax()) + 1  # the busiest concept
    inside = run_captions(vlm, held, batch_size=32, max_new_tokens=24, steering=Steering(
        routes.vectors[c], 6.0, region=Region.GENERATED,
        condition=NearestConceptCondition(routes.centroids, [c], routes.labels, 2)))
    assert [t for t, k in zip(inside, groups) if k == c] == [t for t, k in zip(steered, groups) if k == c]
    assert [t for t, k in zip(inside, groups) if k != c] == [t for t, k in zip(base, groups) if k != c]


@pytest.mark.slow
def test_every_report_renders_in_a_browser_without_broken_images_or_script_errors(reduced_demo, tmp_path):
    """Each page the demo writes (the front page and every section's report), opened in
    headless Chromium: no script error, no console error, every image decoded, every local
    link pointing at a file; a screenshot that is not blank."""
    from browser import open_pages  # tests/browser.py

    out, _ = reduced_demo
    pages = [out / "index.html", *sorted(out.glob("*/report.html"))]
    assert len(pages) == 10
    for page in open_pages(pages, tmp_path):
        assert not page.errors, (page.path, page.errors)
        assert not page.broken_images, (page.path, page.broken_images)
        if page.path.parent.name in ("demo", "vqa-baseline", "concepts", "yes-to-no", "shift", "hallucination",
                                     "separability"):
            assert page.images > 0, page.path  # its figures and example images are there
        missing = [h for h in page.local_links if not (page.path.parent / h.split("#")[0]).exists()]
        assert not missing, (page.path, missing)
        assert page.screenshot_std > 5, page.path


def test_the_browser_check_sees_a_broken_image_a_script_error_and_a_dead_link(tmp_path):
    from browser import open_pages  # tests/browser.py

    page = tmp_path / "bad.html"
    page.write_text('<html><body><p>text</p><img src="missing.png"><a href="nothere.json">x</a>'
                    '<script>undefinedFunction()</script></body></html>')
    (check,) = open_pages([page], tmp_path)
    assert check.broken_images == ["missing.png"] and check.local_links == ["nothere.json"]
    assert any(e.startswith("script:") for e in check.errors)


@pytest.mark.slow
def test_the_readme_screenshots_are_made_from_a_demo_run(reduced_demo, tmp_path):
    """scripts/demo_screenshots.py photographs a demo's page: the top and the shift section, at the
    sizes the README shows, neither blank, the two different."""
    import importlib.util
    import shutil

    from PIL import Image

    from browser import _require  # tests/browser.py

    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        _require("chromium")
    path = Path(__file__).resolve().parents[2] / "scripts" / "demo_screenshots.py"
    spec = importlib.util.spec_from_file_location("demo_screenshots", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out, _ = reduced_demo
    shots = script.screenshots(out / "index.html", tmp_path)
    pixels = [np.asarray(Image.open(p).convert("L"), dtype=float) for p in shots]
    assert [Image.open(p).size for p in shots] == [(script.WIDTH, h) for _, _, h in script.SHOTS]
    assert all(p.std() > 5 for p in pixels) and not np.array_equal(pixels[0][:1390], pixels[1])
