"""Claim (issue 38, acceptance 5): answering a POPE file costs what answering as many ordinary
questions with ``eval vqa`` costs (≤ 1.1×), and scoring CHAIR over 5,000 captions takes under
10 s on the 2-core machine.

1. One shapes world; ``eval vqa --format pope`` on its adversarial POPE file and ``eval vqa`` on
   as many of its VQAv2 questions (``--limit``), whole commands in this process, alternating
   which runs first, the median of ``--repeats`` each.
2. ``vlmsteer score chair`` as a user runs it (a fresh process: imports, reading the annotations,
   scoring, writing) on 5,000 captions of 1,000 images: random sentences of COCO objects, their
   synonyms and plurals, 24 words on average, over COCO-format annotations of those images.

    python benchmarks/hallucination_cost.py [--scenes 300] [--repeats 3] [--captions 5000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import vlmsteer, write_result  # noqa: E402
from chair_parity import synthetic_coco  # noqa: E402

from vlmsteer.data import shapes  # noqa: E402


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    vlmsteer([*args, "--overwrite"])
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--captions", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=44)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "hallucination_cost.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hallucination-cost-"))
    paths = shapes.write_dataset(tmp / "world", args.scenes, seed=args.seed)
    n = len(paths["pope_adversarial"].read_text().splitlines())
    pope = ["eval", "vqa", "--model", "shapes-llava", "--format", "pope", "--data", str(paths["pope_adversarial"]),
            "--max-new-tokens", "3", "--out", str(tmp / "pope")]
    vqa = ["eval", "vqa", "--model", "shapes-llava", "--data", str(tmp / "world"), "--limit", str(n),
           "--max-new-tokens", "3", "--out", str(tmp / "vqa")]
    timed(pope), timed(vqa)  # warm-up (model files, caches)
    times = {"pope": [], "vqa": []}
    for r in range(args.repeats):
        for name, cmd in (("pope", pope), ("vqa", vqa)) if r % 2 == 0 else (("vqa", vqa), ("pope", pope)):
            times[name].append(timed(cmd))
    ratio = statistics.median(times["pope"]) / statistics.median(times["vqa"])
    print(f"POPE file of {n} questions vs {n} VQAv2 questions: {statistics.median(times['pope']):.2f} s vs "
          f"{statistics.median(times['vqa']):.2f} s = {ratio:.3f}")

    folder = tmp / "coco"
    folder.mkdir()
    caps = synthetic_coco(folder, args.seed, 1000, args.captions)
    (folder / "caps.jsonl").write_text("".join(json.dumps({"image_id": i, "caption": c}) + "\n" for i, c in caps))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vlmsteer", "score", "chair", "--captions", str(folder / "caps.jsonl"),
                    "--annotations", str(folder), "--out", str(tmp / "chair")], check=True, capture_output=True)
    chair_s = time.perf_counter() - start
    words = sum(len(c.split()) for _, c in caps) / len(caps)
    print(f"score chair, {len(caps)} captions ({words:.1f} words on average), whole process: {chair_s:.2f} s")
    write_result(args.json, args, pope_s=times["pope"], vqa_s=times["vqa"], ratio=ratio, questions=n,
                 chair_captions=len(caps), chair_words=words, chair_s=chair_s)


if __name__ == "__main__":
    main()
