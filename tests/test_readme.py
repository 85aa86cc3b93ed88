"""The README and the pages under docs/ tell the truth: their code blocks run verbatim after the
set-up commands, in the order a reader meets them (README, then the pages of ``PAGES``), the
figures they state hold (the caption-steering example steers: captions change, the colour share
rises, as the README says), and their links stay inside the repository."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the pages whose blocks run, in order (later blocks use what earlier ones made)
PAGES = ["README.md", "docs/commands.md", "docs/outputs.md", "docs/scale.md", "docs/steering.md", "docs/concepts.md",
         "docs/diffing.md", "docs/hallucination.md", "docs/results.md"]
TEXTS = {page: (ROOT / page).read_text() for page in PAGES}
README = "\n".join(TEXTS.values())  # where the stated figures are looked up


def _blocks(language: str, page: str = "README.md") -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", TEXTS[page], flags=re.S | re.M)


def test_every_page_is_run_and_every_page_links_the_others():
    pages = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")} - {"docs/custom-models.md"}
    assert pages <= set(PAGES), f"add these pages to PAGES: {sorted(pages - set(PAGES))}"
    assert all(f"]({page})" in TEXTS["README.md"] for page in PAGES[1:]), "the README links every page"
    assert len(TEXTS["README.md"].splitlines()) <= 200, "the README is for a first hour: keep it to 200 lines"


class Block(NamedTuple):
    text: str
    skip: str | None  # why the test does not run it (the set-up commands, the test command)
    prepare: str | None  # for a block whose data the reader brings: what the test writes first
    substitutions: list[tuple[str, str]]  # ... and how it runs the same commands on the shipped model


def _bash_blocks() -> list[Block]:
    """The README's bash blocks in order, each with its ``<!-- readme-test: ... -->`` marker."""
    blocks = []
    for m in (m for page in PAGES for m in re.finditer(
            r"(?:<!-- readme-test: (?P<marker>.*?)-->\n)?^```bash\n(?P<text>.*?)^```$", TEXTS[page], flags=re.S | re.M)):
        marker = m["marker"] or ""
        skip = re.match(r"skip, (.*)", marker.strip(), flags=re.S)
        prepare = re.search(r"\(prepare:\s*([\w-]+)\)", marker)
        subs = re.findall(r'^"(.*)" => "(.*)"$', marker, flags=re.M)
        if marker and not (skip or prepare or subs):
            raise AssertionError(f"unreadable readme-test marker: {marker!r}")
        blocks.append(Block(m["text"], skip[1] if skip else None, prepare[1] if prepare else None, subs))
    return blocks


def _workdir(tmp_path: Path) -> Path:
    """A folder where ``.venv`` is the environment running these tests (the set-up commands
    made it at the repository root)."""
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return tmp_path


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _prepare(name: str, work: Path) -> None:
    """What a reader brings, made on the shipped model and a generated world."""
    from vlmsteer.data import load_vqav2, shapes
    from vlmsteer.extract import ExtractConfig, extract
    from vlmsteer.model import VLM
    from vlmsteer.store_io import export_features

    if name == "import-inputs":
        shapes.write_dataset(work / "bring" / "w", n=30, seed=5)
        store, _ = extract(VLM.load("shapes-llava"), load_vqav2(work / "bring" / "w"), work / "bring" / "s",
                           ExtractConfig(layers=[3]), progress=False)
        export_features(store, 3, work / "feats.npy", work / "records.jsonl")
    elif name == "vqav2-world":
        shapes.write_dataset(work / "vqav2", n=20, seed=5)
    elif name == "coco-hallucination":  # COCO's layout: POPE files, val2014 images, annotations
        import shutil

        paths = shapes.write_dataset(work / "coco-src", n=20, seed=43)
        (work / "coco" / "annotations").mkdir(parents=True)
        shutil.copytree(work / "coco-src" / "val2014", work / "coco" / "val2014")
        for split in ("random", "popular", "adversarial"):
            shutil.copy(paths[f"pope_{split}"], work / "coco" / f"coco_pope_{split}.json")
        for part in ("captions", "instances"):
            shutil.copy(paths[part], work / "coco" / "annotations" / f"{part}_val2014.json")
    else:
        raise AssertionError(f"no preparation called {name!r}")


def test_readme_names_what_each_block_needs():
    blocks = _bash_blocks()
    skipped = [b for b in blocks if b.skip]
    assert [b.skip.split(" ")[0] for b in skipped] == ["the", "the"] and len(skipped) == 2
    assert "pip install" in skipped[0].text and "pytest" in skipped[1].text
    for b in blocks:
        if not b.skip:
            assert b.text.startswith("source .venv/bin/activate\n"), b.text[:80]  # runs in a fresh shell
        for old, _ in b.substitutions:
            assert old in b.text, f"substitution {old!r} matches nothing in its block"


