"""The demo's front page: one section per stage, each linking its HTML report, written after
every stage (a reader sees the first sections while the rest run); raw files listed apart,
after the reports."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from vlmsteer.outputs import atomic_write_text
from vlmsteer.report import image_data_uri, render


class Stage(NamedTuple):
    key: str  # the demo's method and the summary's key for it
    title: str
    folder: str  # where its report.html is


STAGES = (
    Stage("vqa", "Baseline VQA", "vqa-baseline"),
    Stage("concepts", "Concepts", "concepts"),
    Stage("yes_no", "Steering answers: Yes → No", "yes-to-no"),
    Stage("captions", "Captions and caption styles", "captions"),
    Stage("neutralize", "Neutralizing an attribute", "neutralize"),
    Stage("safety", "Refusal steering", "safety"),
    Stage("shift", "Fine-tuning shift", "shift"),
    Stage("hallucination", "Object hallucination", "hallucination"),
    Stage("layers", "Separability across layers", "separability"),
)


def write_page(out: Path, summary: dict) -> Path:
    """``out/index.html`` for the stages done so far (``summary['running']``: the one under way)."""
    done = [st for st in STAGES if st.title in summary["timings"]]
    examples = [{**e, "img": image_data_uri(e["image"])} for e in summary.get("examples", [])]
    reports = {st.key for st in done if (out / st.folder / "report.html").is_file()}
    files = []
    if "running" not in summary:
        files = sorted(str(p.relative_to(out)) for p in out.rglob("*")
                       if p.is_file() and p.suffix in (".json", ".jsonl", ".safetensors", ".png")
                       and p.relative_to(out).parts[0] not in ("data",) and not p.name.startswith("."))
    page = out / "index.html"
    atomic_write_text(page, render("demo.html.j2", s=summary, stages=STAGES, done={st.key for st in done},
                                   reports=reports, examples=examples, files=files))
    return page
