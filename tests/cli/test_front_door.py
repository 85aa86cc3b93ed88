"""What a newcomer meets first (issue 23): a mistyped model name, the help pages, the steering
region's default, the printed comparison with a baseline, separability's left-out samples,
concepts named by their top word."""

from __future__ import annotations

import json
import re
import time

import pytest
import typer

from vlmsteer.cli import _tidy_help, app, main
from vlmsteer.data import shapes
from vlmsteer.errors import VlmsteerError


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"},
                                 {"HF_HUB_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9"}])  # a closed port
def test_a_mistyped_model_name_offline_is_one_line_at_once_naming_the_shipped_model(env, monkeypatch, capsys):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    t0 = time.perf_counter()
    assert main(["info", "shapes-lava"]) == 2
    assert time.perf_counter() - t0 < 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean shapes-llava?" in err[0] and "cannot be reached" in err[0], err
    assert main(["info", "./no-such-folder"]) == 2
    assert "no such model folder" in capsys.readouterr().err


def test_the_hub_is_looked_up_only_when_it_answers(monkeypatch):
    import socket

    from vlmsteer.loading import hub_reachable, resolve_model_id

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    try:
        assert hub_reachable() and resolve_model_id("someone/some-model") == "someone/some-model"
    finally:
        server.close()
    assert not hub_reachable()
    with pytest.raises(VlmsteerError, match="cannot be reached"):
        resolve_model_id("someone/some-model")


def _commands(command, path=("vlmsteer",)):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, path + (name,))


def test_help_has_no_type_noise_and_every_option_explains_itself(capsys):
    command = typer.main.get_command(app)
    _tidy_help(command)
    for path, cmd in _commands(command):
        for param in cmd.params:
            assert (param.help or "").strip(), f"{' '.join(path)} {param.opts} has no help text"
            assert not any(o.startswith("--no-no-") for o in param.secondary_opts), (path, param.opts)
    for args in (["concepts", "--help"], ["eval", "vqa", "--help"], ["data", "check", "--help"], ["--help"]):
        with pytest.raises(BaseException):  # click ends a help page with an exit
            command.main(args=args, prog_name="vlmsteer", standalone_mode=True)
        text = capsys.readouterr().out
        assert "<bool>" not in text and not re.search(r"\{\w+\}", text), text
    assert main(["concepts", "--help"]) in (0, None)
    assert "Usage: vlmsteer concepts [OPTIONS] STORE" in capsys.readouterr().out


@pytest.fixture(scope="module")
def steered(tmp_path_factory):
    root = tmp_path_factory.mktemp("front")
    shapes.write_dataset(root / "w", n=12, seed=41)
    assert main(["extract", "--model", "shapes-llava", "--data", str(root / "w"), "--layer", "-1",
                 "--out", str(root / "q")]) == 0
    assert main(["vectors", "coarse", "--store", str(root / "q"), "--source", "answer=yes", "--target", "answer=no",
                 "--out", str(root / "v.safetensors")]) == 0
    assert main(["eval", "vqa", "--model", "shapes-llava", "--data", str(root / "w"), "--max-new-tokens", "3",
                 "--out", str(root / "base")]) == 0
    return root


