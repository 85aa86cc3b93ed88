import pytest
import torch
import numpy as np

from vlmsteer.errors import VlmsteerError

from vlmsteer.cli import main
from vlmsteer.steer.selection import rank, selection_score, two_means_1d


def test_two_means_is_the_best_split():
    high, low = two_means_1d([10.0, 0.1, 9.0, 0.0, 0.2])
    assert sorted(high) == [0, 2] and sorted(low) == [1, 3, 4]


def test_selection_finds_one_target_answer():
    base = ["yes"] * 50 + ["no"] * 50 + ["red"] * 10
    steered = ["no"] * 90 + ["yes"] * 10 + ["red"] * 10
    sel = selection_score(base, steered, top_n=5)
    assert sel.primary == ["no"] and sel.score > 0.5
    assert sel.counts["no"] == (50, 90)


def test_selection_finds_several_targets_and_ranks():
    base = ["1"] * 40 + ["2"] * 40 + ["3"] * 2 + ["4"] * 2
    steered = ["1"] * 20 + ["2"] * 20 + ["3"] * 22 + ["4"] * 22
    multi = selection_score(base, steered, name="multi")
    assert sorted(multi.primary) == ["3", "4"]
    noop = selection_score(base, base, name="noop")
    assert noop.score == 0.0
    assert [s.name for s in rank([noop, multi])] == ["multi", "noop"]


def test_relative_to_base_favours_rare_answers_and_distinct_ranking():
    base = ["yes"] * 50 + ["no"] * 50 + ["red"] * 10 + ["blue"] * 0
    to_no = ["no"] * 95 + ["yes"] * 5 + ["red"] * 10
    to_blue = ["yes"] * 50 + ["no"] * 50 + ["blue"] * 3 + ["red"] * 7
    no_total = selection_score(base, to_no, name="no", relative_to="total")
    blue_total = selection_score(base, to_blue, name="blue", relative_to="total")
    assert no_total.primary == ["no"] and no_total.increases["no"] == pytest.approx(100 * 45 / 110)
    assert [s.name for s in rank([blue_total, no_total])] == ["no", "blue"]
    no_base = selection_score(base, to_no, name="no")  # the paper's form is the default
    blue_base = selection_score(base, to_blue, name="blue", relative_to="base")
    assert [s.name for s in rank([no_base, blue_base])] == ["blue", "no"]  # 3 / 1 beats 45 / 51
    twin = selection_score(base, to_no, name="twin", relative_to="total")
    assert [s.name for s in rank([no_total, twin, blue_total], distinct=True)] == ["no", "blue"]
    with pytest.raises(VlmsteerError, match="unknown relative_to"):
        selection_score(base, to_no, relative_to="median")


def test_vectors_concepts_and_select_cli(tiny_vlm, tiny_folder, tmp_path, capsys):
    import json

    import numpy as np

    from vlmsteer.concepts import KMeansConcepts
    from vlmsteer.data import shapes

    vlm = tiny_vlm("llava")
    rng = np.random.default_rng(0)
    d = KMeansConcepts(k=3).fit(rng.normal(size=(30, vlm.hidden_size)) * 5)
    d.save(tmp_path / "dictionary.safetensors", layer=2, model_id="tiny")
    assert main(["vectors", "concepts", "--dictionary", str(tmp_path / "dictionary.safetensors"),
                 "--out", str(tmp_path / "pairs.safetensors")]) == 0
    from vlmsteer.steer.vector import load_vectors

    pairs = load_vectors(tmp_path / "pairs.safetensors")
    assert len(pairs) == 6 and torch.allclose(pairs["0->1"].at(2), torch.tensor(d.components_[1] - d.components_[0],
                                                                                   dtype=torch.float32))
    data = tmp_path / "data"
    shapes.write_dataset(data, 4, seed=2)
    assert main(["select", "--model", str(tiny_folder("llava")), "--data", str(data), "--vectors",
                 str(tmp_path / "pairs.safetensors"), "--out", str(tmp_path / "sel"), "--limit", "20",
                 "--alpha", "3", "--no-distinct"]) == 0
    result = json.loads((tmp_path / "sel" / "selection.json").read_text())
    ranking = result["ranking"]
    assert len(ranking) == 6 and [r["score"] for r in ranking] == sorted([r["score"] for r in ranking], reverse=True)
    assert result["relative_to"] == "base" and ranking == result["rankings"]["base"]  # the paper's form by default
    assert sorted(r["name"] for r in result["rankings"]["total"]) == sorted(r["name"] for r in ranking)


def test_sweep_cli(tiny_folder, tmp_path):
    import json

    from vlmsteer.data import shapes

    data = tmp_path / "data"
    shapes.write_dataset(data, 6, seed=3)
    folder = str(tiny_folder("llava"))
    assert main(["extract", "--model", folder, "--data", str(data), "--layer", "1,2", "--out",
                 str(tmp_path / "store")]) == 0
    assert main(["sweep", "--model", folder, "--data", str(data), "--store", str(tmp_path / "store"),
                 "--source", "answer=yes", "--target", "answer=no", "--layers", "1,2", "--alphas", "1,4",
                 "--regions", "last_prompt,prompt", "--n-samples", "2,all", "--limit", "20",
                 "--out", str(tmp_path / "sweep")]) == 0
    result = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert len(result["rows"]) == 2 * 2 * 2 * 2 and result["visual"] is False
    assert {r["vector_samples"] for r in result["rows"] if r["n_samples"] == 2} == {4}
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 1000


def test_sweep_cli_sweeps_a_dictionary_clamp_over_values_and_regions(tiny_vlm, tiny_folder, tmp_path, capsys):
    import json

    from vlmsteer.concepts import make_dictionary
    from vlmsteer.data import shapes

    data = tmp_path / "data"
    shapes.write_dataset(data, 6, seed=3)
    dim = tiny_vlm("llava").hidden_size
    z = np.random.default_rng(0).normal(size=(200, dim)).astype(np.float32)
    sae = make_dictionary("topk_sae", 8, seed=0, l0=2, epochs=2, batch_size=64).fit(z)
    sae.save(tmp_path / "sae.safetensors", layer=2)
    base = ["sweep", "--model", str(tiny_folder("llava")), "--data", str(data), "--source", "answer=yes",
            "--target", "answer=no", "--limit", "20"]
    assert main([*base, "--edit-dictionary", str(tmp_path / "sae.safetensors"), "--edit", "clamp", "--latent", "3",
                 "--alphas", "0,200", "--regions", "last_prompt,prompt", "--out", str(tmp_path / "sw")]) == 0
    result = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [(r["alpha"], r["region"], r["layer"]) for r in result["rows"]] == [
        (0.0, "last_prompt", 2), (0.0, "prompt", 2), (200.0, "last_prompt", 2), (200.0, "prompt", 2)]
    assert result["edit"]["mode"] == "clamp" and result["edit"]["latents"] == ["3"]
    changed = {(r["alpha"], r["region"]): r["changed"] for r in result["rows"]}
    assert changed[(200.0, "prompt")] > 0  # a strong clamp over the whole prompt changes answers
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "x")]) == 2  # neither a store nor a dictionary
    assert "one of them" in capsys.readouterr().err
