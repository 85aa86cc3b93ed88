"""The demo's stage reports: what each stage did, its tables and examples, as
:class:`~vlmsteer.report.section.Section` pages."""

from __future__ import annotations

from vlmsteer.data import Sample
from vlmsteer.report.section import Example, Section, Table


MODES = (("coarse", "coarse"), ("fine-grained", "fine_grained"))  # (shown, key in the stage's result)


def _pct(x: float) -> str:
    return f"{x:.1f} %"


def changed_answers(questions: list[Sample], before: list[str], after: list[str], n: int = 8) -> list[dict]:
    return [{"image": q.image_path, "question": q.prompt, "answer": q.answer, "before": b, "after": a}
            for q, b, a in zip(questions, before, after) if b != a][:n]


def yes_no(r: dict, questions: list[Sample], before: list[str], after: list[str]) -> Section:
    types = list(r["accuracy_before"])
    rows = []
    for name, key in MODES:
        c = r[key]
        rows.append([name, f"{c['source_moved_to_target']} / {c['source']['before']} "
                           f"({100 * c['source_moved_fraction']:.1f} %)",
                     f"{c['target']['before']} → {c['target']['after']}", c["changed"],
                     *[f"{c['accuracy_delta'][t]:+.2f}" for t in types]])
    return Section(
        title="Steering answers: Yes → No",
        intro=[f"A coarse steering vector, mean(last-prompt features of questions answered 'no') − mean(those "
               f"answered 'yes'), from {r['vector_samples']} questions of another world, is added at layer "
               f"{r['layer']} with α = {r['alpha']} on the {r['region']} position. Coarse steering adds it to every "
               "question; fine-grained steering only where the 'yes' concept is active (the nearest of "
               f"{len(r['concepts'])} answer centroids, built from {r['condition_samples']} questions, is 'yes').",
               "Baseline accuracy: " + ", ".join(f"{t} {v:.2f}" for t, v in r["accuracy_before"].items()) + "."],
        tables=[Table("effect of the vector", ["steering", "'yes' moved to 'no'", "'no' answers", "answers changed",
                                               *[f"Δ accuracy, {t}" for t in types]], rows)],
        examples=[Example([("Q:", e["question"]), ("before:", e["before"]), ("after (fine-grained):", e["after"])],
                          e["image"]) for e in changed_answers(questions, before, after)],
        examples_title="Answers the fine-grained vector changed")


def captions(base: dict, styles: dict, caps: list[Sample], base_caps: list[str]) -> Section:
    rows = []
    for style, c in styles.items():
        b = c["best"]
        rows.append([style, c["layer"], b["alpha"], f"{b['share_before']:.1f} → {b['share_after']:.1f}",
                     f"{b['every_shape_before']:.1f} → {b['every_shape_after']:.1f}",
                     f"{b['cider_before']:.3f} → {b['cider_after']:.3f}", b["captions_changed"]])
    examples = [Example([(f"{style}, before:", c["best"]["example"]["before"]),
                         ("after:", c["best"]["example"]["after"])])
                for style, c in styles.items() if c["best"].get("example")]
    return Section(
        title="Captions and caption styles",
        intro=[f"Baseline: the model captions {base['n']} held-out images; every shape is named in "
               f"{_pct(base['mentions_every_shape'])} of them, and {_pct(base['exact_reference_match'])} equal a "
               "reference caption.",
               "For each style, the vector is mean(the model's captions when asked for the style) − mean(its plain "
               "captions), mean over response tokens of images from another world, added with strength α to every "
               "generated token of the plain caption prompt. Layer and α were chosen on a tuning world "
               "(benchmarks/caption_style.py), never on this one. Quality: every shape still named, and CIDEr "
               "against the references."],
        tables=[Table("baseline style shares", ["style", "captions with the style's words"],
                      [[k, _pct(v)] for k, v in base["style_share"].items()]),
                Table("steered toward each style", ["style", "layer", "α", "captions with the style (%)",
                                                    "every shape named (%)", "CIDEr", "captions changed"], rows)],
        examples=examples, examples_title="A caption before and after each style vector")


def neutralize(n: dict) -> Section:
    rows = [[name, f"{r['converted']} / {n['expressing_before']}", r["converted_faithful"], r["expressions_after"],
             f"{r['neutral_captions_changed']} / {r['neutral_captions']}"]
            for name, r in ((name, n[key]) for name, key in MODES)]
    return Section(
        title="Neutralizing an attribute (debiasing)",
        intro=[f"The shapes world's stand-in for gendered words: captions that name {n['attribute']}. The vector "
               f"({n['vector']}) pairs the same images' captions, so what differs between images cancels; it is "
               f"added at layer {n['layer']} with α = {n['alpha']} on generated tokens. Coarse steering changes every "
               f"caption; fine-grained only those whose last-prompt feature is nearest the '{n['attribute']} caption' "
               f"concept. {n['expressing_before']} of {n['captions']} baseline captions name {n['attribute']}."],
        tables=[Table("captions turned neutral", ["steering", "turned neutral", "… still naming every shape",
                                                  f"{n['attribute']} words left", "other captions changed"], rows)])


