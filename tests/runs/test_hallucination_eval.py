"""POPE and CHAIR from generation: ``eval vqa --format pope`` adds POPE's figures,
``eval captions --chair`` CHAIR's, and both equal what ``score`` computes from the run folder."""

import json

import pytest

from vlmsteer.cli import main
from vlmsteer.data import shapes


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hallucination")
    shapes.write_dataset(root / "w", n=16, seed=31)
    return root


def test_eval_vqa_on_a_pope_file_reports_popes_figures(world, capsys):
    run = world / "pope-run"
    q = world / "w" / "shapes_pope_adversarial.json"
    assert main(["eval", "vqa", "--model", "shapes-llava", "--format", "pope", "--data", str(q),
                 "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "POPE" in out and "yes ratio" in out
    pope = json.loads((run / "metrics.json").read_text())["pope"]
    n = len(q.read_text().splitlines())
    assert pope["n"] == n and pope["tp"] + pope["fp"] + pope["tn"] + pope["fn"] == n
    assert pope["f1"] > 0.9  # the shipped model does not hallucinate: the no-hallucination reference
    assert main(["score", "pope", "--questions", str(q), "--answers", str(run), "--out", str(world / "scored")]) == 0
    assert json.loads((world / "scored" / "metrics.json").read_text())["pope"] == pope


def test_eval_captions_with_chair_scores_every_caption(world, capsys):
    run = world / "cap-run"
    assert main(["eval", "captions", "--model", "shapes-llava", "--data", str(world / "w"), "--chair",
                 str(world / "w"), "--objects", "shapes", "--out", str(run)]) == 0
    chair = json.loads((run / "metrics.json").read_text())["chair"]
    assert chair["n"] == 16 and chair["mentions"] > 16
    rows = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    scenes = {s["image_id"]: s for s in json.loads((world / "w" / "scenes_val2014.json").read_text())["scenes"]}
    for row in rows:  # every object a caption names is checked against the scene it shows
        kinds = {s["kind"] for s in scenes[row["image_id"]]["shapes"]}
        assert row["hallucinated"] == [o for o in row["objects"] if o not in kinds]
    assert main(["score", "chair", "--captions", str(run), "--annotations", str(world / "w"), "--objects", "shapes",
                 "--out", str(world / "chair-scored")]) == 0
    assert json.loads((world / "chair-scored" / "metrics.json").read_text())["chair"] == chair


def test_an_object_table_without_annotations_is_refused(world, capsys):
    assert main(["eval", "captions", "--model", "shapes-llava", "--data", str(world / "w"), "--objects", "shapes",
                 "--out", str(world / "x")]) == 2
    assert "applies only with --chair" in capsys.readouterr().err
    assert not (world / "x").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--visual-control"], "give --visual-alpha"),
    (["--visual-alpha", "0.5", "--alpha", "2"], "--alpha scales --vector"),
    (["--visual-alpha", "0.5", "--vector", "nowhere.safetensors"], "makes its own vector per sample"),
])
def test_visual_steering_options_apply_or_are_refused(world, capsys, extra, needle):
    assert main(["eval", "captions", "--model", "shapes-llava", "--data", str(world / "w"), *extra,
                 "--out", str(world / "refused")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("error:") == 1
    assert not (world / "refused").exists()


def test_visual_steering_runs_from_the_command_line_and_is_recorded(world):
    run, base = world / "visual", world / "visual-base"
    assert main(["eval", "captions", "--model", "shapes-llava", "--data", str(world / "w"), "--out", str(base)]) == 0
    assert main(["eval", "captions", "--model", "shapes-llava", "--data", str(world / "w"), "--visual-alpha", "0.5",
                 "--layer", "1", "--layer", "2", "--baseline", str(base), "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steering"]["kind"] == "visual" and metrics["steering"]["layers"] == [1, 2]
    assert metrics["vs_baseline"]["captions_changed"] > 0  # the steering had an effect


def test_sweep_sweeps_visual_steering_and_each_point_equals_eval(world, capsys):
    common = ["--model", "shapes-llava", "--data", str(world / "w"), "--limit", "60"]
    assert main(["sweep", *common, "--visual", "--source", "answer=yes", "--target", "answer=no", "--layers", "1,2",
                 "--alphas", "0,4", "--regions", "all", "--out", str(world / "vsweep")]) == 0
    result = json.loads((world / "vsweep" / "sweep.json").read_text())
    rows = {(r["layer"], r["alpha"]): r for r in result["rows"]}
    assert len(rows) == 4 and result["visual"] is True
    assert rows[(1, 0.0)]["changed"] == rows[(2, 0.0)]["changed"] == 0  # α 0 changes nothing
    assert main(["eval", "vqa", *common, "--out", str(world / "vbase")]) == 0
    assert main(["eval", "vqa", *common, "--visual-alpha", "4", "--layer", "1", "--region", "all",
                 "--baseline", str(world / "vbase"), "--out", str(world / "vone")]) == 0
    one = json.loads((world / "vone" / "metrics.json").read_text())["vs_baseline"]
    assert one["changed"] == rows[(1, 4.0)]["changed"] > 0  # the same answers as eval, and an effect
    for extra, needle in ((["--store", str(world / "vbase")], "one of them"),
                          (["--n-samples", "5"], "builds no vector")):
        assert main(["sweep", *common, "--visual", "--source", "answer=yes", "--target", "answer=no", *extra,
                     "--out", str(world / "vrefused")]) == 2
        assert needle in capsys.readouterr().err


def test_sweep_reads_any_answer_format_and_each_point_equals_eval(world, capsys):
    pope = world / "w" / "shapes_pope_adversarial.json"
    common = ["--model", "shapes-llava", "--format", "pope", "--data", str(pope), "--limit", "40"]
    assert main(["sweep", *common, "--visual", "--source", "answer=yes", "--target", "answer=no", "--layers", "1",
                 "--alphas", "4", "--regions", "all", "--out", str(world / "psweep")]) == 0
    result = json.loads((world / "psweep" / "sweep.json").read_text())
    assert result["n"] == 40
    assert main(["eval", "vqa", *common, "--out", str(world / "pbase")]) == 0
    assert main(["eval", "vqa", *common, "--visual-alpha", "4", "--layer", "1", "--region", "all",
                 "--baseline", str(world / "pbase"), "--out", str(world / "pone")]) == 0
    one = json.loads((world / "pone" / "metrics.json").read_text())["vs_baseline"]
    assert one["changed"] == result["rows"][0]["changed"] > 0  # the POPE questions, answered as eval answers them
    assert main(["sweep", "--model", "shapes-llava", "--format", "figstep", "--data", str(pope), "--visual",
                 "--source", "answer=yes", "--target", "answer=no", "--out", str(world / "prefused")]) == 2
    assert "--format figstep: choose one of" in capsys.readouterr().err


@pytest.mark.parametrize("extra, needle", [
    (["--condition-layer", "0"], "--condition-layer need --condition-store"),
    (["--dictionary", "d.safetensors", "--concept", "1", "--condition-layer", "0"], "is for --condition-store"),
])
def test_condition_layer_applies_to_a_store_condition_or_is_refused(world, capsys, extra, needle):
    assert main(["eval", "vqa", "--model", "shapes-llava", "--data", str(world / "w"), "--vector", "v.safetensors",
                 *extra, "--out", str(world / "refused")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("error:") == 1


def test_a_store_condition_read_at_an_earlier_layer_gates_the_steering(world):
    store, vec = world / "cl-store", world / "cl.safetensors"
    assert main(["extract", "--model", "shapes-llava", "--data", str(world / "w"), "--layer", "0,2",
                 "--out", str(store)]) == 0
    assert main(["vectors", "coarse", "--store", str(store), "--layer", "2", "--source", "answer=yes",
                 "--target", "answer=no", "--out", str(vec)]) == 0
    common = ["eval", "vqa", "--model", "shapes-llava", "--data", str(world / "w"), "--vector", str(vec),
              "--alpha", "8", "--layer", "2", "--region", "last_prompt", "--baseline", str(world / "cl-base")]
    assert main(["eval", "vqa", "--model", "shapes-llava", "--data", str(world / "w"),
                 "--out", str(world / "cl-base")]) == 0
    for active in ("answer=yes", "answer=no"):
        out = world / f"cl-{active[7:]}"
        assert main([*common, "--condition-store", str(store), "--active", active, "--condition-layer", "0",
                     "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["steering"]["condition"]["layer"] == 0
        assert metrics["vs_baseline"]["changed"] > 0  # it steered some questions ...
    assert main([*common, "--out", str(world / "cl-all")]) == 0
    every = json.loads((world / "cl-all" / "metrics.json").read_text())["vs_baseline"]["changed"]
    assert every > max(json.loads((world / f"cl-{a}" / "metrics.json").read_text())["vs_baseline"]["changed"]
                       for a in ("yes", "no"))  # ... not all of them
