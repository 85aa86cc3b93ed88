"""The ``vlmsteer concepts`` page: a PCA plot of the rows by concept and an HTML report (one card
per concept: words and most activating images), rendered from a computed result
(:func:`vlmsteer.runs.concepts.run_concepts`)."""

from __future__ import annotations

from pathlib import Path

from vlmsteer.outputs import atomic_write_text
from vlmsteer.report import image_data_uri, render
from vlmsteer.report.plots import pca_plot


def write_concepts_report(out: Path, result: dict, feats, assign, *, method: str, names: dict | None,
                          shown: int | None = None) -> None:
    """``pca.png`` (the rows ``feats`` coloured by their concept ``assign``, labelled by ``names``)
    and ``report.html``: every concept's card, or the ``shown`` most used."""
    concepts = result["concepts"]
    pca_plot(feats, assign, out / "pca.png", f"{result['n_samples']} samples by {method} concept, "
                                             f"layer {result['layer']}", names)
    if shown is not None:
        concepts = sorted(concepts, key=lambda c: -c["size"])[:shown]
    cards = [{**c, "samples": [{**s, "img": image_data_uri(s["image"], digest=s["image_digest"])}
                               for s in c["top_samples"]]} for c in concepts]
    atomic_write_text(out / "report.html", render("concepts.html.j2", r=result, cards=cards))
