"""The shipped model's quality and its layers' separability, over several held-out worlds.

Per world seed: (1) VQA accuracy per answer type (official metric) on every question and the
share of captions naming every shape (``scripts/evaluate_demo_model.py``'s figures); (2) a
linear probe predicting the answer from last-prompt features of the first 750 questions,
per layer (5-fold cross-validated, the 10 most frequent answers; ``vlmsteer separability``);
(3) the words K-Means concepts of colour (K = 6) and shape (K = 4) questions ground to first.
Mean ± sd over the seeds.

    python benchmarks/model_and_layers.py [--seeds 17,19,23] [--n-scenes 400] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import mean_sd, over_worlds, write_result  # noqa: E402


def one_world(vlm, seed: int, args, tmp: Path) -> dict:
    from vlmsteer.analysis.separability import separability
    from vlmsteer.data import load_coco_captions, load_vqav2, shapes
    from vlmsteer.runs.captions import run_captions
    from vlmsteer.evaluate.shapes_captions import load_scenes, mentions_every_shape
    from vlmsteer.runs.vqa import run_vqa
    from vlmsteer.extract import ExtractConfig, extract
    from vlmsteer.positions import Selector

    root = tmp / f"world-{seed}"
    shapes.write_dataset(root, args.n_scenes, seed=seed)
    questions = load_vqav2(root)
    _, report = run_vqa(vlm, questions, batch_size=64, max_new_tokens=3)
    caps = load_coco_captions(root, prompt=shapes.CAPTION_PROMPT)
    scenes = load_scenes(root)
    texts = run_captions(vlm, caps, batch_size=64, max_new_tokens=32)
    every = 100.0 * sum(mentions_every_shape(t, scenes[c.meta["image_id"]]) for t, c in zip(texts, caps)) / len(caps)
    store, _ = extract(vlm, questions[:args.probe_questions], tmp / f"store-{seed}",
                       ExtractConfig(layers=list(range(vlm.num_layers)), selector=Selector("last_prompt"),
                                     batch_size=64))
    sep = separability(store, label="answer", top=10, seed=seed)
    return {"seed": seed, "questions": len(questions), "vqa": report.per_type, "every_shape": every,
            "probe_accuracy": {r.layer: r.probe_accuracy for r in sep.layers},
            "majority_baseline": sep.majority_baseline,
            "concepts": {qt: grounded_words(vlm, questions, qt, k, tmp / f"concepts-{seed}-{k}")
                         for qt, k in CONCEPT_QUESTIONS.items()}}


CONCEPT_QUESTIONS = {"what color is the": 6, "what shape is": 4}


def grounded_words(vlm, questions, question_type: str, k: int, out: Path) -> list[str]:
    """The first word each of K K-Means concepts of these questions' last-prompt features
    (last layer) grounds to."""
    from vlmsteer.concepts import KMeansConcepts, ground_text
    from vlmsteer.data.filters import Filter
    from vlmsteer.extract import ExtractConfig, extract
    from vlmsteer.positions import Selector

    last = vlm.num_layers - 1
    samples = Filter.parse(f"question_type={question_type}").samples(questions)
    store, _ = extract(vlm, samples, out, ExtractConfig(layers=[last], selector=Selector("last_prompt"), batch_size=64))
    return [g.words[0] for g in ground_text(vlm, KMeansConcepts(k=k, seed=0).fit(store.features(last)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-llava")
    ap.add_argument("--seeds", default="17,19,23")
    ap.add_argument("--n-scenes", type=int, default=400)
    ap.add_argument("--probe-questions", type=int, default=750)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "model_and_layers.json"))
    args = ap.parse_args()
    worlds = over_worlds(args, one_world)
    ms = mean_sd
    summary = {"questions": ms([w["questions"] for w in worlds]),
               "vqa": {t: ms([w["vqa"][t] for w in worlds]) for t in worlds[0]["vqa"]},
               "every_shape": ms([w["every_shape"] for w in worlds]),
               "probe_accuracy": {l: ms([w["probe_accuracy"][l] for w in worlds]) for l in worlds[0]["probe_accuracy"]},
               "majority_baseline": ms([w["majority_baseline"] for w in worlds])}
    f = lambda v: f"{v[0]:.1f} ± {v[1]:.1f}"  # noqa: E731
    print(f"worlds {args.seeds}: {f(summary['questions'])} questions each")
    print("VQA accuracy: " + ", ".join(f"{t} {f(v)}" for t, v in summary["vqa"].items()))
    print(f"captions naming every shape: {f(summary['every_shape'])} %")
    for qt, k in CONCEPT_QUESTIONS.items():
        print(f"'{qt}' questions, K = {k}: first words " + "; ".join(
            f"world {w['seed']}: {', '.join(w['concepts'][qt])} ({len(set(w['concepts'][qt]))} distinct)" for w in worlds))
    print("probe accuracy per layer: " + ", ".join(f"{l}: {f(v)}" for l, v in summary["probe_accuracy"].items())
          + f" (majority class {f(summary['majority_baseline'])})")
    write_result(args.json, args, summary=summary, worlds=worlds)


if __name__ == "__main__":
    main()
