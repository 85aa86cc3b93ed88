"""The sparse autoencoder architectures: each chooses which pre-activations stay (``_select``),
and, where it has one, its inference threshold and extra loss (see :mod:`vlmsteer.concepts.sae`
for the shared model and training)."""

from __future__ import annotations

import torch

from vlmsteer.concepts.sae import SparseAutoencoder
from vlmsteer.concepts.sparse_ops import JumpGate, StepCount
from vlmsteer.errors import VlmsteerError


class TopKSAE(SparseAutoencoder):
    """Each row keeps its ``l0`` largest pre-activations (Gao et al. 2024)."""

    method = "topk_sae"
    architecture = "topk"

    def _select(self, pre, t, train):
        values, idx = pre.topk(self.l0, dim=1, sorted=False)
        rows = torch.arange(len(pre), device=pre.device)[:, None].expand_as(idx)
        return rows.reshape(-1), idx.reshape(-1), values.reshape(-1)


class BatchTopKSAE(SparseAutoencoder):
    """The batch keeps its ``l0 × batch`` largest pre-activations (Bussmann et al. 2024); at
    inference, every pre-activation above the mean over training of the smallest kept one."""

    method = "batchtopk_sae"
    architecture = "jumprelu"  # what SAELens saves a BatchTopK SAE as: one threshold per latent

    def _select(self, pre, t, train):
        flat = pre.clamp_min(0).reshape(-1)
        kept = flat.topk(min(len(flat), self.l0 * len(pre)), sorted=False)
        positive = kept.values > 0
        kept_idx, kept_values = kept.indices[positive], kept.values[positive]
        if len(kept_idx):  # the inference threshold: a running mean of the smallest kept activation
            smallest = float(kept_values.min())
            old = train.get("threshold")
            train["threshold"] = smallest if old is None else 0.99 * old + 0.01 * smallest
        kept_idx, order = kept_idx.sort()  # row-major: rows in order, as the sparse products like them
        return kept_idx // pre.shape[1], kept_idx % pre.shape[1], kept_values[order]

    def _threshold(self, w, train):
        return torch.full((self.k,), float(train.get("threshold") or 0.0))


class MatryoshkaSAE(BatchTopKSAE):
    """BatchTopK whose loss also asks nested prefixes of the latents (1/16, 1/8, 1/4, 1/2 and all
    of them) to reconstruct the input alone (Bussmann et al. 2025; Nabeshima 2024)."""

    method = "matryoshka_sae"

    def _latent_groups(self):
        ends = sorted({max(1, self.k >> s) for s in (4, 3, 2, 1, 0)})
        return ends


class JumpReLUSAE(SparseAutoencoder):
    """``a = relu(pre)·H(pre − θ)`` with learnt per-latent thresholds θ (Rajamanoharan et al.
    2024): straight-through (rectangle kernel) gradients for θ, and a penalty that holds the
    batch's mean L0 at ``l0``."""

    method = "jumprelu_sae"
    architecture = "jumprelu"
    BANDWIDTH = 0.05  # of the unit-scale pre-activations
    SPARSITY = 1.0

    def _init_extra(self, t, sample):
        pre = sample[:2048] @ t["W_enc"].T  # per latent: the threshold at which it fires on l0/latents rows
        rank = min(len(pre), max(1, round(len(pre) * (1.0 - self.l0 / self.k))))
        t["log_threshold"] = pre.kthvalue(rank, dim=0).values.clamp_min(1e-3).log()

    def _select(self, pre, t, train):
        theta = t["log_threshold"].detach().exp()
        rows, cols = torch.nonzero(pre > theta, as_tuple=True)
        return rows, cols, pre[rows, cols]

    def _activation(self, values, pre, t, rows, cols):
        return JumpGate.apply(values, t["log_threshold"], cols, self.BANDWIDTH)

    def _extra_loss(self, pre, t, train, rows, cols):
        l0 = StepCount.apply(pre, t["log_threshold"], self.BANDWIDTH) / len(pre)
        weight = 2 * self.SPARSITY * (float(l0.detach()) / self.l0 - 1) / self.l0
        return weight * l0

    def _threshold(self, w, train):
        return w["log_threshold"].exp()


class ReLUSAE(SparseAutoencoder):
    """``a = relu(pre)``: SAELens's "standard" architecture, loaded from SAELens folders (not
    trained here: train a TopK, BatchTopK, Matryoshka or JumpReLU SAE instead)."""

    method = "relu_sae"
    architecture = "standard"

    def __init__(self, k: int = 1024, seed: int = 0, l0: int = 1, **options):
        super().__init__(k, seed, l0=l0, **options)

    def activate(self, pre, t):
        return pre.clamp_min(0)

    def fit(self, features, callback=None):
        raise VlmsteerError("ReLU (L1) SAEs are only loaded from SAELens folders here; train topk_sae, "
                            "batchtopk_sae, matryoshka_sae or jumprelu_sae")


SAE_METHODS: dict[str, type[SparseAutoencoder]] = {c.method: c for c in (TopKSAE, BatchTopKSAE, MatryoshkaSAE,
                                                                          JumpReLUSAE, ReLUSAE)}
