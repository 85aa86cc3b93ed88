"""Claim (issue 37, acceptance 2): SAELens folders written by SAELens itself, for each
architecture and each field that changes encode or decode, are read by vlmsteer with encode and
decode equal to SAELens's own (to 1e-5 of each result's scale), or refused in one line naming
what is not supported; and folders vlmsteer writes (``concepts --saelens``) load in SAELens 6
with their architecture, ``hook_name`` and ``model_name`` intact and encode as vlmsteer does.

SAELens is not a dependency: give the Python of an environment that has it.

    python -m venv /tmp/sl && /tmp/sl/bin/pip install "torch==2.13.0" sae-lens
    python benchmarks/saelens_parity.py --saelens-python /tmp/sl/bin/python

The same file is the SAELens side (``--side saelens DIR``): it writes the folders, and encodes
and decodes fixed inputs with SAELens, or reads vlmsteer's folders back.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

D_IN, D_SAE, ROWS = 24, 64, 200
# (name, architecture, config fields): every architecture, and each encode-changing field
CASES = [
    ("standard", "standard", {}),
    ("standard-no-bdec", "standard", {"apply_b_dec_to_input": False}),
    ("topk", "topk", {"k": 8}),
    ("topk-no-bdec", "topk", {"k": 8, "apply_b_dec_to_input": False}),
    ("topk-rescaled", "topk", {"k": 8, "rescale_acts_by_decoder_norm": True}),
    ("jumprelu", "jumprelu", {}),
    ("jumprelu-no-bdec", "jumprelu", {"apply_b_dec_to_input": False}),
    ("gated", "gated", {}),
    ("standard-layer-norm", "standard", {"normalize_activations": "layer_norm"}),
    ("standard-constant-norm", "standard", {"normalize_activations": "constant_norm_rescale"}),
    ("topk-hook-z", "topk", {"k": 8, "reshape_activations": "hook_z"}),
]


def saelens_side(folder: Path) -> None:
    """Run with SAELens installed: write every case's folder and SAELens's encode/decode of
    fixed inputs; then read vlmsteer's exported folders (``ours-*``) and report their config."""
    import torch
    from sae_lens import SAE
    from sae_lens.registry import get_sae_class

    x = torch.from_numpy(np.load(folder / "x.npy"))
    for name, arch, fields in CASES:
        sae_cls, cfg_cls = get_sae_class(arch)
        meta = {"model_name": "shapes-llava", "hook_name": "model.layers.2", "hook_layer": 2}
        if fields.get("reshape_activations") == "hook_z":
            meta["hook_name"] = "blocks.2.attn.hook_z"
        cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, **fields)
        for key, value in meta.items():
            cfg.metadata[key] = value
        sae = sae_cls(cfg)
        gen = torch.Generator().manual_seed(len(name))
        with torch.no_grad():
            for pname, p in sae.named_parameters():
                if pname == "log_threshold":
                    p.copy_(torch.rand(p.shape, generator=gen).log())
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if pname.startswith("b_") else 1.0))
            if fields.get("rescale_acts_by_decoder_norm"):  # decoder rows far from unit norm
                sae.W_dec.mul_(torch.rand(D_SAE, 1, generator=gen) * 4 + 0.2)
        out = folder / name
        sae.save_model(out)
        try:
            with torch.no_grad():
                codes = sae.encode(x.clone())
                recon = sae.decode(codes)
            np.save(out / "codes.npy", codes.numpy())
            np.save(out / "recon.npy", recon.numpy())
        except Exception as exc:  # noqa: BLE001 - e.g. hook_z needs head-shaped inputs
            (out / "saelens-error.txt").write_text(f"{type(exc).__name__}: {exc}")
    for ours in sorted(folder.glob("ours-*")):
        sae = SAE.load_from_disk(ours)
        with torch.no_grad():
            codes = sae.encode(x.clone())
        np.save(ours / "saelens-codes.npy", codes.numpy())
        (ours / "saelens-read.json").write_text(json.dumps(
            {"architecture": sae.cfg.architecture(), "hook_name": sae.cfg.metadata.hook_name,
             "model_name": sae.cfg.metadata.model_name, "hook_layer": sae.cfg.metadata.hook_layer,
             "sae_lens_version": sae.cfg.metadata.sae_lens_version}))


def close(got: np.ndarray, want: np.ndarray) -> float:
    """The largest difference, as a share of the result's scale."""
    return float(np.abs(got - want).max() / max(1e-12, np.abs(want).max()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--saelens-python", help="a Python that has sae-lens installed")
    ap.add_argument("--side", nargs=2, metavar=("SIDE", "DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "saelens_parity.json")
    args = ap.parse_args()
    if args.side:
        saelens_side(Path(args.side[1]))
        return
    from vlmsteer.concepts import load_dictionary, make_dictionary
    from vlmsteer.concepts.saelens import save_saelens
    from vlmsteer.errors import VlmsteerError

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        x = np.random.default_rng(0).normal(size=(ROWS, D_IN)).astype(np.float32)
        np.save(tmp / "x.npy", x)
        z = np.random.default_rng(1).normal(size=(2000, D_IN)).astype(np.float32)
        for method in ("topk_sae", "batchtopk_sae", "matryoshka_sae", "jumprelu_sae"):
            d = make_dictionary(method, D_SAE, seed=0, l0=6, epochs=2, batch_size=256).fit(z)
            save_saelens(d, tmp / f"ours-{method}", layer=2, model_id="shapes-llava")
            np.save(tmp / f"ours-{method}" / "vlmsteer-codes.npy", d.encode(x))
        subprocess.run([args.saelens_python, __file__, "--side", "saelens", str(tmp)], check=True)
        for name, arch, fields in CASES:
            folder = tmp / name
            row = {"case": name, "architecture": arch, "fields": fields}
            try:
                sae, _ = load_dictionary(folder)
            except VlmsteerError as exc:
                row["vlmsteer"] = f"refused: {exc}".replace(str(folder), name)
            else:
                if (folder / "saelens-error.txt").exists():
                    row["vlmsteer"] = "read"
                    row["saelens"] = (folder / "saelens-error.txt").read_text()
                else:
                    codes, recon = np.load(folder / "codes.npy"), np.load(folder / "recon.npy")
                    row["vlmsteer"] = "read"
                    row["encode_diff"] = close(sae.encode(x), codes)
                    row["decode_diff"] = close(sae.decode(codes), recon)
                    row["equal_1e-5"] = row["encode_diff"] <= 1e-5 and row["decode_diff"] <= 1e-5
            rows.append(row)
        for ours in sorted(tmp.glob("ours-*")):
            read = json.loads((ours / "saelens-read.json").read_text())
            diff = close(np.load(ours / "saelens-codes.npy"), np.load(ours / "vlmsteer-codes.npy"))
            rows.append({"case": ours.name, "saelens_read": read, "encode_diff": diff, "equal_1e-5": diff <= 1e-5})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    for row in rows:
        print(json.dumps(row))
    wrong = [r["case"] for r in rows if r.get("vlmsteer") == "read" and "saelens" not in r and not r["equal_1e-5"]
             or "saelens_read" in r and not r["equal_1e-5"]]
    print(f"{len(rows)} cases; not equal: {wrong or 'none'}")


if __name__ == "__main__":
    main()
