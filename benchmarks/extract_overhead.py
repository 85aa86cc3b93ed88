"""Claim: extraction costs ≤ 10 % over a bare forward loop, and its memory does not grow with N.

1. Time: teacher-forced extraction of N samples through ``vlmsteer.extract`` vs a bare loop
   that builds the same batches (same processor calls, same batch size) and calls
   ``model(**batch)``; both in this process, interleaved, best of R repeats each.
2. Memory: peak RSS of a fresh process extracting N samples vs one extracting 10·N.

    python benchmarks/extract_overhead.py [--model shapes-llava] [--n 512] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import load_model, shapes_vqa  # noqa: E402


def bare_loop(vlm, samples, batch_size):
    from vlmsteer.extract import append_responses, response_ids

    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            batch = vlm.prepare([s.image for s in chunk], [s.prompt for s in chunk])
            prompts = [vlm.build_prompt(s.prompt) for s in chunk]
            full = append_responses(vlm, batch, [response_ids(vlm, p, s.answer) for p, s in zip(prompts, chunk)])
            vlm.model(**vlm.model_inputs(full))


def ours(vlm, samples, batch_size, layers):
    from vlmsteer.extract import ExtractConfig, extract

    with tempfile.TemporaryDirectory() as d:
        extract(vlm, samples, Path(d) / "store", ExtractConfig(layers=layers, batch_size=batch_size), progress=False)


def timing(model: str, n: int, batch_size: int, repeats: int) -> dict:
    vlm = load_model(model)
    samples = shapes_vqa(n)
    layers = [vlm.num_layers // 2, vlm.num_layers - 1]
    bare_loop(vlm, samples[:batch_size * 2], batch_size)  # warm-up
    t_bare, t_ours = [], []
    runs = [(t_bare, lambda: bare_loop(vlm, samples, batch_size)), (t_ours, lambda: ours(vlm, samples, batch_size, layers))]
    for i in range(repeats):  # alternate the order so neither side always runs second
        for times, fn in (runs if i % 2 == 0 else runs[::-1]):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return {"n": len(samples), "batch_size": batch_size, "layers": layers, "bare_s": min(t_bare),
            "ours_s": min(t_ours), "ratio": min(t_ours) / min(t_bare)}


def peak_rss_child(model: str, n: int, batch_size: int) -> float:
    """Peak RSS (MiB) of a fresh process that extracts ``n`` samples."""
    code = (
        "import sys, resource, tempfile; sys.path.insert(0, %r)\n"
        "from _common import load_model, shapes_vqa\n"
        "from pathlib import Path\n"
        "from vlmsteer.extract import ExtractConfig, extract\n"
        "vlm = load_model(%r); samples = shapes_vqa(%d)\n"
        "d = tempfile.mkdtemp()\n"
        "extract(vlm, samples, Path(d) / 's', ExtractConfig(layers=[0, -1], batch_size=%d), progress=False)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    ) % (str(Path(__file__).parent), model, n, batch_size)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-llava")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t = timing(args.model, args.n, args.batch_size, args.repeats)
    small = peak_rss_child(args.model, args.n, args.batch_size)
    large = peak_rss_child(args.model, 10 * args.n, args.batch_size)
    result = {"model": args.model, **t, "peak_rss_mib_n": small, "peak_rss_mib_10n": large,
              "rss_ratio": large / small}
    print(json.dumps(result, indent=2))
    print(f"time ratio ours/bare = {t['ratio']:.3f} (claim <= 1.10); "
          f"peak RSS 10N/N = {result['rss_ratio']:.3f} (claim <= 1.2)")


if __name__ == "__main__":
    main()
