"""The README tells the truth: its code blocks run verbatim after the set-up commands, the
caption-steering example steers (captions change, the colour share rises, as the README says),
and its links stay inside the repository."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", README, flags=re.S | re.M)


def _workdir(tmp_path: Path) -> Path:
    """A folder where ``.venv`` is the environment running these tests (the set-up commands
    made it at the repository root)."""
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return tmp_path


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.mark.slow
def test_worked_example_runs_and_steers_captions(tmp_path):
    examples = [b for b in _blocks("bash") if b.startswith("source .venv/bin/activate")]
    assert len(examples) == 1, "expected one worked example starting with 'source .venv/bin/activate'"
    work = _workdir(tmp_path)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", examples[0]], cwd=work, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    vs = json.loads((work / "runs" / "colors" / "metrics.json").read_text())["vs_baseline"]
    colours = vs["styles"]["colors"]
    # the effect happened (region "generated"), and it is the one the README reports
    assert vs["captions_changed"] > 0 and colours["share_after"] - colours["share_before"] >= 10, vs
    figures = re.search(r"changes\s+(\d+)\s+of\s+the\s+200\s+captions\s+and\s+raises\s+the\s+share\s+of\s+captions"
                        r"\s+naming\s+a\s+colour\s+from\s+([\d.]+)\s+%\s+to\s+([\d.]+)\s+%", README)
    assert figures, "the README's caption-steering figures moved; update this test's pattern"
    changed, before, after = int(figures[1]), float(figures[2]), float(figures[3])
    assert abs(vs["captions_changed"] - changed) <= 5
    assert abs(colours["share_before"] - before) <= 2.5 and abs(colours["share_after"] - after) <= 2.5
    for out in ("caps", "base", "colors", "q", "sep", "asr"):
        assert (work / "runs" / out / "run.json").exists(), out


def test_python_example_runs(tmp_path):
    (block,) = _blocks("python")
    work = _workdir(tmp_path)
    done = subprocess.run([sys.executable, "-c", block], cwd=work, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    texts = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert len(texts) == 2 and texts[0] != texts[1]  # the steered answers differ from the plain ones


@pytest.mark.parametrize("doc", ["README.md", "benchmarks/README.md", *[str(p.relative_to(ROOT))
                                                                          for p in (ROOT / "docs").glob("*.md")]])
def test_links_stay_inside_the_repository(doc):
    text = (ROOT / doc).read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        path = ((ROOT / doc).parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc}: link {target} leaves the repository"
        assert path.exists(), f"{doc}: link {target} points to nothing"
