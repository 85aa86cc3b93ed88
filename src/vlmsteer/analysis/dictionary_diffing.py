"""Model diffing with dictionaries, on paired stores (the same samples through the original and
the fine-tuned model):

- a **BatchTopK crosscoder** (Minder et al. 2025) on the features side by side ``[a, b]``: each
  latent decodes into both models, and its relative decoder norm says whose it is (0: only the
  original's, ½: shared, 1: only the fine-tuned model's). The readout is the fine-tuned-only
  latents that survive **latent scaling** (their ν^ε: how much of the original's reconstruction
  error the latent explains, against the fine-tuned model's; near 0 for a concept the original
  truly lacks, near 1 for the artifacts of sparse training), with the change of the decoder
  bias between the two models (the part of the change every sample shares);
- a **sparse autoencoder on the differences** ``b − a`` (BatchTopK): its decoder bias (the
  shared part) and its latents, ranked by their mean activation.

Both train in bounded memory: the pairs are read from the two (memory-mapped) stores a chunk
at a time (:class:`PairRows`), never joined in full; the statistics after training stream too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from vlmsteer.analysis.diffing import Paired, Part, Readout, _means_and_spread
from vlmsteer.concepts import make_dictionary
from vlmsteer.concepts.quality import dictionary_quality
from vlmsteer.concepts.sae import ENCODE_ROWS
from vlmsteer.errors import VlmsteerError
from vlmsteer.mapped import LazyRows, release_pages, take_rows

FINETUNED_ONLY = 0.9  # relative decoder norm from which a crosscoder latent is the fine-tuned model's alone
MAX_NU = 0.5  # latent scaling: the most of a latent's effect the original may explain for it to count


class PairRows(LazyRows):
    """The paired features as one float32 array read on demand: the differences ``b − a``
    (``"difference"``) or the two side by side ``[a, b]`` (``"side_by_side"``)."""

    def __init__(self, a, b, how: str):
        if how not in ("difference", "side_by_side"):
            raise ValueError(how)
        self.a, self.b, self.how = a, b, how

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.a), self.a.shape[1] * (1 if self.how == "difference" else 2)

    @property
    def dtype(self):
        return np.dtype(np.float32)

    def __getitem__(self, key) -> np.ndarray:
        read = (lambda z: z[key]) if isinstance(key, slice) else (lambda z: take_rows(z, key))
        xa, xb = read(self.a).astype(np.float32, copy=False), read(self.b).astype(np.float32, copy=False)
        return xb - xa if self.how == "difference" else np.concatenate([xa, xb], axis=-1)

    def release(self) -> None:
        release_pages(self.a)
        release_pages(self.b)


@dataclass
class DictionaryOptions:
    """How the diffing dictionary trains (None: chosen from the data's size)."""

    latents: int | None = None  # default: 4 × hidden, at most one per 8 samples (at least 16)
    l0: int | None = None  # default: latents / 8, at most 32 (on the sparser differences: latents / 32, at most 8)
    epochs: int | None = None  # default: about 1000 steps (at most 200 epochs)
    seed: int = 0
    progress: bool = False

    def make(self, method: str, n: int, hidden: int, sparser: bool = False):
        latents = self.latents or int(min(4 * hidden, max(16, n // 8)))
        if self.l0 is not None and self.l0 > latents:  # (the defaults below fit; a given value is never clamped)
            raise VlmsteerError(f"{self.l0} active latents per sample is more than the dictionary's {latents} latents", "l0")
        l0 = self.l0 or (max(1, min(8, latents // 32)) if sparser else max(1, min(32, latents // 8)))
        batch = min(1024, max(32, n // 8))
        epochs = self.epochs or max(1, min(200, math.ceil(1000 / math.ceil(n / batch))))
        return make_dictionary(method, latents, seed=self.seed, l0=min(latents, l0), epochs=epochs, batch_size=batch,
                               progress=self.progress)


@torch.no_grad()
def _activations(dictionary, rows: LazyRows, latent: int) -> np.ndarray:
    """One latent's activation on every row."""
    out = np.empty(len(rows), dtype=np.float32)
    for i in range(0, len(rows), ENCODE_ROWS):  # (a column copied out: a view would keep each chunk's codes)
        out[i:i + ENCODE_ROWS] = dictionary.encode_tensor(torch.from_numpy(rows[i:i + ENCODE_ROWS]))[:, latent].numpy()
        rows.release()
    return out


class LatentScaling:
    """Latent scaling (Minder et al. 2025) for crosscoder latents ``cols`` with fine-tuned decoder
    parts ``d``: per latent and target y, the β minimising Σ_x ‖β·f(x)·d − y(x)‖², i.e.
    Σ f·⟨d, y⟩ / (‖d‖² Σ f²). Targets: each model's reconstruction error, the fine-tuned model's
    without the latent itself (what the latent explains there), and each model's reconstruction.
    ν^ε = β(original's error) / β(fine-tuned error), ν^r the same for the reconstructions: near 0
    when the original lacks what the latent carries; near 1 when the original has it, in its error
    (the latent's original part shrank to nothing: "complete shrinkage") or in other latents
    ("latent decoupling")."""

    def __init__(self, cols: np.ndarray, d: np.ndarray):
        self.cols, self.d = torch.as_tensor(cols, dtype=torch.long), torch.as_tensor(d, dtype=torch.float32)
        self.num, self.den = torch.zeros(4, len(cols), dtype=torch.float64), torch.zeros(len(cols), dtype=torch.float64)

    def add(self, x: np.ndarray, codes: np.ndarray, recon: np.ndarray) -> None:
        if not len(self.cols):
            return
        x, recon = (torch.from_numpy(np.asarray(v, dtype=np.float32)) for v in (x, recon))
        codes = torch.from_numpy(np.asarray(codes, dtype=np.float32))
        half = x.shape[1] // 2
        f, dd = codes[:, self.cols], self.d.square().sum(1)
        on = lambda y: y @ self.d.T  # noqa: E731 - each row of a target projected on each latent's d
        targets = (on(x[:, :half] - recon[:, :half]), on(recon[:, :half]),
                   on(x[:, half:] - recon[:, half:]) + f * dd, on(recon[:, half:]))  # (+ f·dd: the latent's own part)
        for t, y in enumerate(targets):
            self.num[t] += (f * y).sum(0, dtype=torch.float64)
        self.den += f.double().square().sum(0) * dd.double()

    def ratios(self) -> tuple[np.ndarray, np.ndarray]:
        """(ν^ε, ν^r) per latent (NaN for a latent that never fired)."""
        beta = (self.num / self.den).numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            return beta[0] / beta[2], beta[1] / beta[3]


def relative_decoder_norms(norms: np.ndarray) -> np.ndarray:
    """½·((‖d_ft‖ − ‖d_orig‖) / max(‖d_orig‖, ‖d_ft‖) + 1) per latent, from ``(latents, 2)``
    norms."""
    return 0.5 * ((norms[:, 1] - norms[:, 0]) / np.maximum(norms.max(1), 1e-12) + 1)


def _readout(method: str, p: Paired, dictionary, rows: LazyRows, parts: list[Part], extra: dict) -> Readout:
    """The parts ranked by size; the readout's size in units of the spread says how much changed;
    when the readout is a latent, its activations rank the samples."""
    parts = sorted(parts, key=lambda part: -part.size)
    spread = _means_and_spread(p)[2]
    top = parts[0].name
    scores = _activations(dictionary, rows, int(top.split(":")[1])) if top.startswith("latent:") else None
    return Readout(method, p.layer, len(p.ids), spread, parts[0].size / max(spread, 1e-12), parts, scores,
                   {**extra, "latents": dictionary.k, "l0": dictionary.l0, "epochs": dictionary.epochs}, dictionary)


def crosscoder_readout(p: Paired, options: DictionaryOptions = DictionaryOptions(),
                       finetuned_only: float = FINETUNED_ONLY, max_nu: float = MAX_NU) -> Readout:
    """A BatchTopK crosscoder on ``[a, b]``; parts: the decoder bias's change and each
    fine-tuned-only latent (relative decoder norm ≥ ``finetuned_only``) whose ν^ε ≤ ``max_nu``,
    as its decoder change (fine-tuned − original part) × its mean activation where active."""
    rows = PairRows(p.a, p.b, "side_by_side")
    hidden = p.a.shape[1]
    cc = options.make("batchtopk_crosscoder", len(rows), hidden).fit(rows)
    relative = relative_decoder_norms(cc.decoder_norms())
    candidates = np.flatnonzero(relative >= finetuned_only)
    scaling = LatentScaling(candidates, cc.components_[candidates, hidden:])
    stats = dictionary_quality(cc, rows, each=scaling.add)
    nu_error, nu_recon = scaling.ratios()
    bias = (cc.b_dec_[hidden:] - cc.b_dec_[:hidden]).astype(np.float64)
    parts = [Part("bias", bias, float(np.linalg.norm(bias)), {"samples": len(rows)})]
    for j, ne, nr in zip(candidates, nu_error, nu_recon):
        if stats.fired[j] and ne <= max_nu:
            change = (cc.components_[j, hidden:] - cc.components_[j, :hidden]).astype(np.float64)
            parts.append(Part(f"latent:{j}", change * stats.mean_active()[j],
                              float(stats.activation[j] * np.linalg.norm(change)) / len(rows),
                              {"samples": int(stats.fired[j]), "relative decoder norm": float(relative[j]),
                               "ν^ε": float(ne), "ν^r": float(nr)}))
    return _readout("crosscoder", p, cc, rows, parts, {
        "relative_decoder_norms": relative.tolist(), "fired": stats.fired.tolist(), "fvu": stats.fvu,
        "finetuned_only": int(len(candidates)), "finetuned_only_fired": int((stats.fired[candidates] > 0).sum()),
        "kept_after_scaling": len(parts) - 1, "finetuned_only_threshold": finetuned_only, "max_nu": max_nu})


def sae_diff_readout(p: Paired, options: DictionaryOptions = DictionaryOptions()) -> Readout:
    """A BatchTopK SAE on the differences ``b − a``; parts: its decoder bias (what every sample's
    change shares) and each latent that fired, as its (unit) decoder row × its mean activation
    where active."""
    rows = PairRows(p.a, p.b, "difference")
    sae = options.make("batchtopk_sae", len(rows), p.a.shape[1], sparser=True).fit(rows)
    stats = dictionary_quality(sae, rows)
    bias = sae.b_dec_.astype(np.float64)
    parts = [Part("bias", bias, float(np.linalg.norm(bias)), {"samples": len(rows)})]
    for j in np.flatnonzero(stats.fired):
        parts.append(Part(f"latent:{j}", sae.components_[j].astype(np.float64) * stats.mean_active()[j],
                          float(stats.activation[j]) / len(rows), {"samples": int(stats.fired[j])}))
    return _readout("sae-diff", p, sae, rows, parts, {"fired": stats.fired.tolist(), "fvu": stats.fvu})
