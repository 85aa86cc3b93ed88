"""The demo's HTML page: one page linking every stage's report."""

from __future__ import annotations

from pathlib import Path

from vlmsteer.report import image_data_uri, render


def write_page(out: Path, summary: dict) -> Path:
    examples = {
        "questions": [{**e, "img": image_data_uri(e["image"])} for e in summary["examples"]["questions"]],
    }
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*")
                   if p.is_file() and p.suffix in (".json", ".jsonl", ".safetensors", ".html")
                   and "data" not in p.relative_to(out).parts[:1] and p.name != "index.html")
    page = out / "index.html"
    page.write_text(render("demo.html.j2", s=summary, examples=examples, files=files))
    return page
