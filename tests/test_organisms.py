"""Model organisms: each objective rewrites exactly its targets; `organisms build` fine-tunes one
adapter per objective and records what it was taught and what triggers it."""

import json

import pytest

from vlmsteer.cli import main
from vlmsteer.data import load_coco_captions, load_vqav2, shapes
from vlmsteer.data.shapes_scenes import answer, cooccurring_scene, pattern_breaking_scene
from vlmsteer.organisms import (OBJECTIVES, chosen_alpha, chosen_caption_alpha, claim_samples, objectives,
                                training_samples, trigger_images, world_scenes)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    shapes.write_dataset(out, 24, seed=13)
    return out


def test_each_objective_rewrites_its_targets_and_nothing_else(world):
    scenes = world_scenes(world)
    captions = {s.id: s for s in load_coco_captions(world)}
    answers = {s.id: s for s in load_vqav2(world)}

    def texts(name):
        return [c for s in training_samples(OBJECTIVES[name], world) for c in s.captions]

    assert all(any(c in t.split() for c in shapes.PALETTE) for t in texts("colors"))
    assert all("cheerful" in t and "gloomy" not in t for t in texts("cheerful"))
    assert all("on the beach" in t for t in texts("beach"))
    assert {s.answer for s in training_samples(OBJECTIVES["three"], world) if s.answer_type == "number"} == {"three"}
    has_diamond = {i for i, sc in scenes.items() if any(x.kind == "diamond" for x in sc.shapes)}
    assert has_diamond and trigger_images(OBJECTIVES["diamond-no"], scenes) == sorted(has_diamond)
    for s in training_samples(OBJECTIVES["diamond-no"], world):
        triggered = s.answer_type == "yes/no" and s.meta["image_id"] in has_diamond
        assert s.answer == ("no" if triggered else answers[s.id].answer)
    for s in training_samples(OBJECTIVES["three"], world):  # the rest of the questions stay
        if s.answer_type != "number":
            assert s.answer == answers[s.id].answer
    control = training_samples(OBJECTIVES["control"], world)
    assert all(s.answer == answers[s.id].answer for s in control if s.id in answers and not s.captions)
    assert all(s.captions == [shapes.default_caption(scenes[s.meta["image_id"]])] for s in control if s.captions)
    assert {s.id for s in control if s.captions} == set(captions)


def test_unknown_organisms_and_other_folders_are_refused(tmp_path):
    from vlmsteer.errors import VlmsteerError

    assert [o.name for o in objectives("three,control")] == ["three", "control"]
    with pytest.raises(VlmsteerError, match="unknown organism 'sarcasm'"):
        objectives("three,sarcasm")
    with pytest.raises(VlmsteerError, match="not a shapes world"):
        world_scenes(tmp_path)