def test_eval_steers_the_last_prompt_position_by_default_and_prints_tables_not_json(steered, capsys):
    capsys.readouterr()
    assert main(["eval", "vqa", "--model", "shapes-llava", "--data", str(steered / "w"), "--max-new-tokens", "3",
                 "--vector", str(steered / "v.safetensors"), "--baseline", str(steered / "base"),
                 "--source", "yes", "--target", "no", "--out", str(steered / "steered")]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((steered / "steered" / "metrics.json").read_text())
    assert metrics["steering"]["region"] == "last_prompt"
    assert "{" not in out and '"changed"' not in out  # no raw JSON blob after the table
    vs = metrics["vs_baseline"]
    assert f"{vs['changed']} of {vs['n']} answers changed" in " ".join(out.split())
    assert "baseline" in out and "change" in out
    assert vs["source_moved_fraction"] > 0.9  # the default region steers


def test_an_eval_run_folder_has_a_report_with_what_changed(steered, tmp_path):
    from browser import open_pages  # tests/browser.py

    assert main(["eval", "vqa", "--model", "shapes-llava", "--data", str(steered / "w"), "--max-new-tokens", "3",
                 "--vector", str(steered / "v.safetensors"), "--baseline", str(steered / "base"),
                 "--source", "yes", "--target", "no", "--out", str(steered / "report-run")]) == 0
    html = (steered / "report-run" / "report.html").read_text()
    changed = json.loads((steered / "report-run" / "metrics.json").read_text())["vs_baseline"]["changed"]
    assert f"Outputs that changed against the baseline ({min(8, changed)} of {changed}, drawn at random)" in html
    assert html.count('class="card"') == min(8, changed) and "region last_prompt" in html
    assert "Not steered." in (steered / "base" / "report.html").read_text()
    (page,) = open_pages([steered / "report-run" / "report.html"], tmp_path)
    assert not page.errors and not page.broken_images and page.images == min(8, changed)


def test_separability_keeps_every_label_and_says_what_it_leaves_out(steered, capsys):
    capsys.readouterr()
    assert main(["separability", str(steered / "q"), "--out", str(steered / "sep"), "--folds", "2"]) == 0
    result = json.loads((steered / "sep" / "separability.json").read_text())
    assert result["n_samples"] <= result["n_labelled"] and result["left_out_labels"] >= 0
    out = " ".join(capsys.readouterr().out.split())
    if result["n_samples"] < result["n_labelled"]:
        assert f"left out {result['n_labelled'] - result['n_samples']} of {result['n_labelled']}" in out
    assert main(["separability", str(steered / "q"), "--out", str(steered / "sep2"), "--folds", "2", "--top", "2"]) == 0
    top2 = json.loads((steered / "sep2" / "separability.json").read_text())
    assert len(top2["labels"]) == 2 and top2["n_samples"] < result["n_samples"]
    assert "left out" in " ".join(capsys.readouterr().out.split())
    assert (steered / "sep" / "report.html").is_file()


def test_concepts_and_concept_pair_vectors_are_named_by_their_top_words(steered, capsys):
    from vlmsteer.steer.conditions import DictionaryCondition
    from vlmsteer.steer.vector import load_vector

    assert main(["concepts", str(steered / "q"), "-k", "4", "--out", str(steered / "c")]) == 0
    assert main(["vectors", "concepts", "--dictionary", str(steered / "c" / "dictionary.safetensors"),
                 "--out", str(steered / "pairs.safetensors")]) == 0
    concepts = json.loads((steered / "c" / "concepts.json").read_text())["concepts"]
    top = [c["words"][0] for c in concepts]
    word = next(w for w in top if top.count(w) == 1)
    other = next(w for w in top if w != word and top.count(w) == 1) if len(set(top)) > 1 else None
    cond = DictionaryCondition.load(steered / "c" / "dictionary.safetensors", [word])
    assert cond.active == [top.index(word)]
    if other is not None:
        vec = load_vector(steered / "pairs.safetensors", f"{word}->{other}")
        assert vec.options["from"] == top.index(word) and vec.options["to"] == top.index(other)
    with pytest.raises(VlmsteerError, match="no concept has the top word"):
        DictionaryCondition.load(steered / "c" / "dictionary.safetensors", ["zebra"])
    with pytest.raises(VlmsteerError, match="no vector named"):
        load_vector(steered / "pairs.safetensors", "zebra->yes")


def test_vectors_random_is_a_seeded_control_of_the_same_norms_that_steers_less(steered):
    from vlmsteer.steer.vector import load_vector

    like = steered / "v.safetensors"
    for seed, name in ((3, "r3"), (3, "r3b"), (4, "r4")):
        assert main(["vectors", "random", "--like", str(like), "--seed", str(seed),
                     "--out", str(steered / f"{name}.safetensors")]) == 0
    real, r3, r3b, r4 = (load_vector(steered / f"{n}.safetensors") for n in ("v", "r3", "r3b", "r4"))
    assert r3.layers == real.layers and r3.method == "random_control"
    assert r3.options["control_of"] == real.digest() and r3.options["control_seed"] == 3
    for layer in real.layers:
        assert abs(r3.norm(layer) - real.norm(layer)) < 1e-4 * real.norm(layer)
        cosine = float(r3.at(layer) @ real.at(layer)) / (r3.norm(layer) * real.norm(layer))
        assert abs(cosine) < 0.5  # another direction
    assert r3.digest() == r3b.digest() and r3.digest() != r4.digest()  # seeded
    assert main(["eval", "vqa", "--model", "shapes-llava", "--data", str(steered / "w"), "--max-new-tokens", "3",
                 "--vector", str(steered / "r3.safetensors"), "--baseline", str(steered / "base"),
                 "--source", "yes", "--target", "no", "--out", str(steered / "control")]) == 0
    control = json.loads((steered / "control" / "metrics.json").read_text())["vs_baseline"]
    assert control["source_moved_fraction"] < 0.5  # the real vector moves > 0.9 (test above)
    assert main(["vectors", "random", "--like", str(steered / "nothing.safetensors"),
                 "--out", str(steered / "x.safetensors")]) != 0
