"""Claim: vlmsteer's TopK SAE reaches overcomplete's reconstruction (FVU within 2 % relative)
in no more time, trained on the same features with the same latents, k, batch, epochs and
optimizer (Adam, one learning rate).

Features: synthetic residual-like rows, float16: a large shared offset plus sparse non-negative
combinations of random unit atoms (``--active`` of ``--atoms`` per row) plus noise (seeded); or
a feature store's rows (``--store S --layer L``). Both train on the first 90 % of the rows and
are measured on the held-out rest: FVU = Σ‖x − x̂‖² / Σ‖x − mean‖². vlmsteer's ``TopKSAE.fit``
reads the float16 rows as ``vlmsteer concepts`` does (its own recipe: geometric-median
``b_dec``, unit-norm decoder rows, a tied encoder scaled by least squares, AuxK, warm-up/decay,
Adam's second-moment decay suited to the run's length); overcomplete 0.3's ``TopKSAE`` (its
default encoder, which is a plain ``Linear``: the "linear" factory passes
``norm_layer=nn.Identity``, whatever the docstring says of BatchNorm; unit-norm decoder rows, no
decoder bias) with ``train_sae`` (no monitoring, its default gradient clipping) reads a float32
copy through a shuffled ``DataLoader`` (the copy is not timed). Each learning rate of ``--lr``
(a comma list) is one comparison; both sides train ``--repeats`` times, interleaved, and the
median times are compared (this machine's timing wanders by ±20 % between runs; the FVUs do not:
both sides are seeded). overcomplete is an optional dev dependency; its package ``__init__``
imports vision models (torchvision, timm), so only its ``sae`` subpackage is loaded here.

    python benchmarks/sae.py [--n 50000] [--d 512] [--latents 4096] [--k 32] [--batch 1024]
                             [--epochs 1] [--lr 5e-4[,2e-3,...]] [--repeats 3] [--threads 2]
                             [--store S --layer L] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import time
import types

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _common import print_and_save  # noqa: E402


def features(n: int, d: int, atoms: int, active: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dictionary = rng.normal(size=(atoms, d)).astype(np.float32)
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    offset = rng.normal(size=d).astype(np.float32) * 3
    out = np.empty((n, d), dtype=np.float16)
    for start in range(0, n, 4096):
        m = min(n, start + 4096) - start
        idx = rng.integers(atoms, size=(m, active))
        codes = rng.exponential(2.0, size=(m, active)).astype(np.float32)
        rows = np.einsum("ma,mad->md", codes, dictionary[idx]) + offset
        out[start:start + m] = rows + 0.1 * rng.standard_normal((m, d), np.float32)
    return out


def fvu(x: np.ndarray, x_hat: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def overcomplete_sae():
    """overcomplete's ``sae`` subpackage without its package ``__init__`` (vision models)."""
    spec = importlib.util.find_spec("overcomplete")
    if spec is None:
        raise SystemExit("overcomplete is not installed: pip install --no-deps overcomplete==0.3.0 einops")
    pkg = types.ModuleType("overcomplete")
    pkg.__path__ = [str(pathlib.Path(spec.origin).parent)]
    sys.modules.setdefault("overcomplete", pkg)
    from overcomplete.sae import TopKSAE, train_sae

    return TopKSAE, train_sae


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50000, help="training rows (plus 10 %% held out)")
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--latents", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--atoms", type=int, default=2048)
    ap.add_argument("--active", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", default="5e-4", help="Adam's learning rate, or a comma list (one comparison each)")
    ap.add_argument("--repeats", type=int, default=3, help="trainings per side (interleaved); median times")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", help="train on this feature store's rows instead (e.g. the shapes world's "
                                    "caption features); --n and --d then come from it")
    ap.add_argument("--layer", type=int, default=-1)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from vlmsteer.concepts.sae_methods import TopKSAE

    if args.store:
        from vlmsteer.store import FeatureStore

        st = FeatureStore.open(args.store)
        z = st.features(st.layer_index(args.layer), dtype=None)
        z = z[np.random.default_rng(args.seed).permutation(len(z))]
        held = max(1, len(z) // 10)
        args.n, args.d = len(z) - held, z.shape[1]
    else:
        held = args.n // 10
        z = features(args.n + held, args.d, args.atoms, args.active, args.seed)
    train, test = z[:args.n], z[args.n:]

    OcTopK, train_sae = overcomplete_sae()
    mse = lambda x, x_hat, *_: ((x - x_hat) ** 2).mean()  # noqa: E731

    def ours(lr, epochs, rows, batch):
        t0 = time.perf_counter()
        sae = TopKSAE(args.latents, seed=args.seed, l0=args.k, epochs=epochs, batch_size=batch, lr=lr).fit(rows)
        return time.perf_counter() - t0, lambda x: sae.decode(sae.encode(x))

    def peer(lr, epochs, rows, batch):
        torch.manual_seed(args.seed)
        x32 = torch.from_numpy(rows.astype(np.float32))
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x32), batch_size=batch, shuffle=True)
        sae = OcTopK(args.d, args.latents, top_k=args.k)
        opt = torch.optim.Adam(sae.parameters(), lr=lr)
        t0 = time.perf_counter()
        train_sae(sae, loader, mse, opt, nb_epochs=epochs, monitoring=0)
        elapsed = time.perf_counter() - t0
        sae.eval()

        @torch.no_grad()
        def reconstruct(x):
            return torch.cat([sae(torch.from_numpy(x[a:a + 4096].astype(np.float32)))[2]
                              for a in range(0, len(x), 4096)]).double().numpy()
        return elapsed, reconstruct

    # warm-up: both sides' first use of torch's lazily imported parts is not timed
    for side in (ours, peer):
        side(5e-4, 1, train[:128], 64)
    runs = []
    for lr in (float(v) for v in str(args.lr).split(",")):
        times = {"vlmsteer": [], "overcomplete": []}
        fvus = {}
        for _ in range(args.repeats):  # interleaved, so a slow stretch of the machine hits both
            for name, side in (("vlmsteer", ours), ("overcomplete", peer)):
                elapsed, reconstruct = side(lr, args.epochs, train, args.batch)
                times[name].append(elapsed)
                fvus.setdefault(name, fvu(test, reconstruct(test)))
        t_ours, t_peer = (float(np.median(times[k])) for k in ("vlmsteer", "overcomplete"))
        runs.append({"lr": lr, "vlmsteer_s": round(t_ours, 2), "overcomplete_s": round(t_peer, 2),
                     "time_ratio": round(t_ours / t_peer, 3),
                     "vlmsteer_fvu": round(fvus["vlmsteer"], 5), "overcomplete_fvu": round(fvus["overcomplete"], 5),
                     "fvu_ratio": round(fvus["vlmsteer"] / fvus["overcomplete"], 4),
                     "times_s": {k: [round(v, 2) for v in vs] for k, vs in times.items()}})
    result = {"data": args.store or "synthetic", "n": args.n, "held_out": held, "d": args.d,
              "latents": args.latents, "k": args.k, "batch": args.batch, "epochs": args.epochs,
              "threads": args.threads, "repeats": args.repeats, "steps": -(-args.n // args.batch) * args.epochs,
              "runs": runs}
    print_and_save(result, args.json)


if __name__ == "__main__":
    main()
