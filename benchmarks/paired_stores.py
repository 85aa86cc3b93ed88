"""Two large imported stores for the bounded-memory runs (``vlmsteer concepts`` and ``vlmsteer
diff`` on 100k × 4096 float16 features): ``OUT/original`` (rows: ``--shared`` random
directions mixed at random, plus noise) and ``OUT/finetuned`` (the same rows + a little noise +
one direction of norm 4 on 10 % of the rows), each one float16 file of ``n × d × 2`` bytes,
written chunk by chunk (never a whole array in memory).

    python benchmarks/paired_stores.py --out DIR [--n 100000] [--d 4096] [--shared 256] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--shared", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out, n, d = Path(args.out), args.n, args.d
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        a = np.lib.format.open_memmap(f"{tmp}/a.npy", mode="w+", dtype=np.float16, shape=(n, d))
        b = np.lib.format.open_memmap(f"{tmp}/b.npy", mode="w+", dtype=np.float16, shape=(n, d))
        direction = rng.standard_normal(d).astype(np.float32)
        direction /= np.linalg.norm(direction)
        basis = rng.standard_normal((args.shared, d)).astype(np.float32)
        for s in range(0, n, 5000):
            m = min(n, s + 5000) - s
            x = 0.1 * rng.standard_normal((m, args.shared)).astype(np.float32) @ basis
            x += 0.3 * rng.standard_normal((m, d)).astype(np.float32)
            a[s:s + m] = x
            y = x + 0.05 * rng.standard_normal((m, d)).astype(np.float32)
            y[rng.random(m) < 0.1] += 4 * direction
            b[s:s + m] = y
        a.flush()
        b.flush()
        del a, b
        with open(f"{tmp}/records.jsonl", "w") as f:
            f.writelines(json.dumps({"id": f"s{i}"}) + "\n" for i in range(n))
        for name, array in (("original", "a"), ("finetuned", "b")):
            subprocess.run([sys.executable, "-m", "vlmsteer", "store", "import", "--features", f"{tmp}/{array}.npy",
                            "--records", f"{tmp}/records.jsonl", "--layer", "20", "--out", str(out / name)],
                           check=True)


if __name__ == "__main__":
    main()
