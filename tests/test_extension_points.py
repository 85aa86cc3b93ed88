"""Adding is one file: this module alone defines a toy SAE variant (written with autograd only), a
toy diffing method, a toy token region and a toy dataset format, registers them, and each then
appears in ``vlmsteer ... --help``, runs end to end from the CLI on the shipped model, and keeps
its registry's contract (:mod:`vlmsteer.testing.contracts`). No other file of the project knows
them. (The same module is loaded as a plugin through ``$VLMSTEER_PLUGINS`` by a fresh process.)"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmsteer.analysis.diffing import Part, Readout
from vlmsteer.analysis.diffing_methods import DIFF_METHODS, DiffMethod
from vlmsteer.concepts.methods import CONCEPT_METHODS, SAE_OPTIONS
from vlmsteer.concepts.sae import SparseAutoencoder
from vlmsteer.data.formats import DATA_FORMATS, DatasetFormat
from vlmsteer.data.io import dataset_file
from vlmsteer.data.sample import Sample, subsample
from vlmsteer.positions import REGIONS, add_region
from vlmsteer.testing import contracts


# -- a sparse autoencoder written with autograd alone: TopK's activation, nothing else


class AutogradTopKSAE(SparseAutoencoder):
    """Each row keeps its l0 largest pre-activations; training differentiates this activation."""

    method = "toy_autograd_topk"
    architecture = "topk"

    def train_codes(self, pre, t, train):
        top = pre.topk(self.l0, dim=1)
        return torch.zeros_like(pre).scatter(1, top.indices, top.values.clamp_min(0))

    def activate(self, pre, t):
        return self.train_codes(pre, t, {})


# -- a diffing method: the median change, as one part


def median_readout(paired, settings) -> Readout:
    a, b = np.asarray(paired.a, dtype=np.float64), np.asarray(paired.b, dtype=np.float64)
    change = np.median(b - a, axis=0)
    spread = float(np.sqrt(((a - a.mean(0)) ** 2).sum(1).mean()))
    size = float(np.linalg.norm(change))
    return Readout("toy-median", paired.layer, len(a), spread, size / max(spread, 1e-12),
                   [Part("median", change, size)])


# -- a token region: the text after the image (the question and the template's end)


def after_image(regions):
    image_later = regions.image.flip(1).cumsum(1).flip(1) > 0  # an image token at or after the position
    return regions.text & (regions.image.cumsum(1) > 0) & ~image_later


# -- a dataset format: a CSV of id, image, question, answer


def load_csv(path, *, split, images, limit, seed, prompt, allow_outside_images):
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    samples = [Sample(r["id"], dataset_file(path.parent, r["image"], path, f"row {i}", allow_outside_images),
                      r["question"], answers=[r["answer"]]) for i, r in enumerate(rows, 1)]
    return subsample(samples, limit, seed)


def csv_example(folder: Path) -> Path:
    from vlmsteer.data import shapes

    shapes.write_dataset(folder, n=12, seed=21)
    questions = json.loads((folder / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]
    answers = {a["question_id"]: a["multiple_choice_answer"]
               for a in json.loads((folder / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]}
    with (folder / "questions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "image", "question", "answer"])
        for q in questions:
            w.writerow([q["question_id"], f"val2014/COCO_val2014_{q['image_id']:012d}.png", q["question"],
                        answers[q["question_id"]]])
    return folder / "questions.csv"


def register() -> None:
    CONCEPT_METHODS.add("toy-autograd-topk", AutogradTopKSAE, "TopK written with autograd alone (a test's toy)",
                        SAE_OPTIONS)  # (an SAE takes what every SAE does: latents, l0, epochs, ...)
    DIFF_METHODS.add("toy-median", DiffMethod(median_readout, "the median of the fine-tuned minus the original "
                                                              "features (a test's toy)"), "the median change")
    add_region("after_image", "the text tokens after the last image token (a test's toy)", after_image)
    DATA_FORMATS.add("toy-csv", DatasetFormat(load_csv, csv_example), "id, image, question, answer rows (a test's "
                                                                       "toy)")


def unregister() -> None:
    for registry, name in ((CONCEPT_METHODS, "toy-autograd-topk"), (DIFF_METHODS, "toy-median"),
                           (REGIONS, "after_image"), (DATA_FORMATS, "toy-csv")):
        registry.remove(name)


if __name__ in os.environ.get("VLMSTEER_PLUGINS", "").split(","):  # loaded as a plugin by a fresh process
    register()


@pytest.fixture(scope="module", autouse=True)
def toys():
    """Registered for this module's tests only: the other tests see the built-in registries."""
    register()
    yield
    unregister()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return csv_example(tmp_path_factory.mktemp("toyworld"))


def _run(*args) -> int:
    from vlmsteer.cli import main

    return main([str(a) for a in args])


