"""The ``vlmsteer diff`` page: the readout's words, the parts of the change and the samples where
it acts most, rendered from a computed result (:func:`vlmsteer.runs.diff.run_diff`)."""

from __future__ import annotations

from vlmsteer.analysis.diffing_methods import DIFF_METHODS
from vlmsteer.report.section import Example, Section, Table


def diff_section(result: dict, figures: list) -> Section:
    selector = result["selector"]
    where = selector.get("kind", "?") if isinstance(selector, dict) else "the stores' positions"
    what = DIFF_METHODS.get(result["method"]).explain.format(**result)
    extra_columns = sorted({k for p in result["parts"] for k in p} - {"name", "size", "relative_size", "words"})
    tables = [Table(f"top words of the readout ({result['readout']})", ["rank", "word", "logit"],
                    [[i + 1, w, f"{v:.2f}"] for i, (w, v) in enumerate(zip(result["words"], result["logits"]))])]
    if len(result["parts"]) > 1:
        tables.append(Table(f"the change's parts, largest first ({len(result['parts'])} of {result['n_parts']})",
                            ["rank", "part", "mean size / spread", *extra_columns, "words"],
                            [[i + 1, p["name"], f"{p['relative_size']:.3g}",
                              *[_cell(p.get(c)) for c in extra_columns], ", ".join(p["words"][:8])]
                             for i, p in enumerate(result["parts"])]))
    examples = [Example([("sample", str(t["id"])), ("prompt", str(t["prompt"])),
                         (result["top_samples_by"], f"{t['score']:.3g}")], t["image"], t["image_digest"])
                for t in result["top_samples"]]
    quality = f" The dictionary reconstructs its input with FVU {result['fvu']:.3f}." if "fvu" in result else ""
    return Section(
        title=f"What fine-tuning changed: {result['method']}, layer {result['layer']}",
        examples=examples, examples_title=f"Samples where the readout acts most (by {result['top_samples_by']})",
        intro=[f"Over the same {result['n_samples']} samples ({where}): {what}, read through the final norm and "
               f"unembedding. The readout ({result['readout']}) measures {result['relative_norm']:.3f} of the "
               f"features' spread ({result['spread']:.3g}). {verdict(result)}.{quality} "
               "`diff.safetensors` holds every part as a steering vector."],
        tables=tables, figures=figures)


def verdict(result: dict) -> str:
    """Whether the model changed, against the noise floor measured from the data."""
    if "noise_floor" not in result:  # (a diff.json written before the verdict)
        return "No noise floor recorded"
    how = "Changed" if result["changed"] else "Unchanged"
    side = "above" if result["changed"] else "within"
    return (f"{how}: {result['relative_norm']:.3f} is {side} the noise floor of {result['noise_floor']:.3f} (how far "
            f"the original's mean moves between random halves of these {result['n_samples']} samples, 95th "
            "percentile of 20 splits)")


def _cell(value) -> str:
    return "" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)