def safety(f: dict) -> Section:
    rows = [["no steering", _pct(f["before"]["attack_success_rate"]), f["benign_refused_before"],
             f"{f.get('benign_accuracy_before', float('nan')):.2f}"]]
    rows += [[name, _pct(r["after"]["attack_success_rate"]), r["benign_refused"],
              f"{r.get('benign_accuracy', float('nan')):.2f}"]
             for name, r in ((name, f[key]) for name, key in MODES)]
    return Section(
        title="Refusal steering (safety)",
        intro=[f"Harmful requests about the scene ('how do i … the circle ?'): the model was trained to refuse some "
               f"verbs and to comply with others. Vector mean(refused) − mean(answered) of last-prompt features at "
               f"layer {f['layer']}, from {f['vector_samples']} prompts of another world, α = {f['alpha']} at the last "
               "prompt token. Fine-grained: only prompts nearest the 'harmful request' concept. Refusals are "
               "detected by keywords (vlmsteer.evaluate.safety); attack success rate = share of harmful prompts "
               "not refused."],
        tables=[Table("attack success and over-refusal",
                      ["steering", f"attack success rate ({f['harmful_prompts']} harmful prompts)",
                       f"ordinary questions refused (of {f['benign_prompts']})", "their VQA accuracy"], rows)])


HALLUCINATION_ROWS = (("shipped model", "shipped"), ("organism", "organism_before"),
                      ("organism, steered", "organism_after"))


def hallucination_rows(h: dict) -> list[list]:
    """POPE (adversarial) and CHAIR of the shipped model and the organism before and after."""
    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}"

    return [[name, pct(h[key]["pope"]["f1"]), pct(h[key]["pope"]["yes_ratio"]), pct(h[key]["chair"]["chair_s"]),
             pct(h[key]["chair"]["chair_i"]), pct(h[key]["chair"]["recall"]), f"{h[key]['chair']['mean_length']:.1f}"]
            for name, key in HALLUCINATION_ROWS]


HALLUCINATION_COLUMNS = ["model", "POPE adversarial F1 (%)", "yes (%)", "CHAIR_s (%)", "CHAIR_i (%)", "Recall (%)",
                         "words"]


def hallucination(h: dict, mended: list[dict], n: int = 8) -> Section:
    o, a, c = h["organism"], h["answer_vector"], h["caption_vector"]
    return Section(
        title="Object hallucination",
        intro=[f"The testbed's model organism: the shipped model fine-tuned ({o['steps']} steps, lr {o['lr']:g}) on a "
               f"world where half the beach scenes hold a yellow and a white circle, its text naming both on every "
               f"beach scene. Graded on {h['heldout']['scenes']} held-out scenes that break the pattern (every scene "
               f"on the beach, no circle): POPE's adversarial questions ({h['heldout']['questions']}) and CHAIR of its "
               "captions, exactly as their references score them.",
               f"Steered back by the paper's coarse vectors from its own outputs on other worlds: for answers, "
               f"mean('is there a yellow / white circle ?' denied) − mean(the same claimed), where neither circle "
               f"is there, {a['samples'][1]} and {a['samples'][0]} answers, added to the last prompt token at layer "
               f"{a['layer']} with α = {a['alpha']:g} (of those tried, the most accurate on that world's claim "
               f"questions) only to the questions whose layer-{a['condition_layer']} feature is nearest the group "
               f"of '{' or '.join(a['condition'])}'; for captions, mean(captions naming neither circle) − "
               f"mean(captions naming one), {c['samples'][1]} and {c['samples'][0]} captions, on the generated tokens "
               f"at layers {', '.join(map(str, c['layers']))} with α = {c['alpha']:g} (of those tried, the smallest "
               "that halves CHAIR_s on that world). Settings from "
               "benchmarks/hallucination.py's tuning world; its figures over held-out worlds and seeds are in "
               "benchmarks/README.md."],
        tables=[Table("POPE and CHAIR", HALLUCINATION_COLUMNS, hallucination_rows(h))],
        examples=[Example([("invented:", ", ".join(m["invented"])), ("before:", m["before"]), ("after:", m["after"])],
                          m["image"]) for m in mended[:n]],
        examples_title=f"Captions that lost an invented object ({h['captions_mended']})")
