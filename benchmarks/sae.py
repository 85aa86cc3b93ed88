"""Claim: vlmsteer's TopK SAE reaches overcomplete's reconstruction (FVU within 2 % relative)
in no more time, trained on the same features with the same latents, k, batch, epochs and
optimizer (Adam, one learning rate).

Features: synthetic residual-like rows, float16: a large shared offset plus sparse
non-negative combinations of random unit atoms (``--active`` of ``--atoms`` per row) plus
noise (seeded). Both train on the first N rows and are measured on the held-out rest:
FVU = Σ‖x − x̂‖² / Σ‖x − mean‖². vlmsteer's ``TopKSAE.fit`` reads the float16 rows as
``vlmsteer concepts`` does (its own recipe: geometric-median ``b_dec``, unit-norm decoder
rows, AuxK, warm-up/decay); overcomplete 0.3's ``TopKSAE`` (its default encoder) with
``train_sae`` (no monitoring, its default gradient clipping) reads a float32 copy through a
shuffled ``DataLoader`` (the copy is timed apart). overcomplete is an optional dev dependency;
its package ``__init__`` imports vision models (torchvision, timm), so only its ``sae``
subpackage is loaded here.

    python benchmarks/sae.py [--n 50000] [--d 512] [--latents 4096] [--k 32] [--batch 1024]
                             [--epochs 1] [--lr 5e-4] [--threads 2] [--store S --layer L] [--json out.json]
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
    ap.add_argument("--lr", type=float, default=5e-4)
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
    # warm-up: both sides' first use of torch's lazily imported parts is not timed
    TopKSAE(args.latents, seed=args.seed, l0=args.k, epochs=1, batch_size=64, lr=args.lr).fit(train[:128])
    warm = OcTopK(args.d, args.latents, top_k=args.k)
    mse = lambda x, x_hat, *_: ((x - x_hat) ** 2).mean()  # noqa: E731
    warm_rows = torch.utils.data.TensorDataset(torch.from_numpy(train[:128].astype(np.float32)))
    train_sae(warm, torch.utils.data.DataLoader(warm_rows, batch_size=64), mse,
              torch.optim.Adam(warm.parameters(), lr=args.lr), nb_epochs=1, monitoring=0)

    t0 = time.perf_counter()
    ours = TopKSAE(args.latents, seed=args.seed, l0=args.k, epochs=args.epochs, batch_size=args.batch,
                   lr=args.lr).fit(train)
    t_ours = time.perf_counter() - t0
    fvu_ours = fvu(test, ours.decode(ours.encode(test)))

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    x32 = torch.from_numpy(train.astype(np.float32))
    t_copy = time.perf_counter() - t0
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x32), batch_size=args.batch, shuffle=True)
    peer = OcTopK(args.d, args.latents, top_k=args.k)
    opt = torch.optim.Adam(peer.parameters(), lr=args.lr)
    t0 = time.perf_counter()
    train_sae(peer, loader, mse, opt, nb_epochs=args.epochs, monitoring=0)
    t_peer = time.perf_counter() - t0
    peer.eval()
    with torch.no_grad():
        x_hat = torch.cat([peer(torch.from_numpy(test[a:a + 4096].astype(np.float32)))[2]
                           for a in range(0, len(test), 4096)]).double().numpy()
    fvu_peer = fvu(test, x_hat)
    result = {"data": args.store or "synthetic", "n": args.n, "held_out": held, "d": args.d,
              "latents": args.latents, "k": args.k,
              "batch": args.batch, "epochs": args.epochs, "lr": args.lr, "threads": args.threads,
              "steps": -(-args.n // args.batch) * args.epochs,
              "vlmsteer_s": round(t_ours, 2), "overcomplete_s": round(t_peer, 2),
              "overcomplete_copy_s": round(t_copy, 2), "time_ratio": round(t_ours / t_peer, 3),
              "vlmsteer_fvu": round(fvu_ours, 5), "overcomplete_fvu": round(fvu_peer, 5),
              "fvu_ratio": round(fvu_ours / fvu_peer, 4)}
    print_and_save(result, args.json)


if __name__ == "__main__":
    main()
