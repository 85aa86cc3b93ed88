"""The ``vlmsteer shift`` page: plots and an HTML report of a computed shift analysis
(:func:`vlmsteer.runs.shift.run_shift`)."""

from __future__ import annotations

from pathlib import Path

from vlmsteer.outputs import atomic_write_text
from vlmsteer.report import image_data_uri, render
from vlmsteer.report.plots import shift_plots


def write_shift_report(out: Path, result: dict) -> None:
    """The shift plots (their names go into ``result["plots"]``) and ``report.html``."""
    result["plots"] = shift_plots(result, out)
    thumbs = {s["image"]: image_data_uri(s["image"], digest=s.get("image_digest")) for c in result["main"]["concepts"]
              for s in c["top_samples"] + c["matched_top_samples"] if s.get("image")}
    atomic_write_text(out / "report.html", render("shift.html.j2", r=result, thumbs=thumbs))
