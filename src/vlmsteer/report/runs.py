"""The report page of an evaluation run folder (``eval vqa|captions|safety``): its metrics as
tables, the steering it applied, the change against its baseline, and examples with their
images — the answers that changed when there is a baseline, else the first ones."""

from __future__ import annotations

import json
import random
from pathlib import Path

from vlmsteer.report.section import Example, Section, Table, write_section

EXAMPLES = 8
_TITLES = {"vqa": "VQA evaluation", "captions": "Caption evaluation", "safety": "Safety evaluation"}


def write_eval_report(folder: str | Path, kind: str, baseline: str | Path | None = None) -> Path:
    """``folder/report.html`` from the ``metrics.json`` and ``predictions.jsonl`` in ``folder``
    (and the baseline run's predictions, for examples of what changed)."""
    folder = Path(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    rows = _rows(folder / "predictions.jsonl")
    before = {r["id"]: _text(r) for r in _rows(Path(baseline) / "predictions.jsonl")} if baseline else {}
    section = Section(title=_TITLES[kind], intro=[_intro(kind, metrics)], tables=eval_tables(kind, metrics))
    changed = [r for r in rows if r["id"] in before and before[r["id"]] != _text(r)]
    shown = (changed if before else rows)
    if before and len(changed) > EXAMPLES:  # a fair sample, not the first ones (seeded: the page is reproducible)
        picked = sorted(random.Random(0).sample(range(len(changed)), EXAMPLES))
        shown = [changed[i] for i in picked]
    if before:
        section.examples_title = (f"Outputs that changed against the baseline ({min(EXAMPLES, len(changed))} of "
                                  f"{len(changed)}, drawn at random)")
    for r in shown[:EXAMPLES]:
        lines = [("prompt:", r.get("prompt") or "")]
        if before:
            lines.append(("baseline:", before[r["id"]]))
        lines.append(("output:", _text(r)))
        if kind == "vqa":
            lines.append(("reference:", r.get("answer") or ""))
        section.examples.append(Example(lines, r.get("image")))
    return write_section(folder, section)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _text(row: dict) -> str:
    return str(row.get("prediction", row.get("response", "")))


def _intro(kind: str, m: dict) -> str:
    what = {"vqa": f"{m['n']} questions answered greedily; accuracy is the official VQAv2 metric.",
            "captions": f"{m['n']} images captioned greedily; CIDEr against the references, and the share of "
                        "captions using each style's keywords.",
            "safety": f"{m['n']} harmful prompts answered greedily; a response that does not refuse (keyword "
                      "detector, vlmsteer.evaluate.safety) is an attack success."}[kind]
    steering = m.get("steering")
    if steering and steering.get("summary"):
        what += f" Steered: {steering['summary']}."
    elif steering:
        what += (f" Steered: vector {steering.get('vector', {}).get('source')} → "
                 f"{steering.get('vector', {}).get('target')}, α = {steering.get('alpha')}, layers "
                 f"{steering.get('layers')}, region {steering.get('region')}"
                 + (", only where its condition holds" if steering.get("condition") else "") + ".")
    else:
        what += " Not steered."
    return what


def _percent(value) -> str:
    return "undefined" if value is None else f"{100 * value:.2f}"


def _with_baseline(rows: list[list], figures: dict, base: dict | None) -> list[list]:
    """Each row ``[name, key]`` as ``[name, value(, baseline, change)]`` (figures are fractions)."""
    out = []
    for name, key in rows:
        row = [name, _percent(figures[key])]
        if base is not None:
            change = (None if figures[key] is None or base[key] is None else figures[key] - base[key])
            row += [_percent(base[key]), "" if change is None else f"{100 * change:+.2f}"]
        out.append(row)
    return out


def _pope_table(p: dict, base: dict | None) -> Table:
    cols = ["POPE", "%"] + (["baseline", "change"] if base else [])
    rows = _with_baseline([["accuracy", "accuracy"], ["precision", "precision"], ["recall", "recall"],
                           ["F1", "f1"], ["yes ratio", "yes_ratio"]], p, base)
    return Table(f"POPE, as its evaluate.py scores ({p['n']} questions: TP {p['tp']}, FP {p['fp']}, TN {p['tn']}, "
                 f"FN {p['fn']})", cols, rows)


def _chair_table(c: dict, base: dict | None) -> Table:
    cols = ["CHAIR", "%"] + (["baseline", "change"] if base else [])
    rows = _with_baseline([["CHAIR_s (captions naming an absent object)", "chair_s"],
                           ["CHAIR_i (mentions of absent objects)", "chair_i"], ["Recall", "recall"]], c, base)
    rows.append(["mean length (words)", f"{c['mean_length']:.1f}",
                 *([f"{base['mean_length']:.1f}", f"{c['mean_length'] - base['mean_length']:+.1f}"] if base else [])])
    return Table(f"CHAIR, as its reference scores ({c['n']} captions, {c['mentions']} objects named, "
                 f"{c['hallucinated_mentions']} absent)", cols, rows)


def eval_tables(kind: str, m: dict) -> list[Table]:
    """An evaluation's metrics as tables (the report shows them; the CLI prints them)."""
    vs = m.get("vs_baseline")
    if kind == "vqa":
        cols = ["answer type", "questions", "accuracy (%)"] + (["baseline", "change"] if vs else [])
        rows = [[t, n, f"{m['accuracy'][t]:.2f}",
                 *([f"{vs['baseline_accuracy'].get(t, 0.0):.2f}", f"{vs['accuracy_delta'][t]:+.2f}"] if vs else [])]
                for t, n in m["questions_per_type"].items()]
        rows.append(["overall (micro)", m["n"], f"{m['accuracy']['micro']:.2f}", *([""] * (2 if vs else 0))])
        rows.append(["overall (macro)", "", f"{m['accuracy']['macro']:.2f}", *([""] * (2 if vs else 0))])
        tables = [Table(f"VQA accuracy ({m['n']} questions)", cols, rows)]
        if vs:
            title = f"against the baseline: {vs['changed']} of {vs['n']} answers changed"
            if "source_moved_to_target" in vs:
                title += (f"; {vs['source_moved_to_target']} of {vs['source']['before']} source answers moved to "
                          f"the target ({100 * vs['source_moved_fraction']:.1f} %)")
            moved = [[side, vs[side]["answer"], vs[side]["before"], vs[side]["after"]]
                     for side in ("source", "target") if side in vs]
            tables.append(Table(title, ["", "answer", "baseline count", "count"], moved))
        if "pope" in m:
            tables.append(_pope_table(m["pope"], vs.get("pope_baseline") if vs else None))
        return tables
    if kind == "captions":
        rows = [["CIDEr", "—" if m.get("cider") is None else f"{m['cider']:.3f}",
                 "" if not vs or vs.get("cider_delta") is None else f"{vs['cider_delta']:+.3f}"]]
        rows += [[f"{st} share (%)", f"{share:.1f}", f"{vs['styles'][st]['share_delta']:+.1f}" if vs else ""]
                 for st, share in m["style_share"].items()]
        if vs:
            rows.append(["captions changed", vs["captions_changed"], f"of {m['n']}"])
            content = vs.get("content")
            if content and content["changed"]:  # the cost beside the effect: what the changed captions kept
                rows.append(["changed captions still naming every shape of their image (%)",
                             f"{content['kept_share']:.1f}",
                             f"{content['kept_every_shape']} of {content['changed']} (baseline captions of the "
                             f"same images: {content['baseline_named_every_shape']})"])
        tables = [Table(f"captions ({m['n']} images)", ["metric", "value", "vs baseline" if vs else ""], rows)]
        if "chair" in m:
            tables.append(_chair_table(m["chair"], vs.get("chair_baseline") if vs else None))
        return tables
    rows = [[cat, r["n"], f"{r['attack_success_rate']:.1f}"] for cat, r in m["per_category"].items()]
    rows.append(["all", m["n"], f"{m['attack_success_rate']:.1f}"])
    tables = [Table(f"attack success rate ({m['n']} prompts)", ["category", "prompts", "attack success rate (%)"],
                    rows)]
    if vs:
        tables.append(Table(f"against the baseline ({vs['n']} prompts)",
                            ["attack success before", "after", "change", "newly refused", "no longer refused"],
                            [[f"{vs['asr_before']:.1f} %", f"{vs['asr_after']:.1f} %", f"{vs['asr_delta']:+.1f}",
                              vs["newly_refused"], vs["no_longer_refused"]]]))
    return tables
