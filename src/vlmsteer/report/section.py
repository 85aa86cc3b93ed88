"""One report page for a run that is not a dictionary or a shift analysis (a VQA, caption or
safety evaluation, a steering experiment, separability): what was done, its tables, its
figures and examples with their images, and links to the raw files it wrote."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlmsteer.outputs import atomic_write_text
from vlmsteer.report import image_data_uri, render


@dataclass
class Table:
    caption: str
    columns: list[str]
    rows: list[list]  # cells: text or numbers, shown as given


@dataclass
class Example:
    """One example: labelled lines of text (e.g. question / before / after) and its image."""

    lines: list[tuple[str, str]]
    image: str | None = None
    image_digest: str | None = None


@dataclass
class Section:
    title: str
    intro: list[str] = field(default_factory=list)  # paragraphs of plain text
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file in the folder, caption)
    examples: list[Example] = field(default_factory=list)
    examples_title: str = "Examples"


def write_section(folder: str | Path, section: Section) -> Path:
    """``folder/report.html`` for ``section``; the raw files already in ``folder`` are listed
    (linked) after the report. Figures that were not drawn (no matplotlib) are left out."""
    folder = Path(folder)
    figures = [(name, caption) for name, caption in section.figures if (folder / name).is_file()]
    examples = [{"lines": e.lines, "img": image_data_uri(e.image, digest=e.image_digest) if e.image else None}
                for e in section.examples]
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                   if p.is_file() and p.name != "report.html" and not p.name.startswith(".")
                   and p.suffix in (".json", ".jsonl", ".safetensors", ".png"))
    page = folder / "report.html"
    atomic_write_text(page, render("section.html.j2", s=section, figures=figures, examples=examples, files=files))
    return page