@pytest.mark.slow
def test_every_block_runs_verbatim_in_order_and_gives_the_figures_it_states(tmp_path):
    work = _workdir(tmp_path)
    for block in _bash_blocks():
        if block.skip:
            continue
        text = block.text
        if block.prepare:
            _prepare(block.prepare, work)
        for old, new in block.substitutions:
            text = text.replace(old, new)
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=work, env=_env(), capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, f"{text[:200]}\n{done.stderr[-3000:]}"
    _check_caption_figures(work / "runs" / "captions")
    _check_yes_no_figures(work / "runs" / "yes-no")
    _check_sae_figures(work / "runs" / "sae")
    _check_diff_figures(work / "runs" / "diff")
    _check_hallucination_figures(work / "runs" / "hallucination")
    assert (work / "runs" / "big-concepts" / "report.html").is_file()
    manifest = json.loads((work / "runs" / "vqa-features" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["header"]["layers"] == [1, 2, 3] and manifest["summary"]["total"] > 100


def _check_caption_figures(runs: Path) -> None:
    vs = json.loads((runs / "colors" / "metrics.json").read_text())["vs_baseline"]
    colours = vs["styles"]["colors"]
    # the effect happened (region "generated"), and it is the one the README reports
    assert vs["captions_changed"] > 0 and colours["share_after"] - colours["share_before"] >= 10, vs
    figures = re.search(r"changes\s+(\d+)\s+of\s+the\s+200\s+captions\s+and\s+raises\s+the\s+share\s+of\s+captions"
                        r"\s+naming\s+a\s+colour\s+from\s+([\d.]+)\s+%\s+to\s+([\d.]+)\s+%", README)
    assert figures, "the README's caption-steering figures moved; update this test's pattern"
    changed, before, after = int(figures[1]), float(figures[2]), float(figures[3])
    assert abs(vs["captions_changed"] - changed) <= 5
    assert abs(colours["share_before"] - before) <= 2.5 and abs(colours["share_after"] - after) <= 2.5
    cost = re.search(r"only\s+(\d+)\s+of\s+the\s+(\d+)\s+changed\s+captions\s+still\s+name\s+every\s+shape", README)
    assert cost, "the README's caption-steering cost moved; update this test's pattern"
    content = vs["content"]  # the cost beside the effect: what the changed captions kept
    assert abs(content["kept_every_shape"] - int(cost[1])) <= 5 and abs(content["changed"] - int(cost[2])) <= 5
    for out in ("caps", "base", "colors", "q", "sep", "asr"):
        assert (runs / out / "run.json").exists(), out
    assert (runs / "sep" / "report.html").is_file()


def _check_yes_no_figures(runs: Path) -> None:
    figures = re.search(r"move all (\d+) \"yes\" answers of the held-out world to \"no\" \(([\d.]+) %\) and\s+"
                        r"leave number and other accuracy unchanged \(Δ ([+-][\d.]+) / ([+-][\d.]+)\)", README)
    assert figures, "the README's fine-grained Yes->No figures moved; update this test's pattern"
    for run in ("fine", "fine-concepts"):
        vs = json.loads((runs / run / "metrics.json").read_text())["vs_baseline"]
        assert abs(vs["source"]["before"] - int(figures[1])) <= 5, vs["source"]
        assert abs(100 * vs["source_moved_fraction"] - float(figures[2])) <= 1.0, vs
        assert abs(vs["accuracy_delta"]["number"] - float(figures[3])) <= 0.5
        assert abs(vs["accuracy_delta"]["other"] - float(figures[4])) <= 0.5


def _check_sae_figures(runs: Path) -> None:
    figures = re.search(r"loss recovered ([\d.]+) %.*?VQA accuracy from ([\d.]+) to ([\d.]+) .*?"
                        r"naming red from ([\d.]+) % to ([\d.]+) % \(CIDEr ([\d.]+) → ([\d.]+)\)", README, flags=re.S)
    assert figures, "the README's SAE figures moved; update this test's pattern"
    recovered, vqa_before, vqa_after, red_before, red_after = (float(figures[i]) for i in range(1, 6))
    concepts = json.loads((runs / "sae" / "concepts.json").read_text())
    assert abs(100 * concepts["splice"]["loss_recovered"] - recovered) <= 0.5
    words = {c["words"][0] for c in concepts["concepts"] if c["words"]}
    assert words >= {"red", "green", "blue", "yellow", "white", "black", "circle", "square", "triangle", "diamond"}
    assert (runs / "sae" / "saelens" / "cfg.json").is_file() and (runs / "red.safetensors").is_file()
    base = json.loads((runs / "vqa" / "metrics.json").read_text())["accuracy"]["micro"]
    spliced = json.loads((runs / "vqa-spliced" / "metrics.json").read_text())["accuracy"]["micro"]
    assert abs(base - vqa_before) <= 0.5 and abs(spliced - vqa_after) <= 0.5 and base - spliced <= 2
    red = json.loads((runs / "red" / "metrics.json").read_text())["vs_baseline"]["styles"]["red"]
    assert abs(red["share_before"] - red_before) <= 2.5 and abs(red["share_after"] - red_after) <= 5
    assert red["share_after"] - red["share_before"] >= 30  # the clamp had the effect the README claims


def _check_hallucination_figures(runs: Path) -> None:
    text = TEXTS["docs/hallucination.md"]
    base = re.search(r"here POPE F1 is ([\d.]+) % and CHAIR_s ([\d.]+) %", text)
    organism = re.search(r"Here CHAIR_s is ([\d.]+) %: the organism names a circle in (\d+) of the 60", text)
    assert base and organism, "docs/hallucination.md's figures moved; update this test's patterns"
    pope = json.loads((runs / "pope" / "metrics.json").read_text())["pope"]
    assert abs(100 * pope["f1"] - float(base[1])) <= 1.0
    assert pope == json.loads((runs / "pope-scored" / "metrics.json").read_text())["pope"]
    chair = json.loads((runs / "chair" / "metrics.json").read_text())["chair"]
    assert abs(100 * chair["chair_s"] - float(base[2])) <= 2.0
    hallucinating = json.loads((runs / "organism-chair" / "metrics.json").read_text())["chair"]
    assert abs(100 * hallucinating["chair_s"] - float(organism[1])) <= 5.0  # the organism hallucinates
    assert hallucinating["chair_s"] >= chair["chair_s"] + 0.2
    mended = re.search(r"Here CHAIR_s falls from ([\d.]+) % to ([\d.]+) %", text)
    assert mended, "docs/hallucination.md's visual-steering figures moved; update this test's pattern"
    steered = json.loads((runs / "organism-visual" / "metrics.json").read_text())
    assert abs(100 * steered["vs_baseline"]["chair_baseline"]["chair_s"] - float(mended[1])) <= 5.0
    assert abs(100 * steered["chair"]["chair_s"] - float(mended[2])) <= 5.0
    assert steered["chair"]["chair_s"] <= hallucinating["chair_s"] - 0.1  # the mitigation had its effect


def _check_diff_figures(runs: Path) -> None:
    figures = re.search(r"reads `three` as its first word and measures ([\d.]+) of the\s+features' spread; the "
                        r"control's measures ([\d.]+)", README)
    assert figures, "the README's diffing figures moved; update this test's pattern"
    three = json.loads((runs / "adl-three" / "diff.json").read_text())
    control = json.loads((runs / "adl-control" / "diff.json").read_text())
    assert three["words"][0] == "three" and (runs / "adl-three" / "diff.safetensors").is_file()
    assert abs(three["relative_norm"] - float(figures[1])) <= 0.1
    assert abs(control["relative_norm"] - float(figures[2])) <= 0.02 < three["relative_norm"] / 10
    crosscoder = json.loads((runs / "cc-three" / "diff.json").read_text())
    assert crosscoder["words"][0] == "three" and (runs / "cc-three" / "decoder_norms.png").is_file()
    for method in ("adl", "concepts", "crosscoder", "sae-diff"):  # the bring-your-own pair's block
        assert json.loads((runs.parent / "mine" / method / "diff.json").read_text())["method"] == method


@pytest.mark.slow
def test_python_examples_run(tmp_path):
    steering, run = _blocks("python")
    work = _workdir(tmp_path)
    done = subprocess.run([sys.executable, "-c", steering], cwd=work, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    texts = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert len(texts) == 2 and texts[0] != texts[1]  # the steered answers differ from the plain ones
    done = subprocess.run([sys.executable, "-c", run], cwd=work, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = work / "runs" / "py-concepts" / "kmeans"
    record = json.loads((folder / "run.json").read_text())
    assert record["identity"]["command"] == "vlmsteer concepts" and len(record["fingerprint"]) == 64
    assert {"red", "blue", "green"} & set(done.stdout.replace("'", " ").replace(",", " ").split())


@pytest.mark.parametrize("doc", ["README.md", "CONTRIBUTING.md", "benchmarks/README.md",
                                 *[str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")]])
def test_links_stay_inside_the_repository(doc):
    text = (ROOT / doc).read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        path = ((ROOT / doc).parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc}: link {target} leaves the repository"
        assert path.exists(), f"{doc}: link {target} points to nothing"
