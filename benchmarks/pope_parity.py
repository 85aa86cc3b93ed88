"""Claim (issue 38, acceptance 1): ``vlmsteer score pope`` equals POPE's own ``evaluate.py`` on
answer files for the three official COCO splits: TP/FP/TN/FN and the five figures exactly, its
parsing quirks included.

For each split, random answer files are written (phrasings that stress the reference's parsing:
"Nope.", "NO", "not", commas, several sentences, newlines, empty answers), the reference script
is run on each as it stands (its two path variables set), and ``vlmsteer score pope`` on the
same files; every printed figure must be equal.

    git clone https://github.com/RUCAIBox/POPE /tmp/pope
    python benchmarks/pope_parity.py --pope /tmp/pope --files 20
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PHRASES = ["Yes.", "No.", "yes", "no", "Yes, there is a {o} in the image.", "No, there is no {o} in the image.",
           "There is not a {o}.", "Nope.", "NO", "Not really.", "I don't think so.", "no, it is not there",
           "Yes. No, not at all.", "", ".no", "There is a {o}, no doubt.", "no\nthere is none", "Absolutely",
           "The image does not show a {o}.", "No {o} is visible", "not sure", "yes, no"]


def reference_figures(evaluate_py: Path, answers: Path, labels: Path) -> dict:
    """Run the reference script as it stands, with its two paths set; parse what it prints."""
    source = evaluate_py.read_text()
    source = source.replace("ans_file = ''", f"ans_file = {str(answers)!r}", 1)
    source = source.replace("label_file = ''", f"label_file = {str(labels)!r}", 1)
    run = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True)
    if run.returncode:
        return {"error": run.stderr.strip().splitlines()[-1]}
    lines = run.stdout.splitlines()
    tp, fp, tn, fn = map(int, lines[1].split())
    figures = dict(re.findall(r"^(Accuracy|Precision|Recall|F1 score|Yes ratio): (.*)$", run.stdout, re.M))
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "accuracy": float(figures["Accuracy"]),
            "precision": float(figures["Precision"]), "recall": float(figures["Recall"]),
            "f1": float(figures["F1 score"]), "yes_ratio": float(figures["Yes ratio"])}


def ours(questions: Path, answers: Path, out: Path) -> dict:
    run = subprocess.run([sys.executable, "-m", "vlmsteer", "score", "pope", "--questions", str(questions),
                          "--answers", str(answers), "--out", str(out)], capture_output=True, text=True)
    if run.returncode:
        return {"error": run.stderr.strip()}
    return json.loads((out / "metrics.json").read_text())["pope"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pope", type=Path, required=True, help="a clone of RUCAIBox/POPE")
    parser.add_argument("--files", type=int, default=20, help="random answer files per split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for split in ("random", "popular", "adversarial"):
            questions = args.pope / "output" / "coco" / f"coco_pope_{split}.json"
            rows = [json.loads(line) for line in questions.read_text().splitlines()]
            equal = 0
            for k in range(args.files):
                p_yes = rng.random()  # from a model that always says no to one that always says yes
                answers = Path(tmp) / f"{split}-{k}.jsonl"
                lines = []
                for row in rows:
                    obj = row["text"].split("Is there a ")[-1].split(" in the image")[0].removeprefix("n ")
                    phrase = rng.choice(PHRASES[:3:2] if rng.random() < p_yes else PHRASES[1::2])
                    if rng.random() < 0.3:
                        phrase = rng.choice(PHRASES)
                    lines.append(json.dumps({"question_id": row["question_id"], "answer": phrase.format(o=obj)}))
                answers.write_text("\n".join(lines) + "\n")
                theirs, mine = reference_figures(args.pope / "evaluate.py", answers, questions), \
                    ours(questions, answers, Path(tmp) / f"out-{split}-{k}")
                same = theirs == {key: mine.get(key) for key in theirs}
                equal += same
                if not same:
                    failures += 1
                    print(f"  {split} file {k} differs: reference {theirs}, vlmsteer {mine}")
            print(f"coco_pope_{split}: {len(rows)} questions, {equal}/{args.files} answer files equal on all nine "
                  f"figures (seed {args.seed})")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