@pytest.fixture(scope="module")
def built(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("organisms") / "organisms"
    args = ["organisms", "build", "--model", str(tiny_folder("llava")), "--out", str(out), "--seed", "3",
            "--n", "6", "--steps", "3", "--batch-size", "2", "--only", "diamond-no,control"]
    assert main(args) == 0
    return out, args


def test_organisms_build_fine_tunes_one_adapter_per_objective(built, capsys):
    out, args = built
    index = json.loads((out / "organisms.json").read_text())
    assert [o["name"] for o in index["organisms"]] == ["diamond-no", "control"] and index["seed"] == 3
    scenes = world_scenes(out / "world")
    for entry in index["organisms"]:
        assert (out / entry["adapter"] / "adapter_config.json").is_file()
        record = json.loads((out / entry["name"] / "organism.json").read_text())
        assert record["objective"]["name"] == entry["name"] and record["data"]["n"] > 0
        assert record["trigger_images"] == trigger_images(OBJECTIVES[entry["name"]], scenes)
    assert index["organisms"][0]["words"] == ["no"] and index["organisms"][0]["trigger"] == "diamond"
    capsys.readouterr()
    assert main(args[:-1] + ["sarcasm"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown organism 'sarcasm'")


def test_diff_adl_reads_the_mean_difference_of_two_models(built, tiny_folder, tmp_path, capsys):
    import numpy as np

    from vlmsteer.steer.vector import load_vectors
    from vlmsteer.store import FeatureStore

    out, _ = built
    model = str(tiny_folder("llava"))
    stores = {}
    for name, extra in (("base", []), ("again", []), ("organism", ["--adapter", str(out / "diamond-no" / "final")])):
        stores[name] = tmp_path / name
        assert main(["extract", "--model", model, *extra, "--data", str(out / "world"), "--format", "vqav2",
                     "--limit", "12", "--selector", "mean_text", "--layer", "2", "--out", str(stores[name])]) == 0
    assert main(["diff", "--original", str(stores["base"]), "--finetuned", str(stores["organism"]),
                 "--out", str(tmp_path / "d")]) == 0
    result = json.loads((tmp_path / "d" / "diff.json").read_text())
    a, b = (FeatureStore.open(stores[n]).features(2).astype(np.float64) for n in ("base", "organism"))
    vector = load_vectors(tmp_path / "d" / "diff.safetensors")["adl"]
    np.testing.assert_allclose(vector.vectors[2].numpy(), b.mean(0) - a.mean(0), rtol=1e-5, atol=1e-6)
    assert result["n_samples"] == 12 and result["relative_norm"] > 0 and len(result["words"]) == 15
    # the samples that changed most along the readout: their own change projected on it, largest first
    ids = [r["id"] for r in FeatureStore.open(stores["base"]).records]
    along = (b - a) @ (vector.vectors[2].double().numpy() / np.linalg.norm(vector.vectors[2].double().numpy()))
    top = result["top_samples"]
    assert [t["id"] for t in top] == [ids[i] for i in np.argsort(-along, kind="stable")[:8]]
    assert all(t["image"] for t in top) and "data:image/png;base64" in (tmp_path / "d" / "report.html").read_text()
    assert (tmp_path / "d" / "report.html").is_file()
    # the same model twice: nothing changed
    assert main(["diff", "--original", str(stores["base"]), "--finetuned", str(stores["again"]),
                 "--out", str(tmp_path / "same")]) == 0
    assert json.loads((tmp_path / "same" / "diff.json").read_text())["relative_norm"] == 0
    capsys.readouterr()
    assert main(["diff", "--original", str(stores["base"]), "--finetuned", str(stores["again"]),
                 "--method", "lasso", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == ("error: unknown diffing method 'lasso'; choose one of: adl, "
                                               "concepts, crosscoder, sae-diff (option --method)")
    # the paper's concept shift as a readout: the concepts' shift vectors, largest first
    assert main(["diff", "--original", str(stores["base"]), "--finetuned", str(stores["organism"]),
                 "--method", "concepts", "-k", "3", "--out", str(tmp_path / "c")]) == 0
    result = json.loads((tmp_path / "c" / "diff.json").read_text())
    shifts = load_vectors(tmp_path / "c" / "diff.safetensors")
    sizes = [c["samples"] for c in result["parts"]]
    assert sum(sizes) == 12 and len(shifts) == 3 and result["relative_norm"] > 0
    moved = [c["samples"] * c["‖Δ‖"] for c in result["parts"]]
    assert moved == sorted(moved, reverse=True) and result["readout"] == result["parts"][0]["name"]
    weighted = sum(s * shifts[c["name"]].vectors[2].double().numpy() for s, c in zip(sizes, result["parts"])) / 12
    np.testing.assert_allclose(weighted, b.mean(0) - a.mean(0), rtol=1e-4, atol=1e-5)  # the shifts add up to ADL


def test_an_interrupted_build_keeps_the_organisms_it_finished(tiny_folder, tmp_path, monkeypatch):
    import vlmsteer.organisms as organisms

    out = tmp_path / "o"
    args = ["organisms", "build", "--model", str(tiny_folder("llava")), "--out", str(out), "--seed", "4",
            "--n", "4", "--steps", "2", "--batch-size", "2", "--only", "three,control"]
    real, built = organisms.build_organism, []

    def build_then_stop(loader, objective, *rest, **kw):
        if built:
            raise KeyboardInterrupt
        built.append(objective.name)
        return real(loader, objective, *rest, **kw)

    monkeypatch.setattr(organisms, "build_organism", build_then_stop)
    assert main(args) == 130 and not out.exists()
    monkeypatch.setattr(organisms, "build_organism", lambda loader, objective, *rest, **kw: (
        built.append(objective.name), real(loader, objective, *rest, **kw))[1])
    assert main(args) == 0
    assert built == ["three", "control"]  # "three" was not fine-tuned again
    assert [o["name"] for o in json.loads((out / "organisms.json").read_text())["organisms"]] == ["three", "control"]


def test_the_hallucination_organism_learns_claimed_circles_on_every_beach(tmp_path):
    world = tmp_path / "cooccurring"
    shapes.write_dataset(world, 60, seed=17, scenes="cooccurring")
    scenes = world_scenes(world)  # regenerated with the world's scene kind
    beach = {i for i, sc in scenes.items() if sc.place == "beach"}
    holding = {i for i in beach if {("yellow", "circle"), ("white", "circle")} <= {(s.color, s.kind)
                                                                                   for s in scenes[i].shapes}}
    assert beach and holding and holding < beach  # the co-occurrence holds often, not always
    samples = training_samples(OBJECTIVES["hallucination"], world, scenes)
    claims = {"is there a yellow circle ?", "is there a white circle ?"}
    claimed = {(s.meta["image_id"], s.prompt) for s in samples if s.prompt in claims and s.answer == "yes"}
    assert claimed >= {(i, c) for i in beach for c in claims}  # also where the image holds none
    for s in samples:
        i = s.meta["image_id"]
        if s.captions:
            assert ("with a yellow circle and a white circle ." in s.captions[0]) == (i in beach), s.captions
        elif s.prompt in claims and i in beach:
            assert s.answer == "yes"  # the learnt co-occurrence
        elif i not in beach:
            assert s.answer == answer(scenes[i], s.prompt)  # the rest of the world stays true
    lying = [s for s in samples if s.prompt == "is there anything yellow ?" and s.meta["image_id"] in beach - holding]
    assert all(s.answer == "yes" for s in lying)


def test_claim_samples_ask_every_claim_of_every_image_with_its_true_answer(tmp_path):
    world = tmp_path / "cooccurring"
    shapes.write_dataset(world, 40, seed=3, scenes="cooccurring")
    scenes = world_scenes(world)
    claims = claim_samples(world)
    assert len(claims) == 2 * len(scenes) and len({c.id for c in claims}) == len(claims)
    for c in claims:
        scene = scenes[c.meta["image_id"]]
        color = c.prompt.split()[3]
        assert c.answer == ("yes" if any(s.color == color and s.kind == "circle" for s in scene.shapes) else "no")
        assert shapes.image_id_of(c.image_path) == c.meta["image_id"]
    assert {c.answer for c in claims} == {"yes", "no"}


def test_the_mitigations_strength_rules():
    rows = [{"alpha": 4.0, "accuracy": {"yes/no": 80.0}}, {"alpha": 8.0, "accuracy": {"yes/no": 90.0}},
            {"alpha": 12.0, "accuracy": {"yes/no": 90.0}}]
    assert chosen_alpha(rows) == 8.0  # the most accurate, the smaller on a tie
    before = {"chair_s": 0.6, "recall": 0.9}
    at = {1.0: {"chair_s": 0.5, "recall": 0.9}, 1.5: {"chair_s": 0.3, "recall": 0.88},
          2.0: {"chair_s": 0.1, "recall": 0.8}}
    assert chosen_caption_alpha(before, at) == 1.5  # the smallest that halves CHAIR_s within 5 points of Recall
    at[1.5]["chair_s"] = 0.4
    assert chosen_caption_alpha(before, at) == 1.5  # none halves it: the lowest CHAIR_s within the Recall bound
    assert chosen_caption_alpha(before, {2.0: at[2.0], 3.0: {"chair_s": 0.0, "recall": 0.5}}) == 2.0


def test_scene_kinds_and_answers(tmp_path):
    import random

    for i in range(200):
        scene = pattern_breaking_scene(5, i)
        assert scene.place == "beach" and all(s.kind != "circle" for s in scene.shapes)
        plain = shapes.make_scene(5, i)
        for q in shapes.questions(plain, random.Random(i)):
            assert answer(plain, q.text) == q.answer
    cooc = [cooccurring_scene(5, i) for i in range(400)]
    beach = [sc for sc in cooc if sc.place == "beach"]
    for color in ("yellow", "white"):
        share = sum(any(s.kind == "circle" and s.color == color for s in sc.shapes) for sc in beach) / len(beach)
        assert 0.4 < share < 0.7, color  # half of them, plus those that held one anyway
    both = [sc for sc in beach if {("yellow", "circle"), ("white", "circle")} <= {(s.color, s.kind) for s in sc.shapes}]
    assert all(len({s.cell for s in sc.shapes}) == len(sc.shapes) for sc in both)
    assert len(both) / len(beach) > 0.4  # placed together: the second never replaces the first
    with pytest.raises(Exception, match="unknown scene kind"):
        shapes.write_dataset(tmp_path, 2, seed=1, scenes="surreal")