@pytest.mark.parametrize("command, name", [(["concepts"], "toy-autograd-topk"), (["diff"], "toy-median"),
                                           (["eval", "vqa"], "after_image"), (["extract"], "toy-csv")])
def test_each_toy_is_in_the_help(command, name, capsys):
    _run(*command, "--help")
    assert name in capsys.readouterr().out.replace("│", "")


def test_the_toys_keep_their_contracts(tiny_vlm, tmp_path):
    g = np.random.default_rng(0)
    z = (g.normal(size=(4, 16))[g.integers(0, 4, 150)] * 4 + g.normal(size=(150, 16))).astype(np.float32)
    contracts.check_concept_method("toy-autograd-topk", z, tmp_path)
    contracts.check_region(tiny_vlm("llava"), "after_image")
    contracts.check_dataset_format("toy-csv", csv_example(tmp_path / "d"))


def test_autograd_alone_trains_as_the_written_gradients_do():
    """The toy's trainer (autograd) and TopK's (written-out gradients) start alike and take the
    same steps: the trained weights agree."""
    from vlmsteer.concepts.methods import make_dictionary

    g = np.random.default_rng(1)
    z = (g.normal(size=(6, 24))[g.integers(0, 6, 600)] * 3 + g.normal(size=(600, 24))).astype(np.float32)
    options = dict(l0=4, epochs=5, batch_size=64)
    toy = make_dictionary("toy-autograd-topk", 32, seed=0, **options).fit(z)
    ref = make_dictionary("topk-sae", 32, seed=0, **options).fit(z)
    assert not toy.writes_gradients and ref.writes_gradients
    np.testing.assert_allclose(toy.components_, ref.components_, atol=2e-3)
    fvu = lambda d: float(((d.decode(d.encode(z)) - z) ** 2).sum() / ((z - z.mean(0)) ** 2).sum())  # noqa: E731
    assert fvu(toy) < 0.5 and abs(fvu(toy) - fvu(ref)) < 0.01


def test_the_toys_run_end_to_end_on_the_shipped_model(world, tmp_path):
    from vlmsteer.steer import SteeringVector

    data = world
    assert _run("data", "check", "toy-csv", data) == 0
    for name in ("a", "b"):
        assert _run("extract", "--model", "shapes-llava", "--data", data, "--format", "toy-csv", "--layer", "2,3",
                    "--out", tmp_path / name, "--batch-size", "16") == 0
    assert _run("concepts", tmp_path / "a", "--method", "toy-autograd-topk", "--latents", "16", "--l0", "4",
                "--no-words", "--epochs", "5", "--out", tmp_path / "c") == 0
    concepts = json.loads((tmp_path / "c" / "concepts.json").read_text())
    assert concepts["method"] == "toy_autograd_topk" and len(concepts["concepts"]) == 16
    assert _run("diff", "--original", tmp_path / "a", "--finetuned", tmp_path / "b", "--method", "toy-median",
                "--no-words", "--out", tmp_path / "d") == 0
    diff = json.loads((tmp_path / "d" / "diff.json").read_text())
    assert diff["readout"] == "median" and diff["relative_norm"] == 0.0  # one model against itself
    # a steering vector added at the text after the image only
    vector = tmp_path / "v.safetensors"
    SteeringVector({1: torch.ones(128) * 3.0}).save(vector)  # (a layer below the last: later ones read it)
    base = ["eval", "vqa", "--model", "shapes-llava", "--data", data, "--format", "toy-csv", "--max-new-tokens", "2"]
    assert _run(*base, "--out", tmp_path / "plain") == 0
    assert _run(*base, "--vector", vector, "--alpha", "20", "--region", "after_image", "--out", tmp_path / "e") == 0
    steered = json.loads((tmp_path / "e" / "run.json").read_text())
    assert steered["identity"]["steering"]["region"] == "after_image"
    answers = [(tmp_path / run / "predictions.jsonl").read_text() for run in ("plain", "e")]
    assert answers[0] != answers[1]  # the region was steered


def test_a_fresh_process_loads_the_toys_as_a_plugin():
    env = {**os.environ, "VLMSTEER_PLUGINS": "test_extension_points",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "vlmsteer", "diff", "--help"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0 and "toy-median" in out.stdout, out.stderr
    bad = subprocess.run([sys.executable, "-m", "vlmsteer", "diff", "--help"], capture_output=True, text=True,
                         env={**env, "VLMSTEER_PLUGINS": "no_such_plugin_module"}, timeout=120)
    assert bad.returncode == 2 and "plugin 'no_such_plugin_module'" in bad.stderr and "Traceback" not in bad.stderr


def test_only_this_module_names_the_toys():
    root = Path(__file__).resolve().parents[1]
    hits = [p for p in [*root.glob("src/**/*.py"), *root.glob("docs/*.md"), root / "README.md"]
            if "toy-autograd-topk" in p.read_text() or "toy-median" in p.read_text()]
    assert not hits and REGIONS.names()[-1] == "after_image"
