"""The sparse autoencoder architectures: each chooses which pre-activations stay (``_select``),
and, where it has one, its inference threshold and extra loss (see :mod:`vlmsteer.concepts.sae`
for the shared model and training)."""

from __future__ import annotations

import numpy as np
import torch

from vlmsteer.concepts.sae import SparseAutoencoder
from vlmsteer.concepts.sparse_ops import jump_threshold_grad, step_count_grad
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
        flat = self._score(pre, t).clamp_min(0).reshape(-1)
        kept = flat.topk(min(len(flat), self.l0 * len(pre)), sorted=False)
        positive = kept.values > 0
        kept_idx = kept.indices[positive]
        if len(kept_idx):  # the inference threshold: a running mean of the smallest kept score
            smallest = float(kept.values[positive].min())
            old = train.get("threshold")
            train["threshold"] = smallest if old is None else 0.99 * old + 0.01 * smallest
        kept_idx = kept_idx.sort().values  # row-major: rows in order, as the sparse products like them
        return kept_idx // pre.shape[1], kept_idx % pre.shape[1], pre.reshape(-1)[kept_idx]

    def _score(self, pre, t):
        """What the batch's top-k ranks (the pre-activations themselves)."""
        return pre

    def _threshold(self, w, train):
        return torch.full((self.k,), float(train.get("threshold") or 0.0))


class BatchTopKCrosscoder(BatchTopKSAE):
    """A BatchTopK crosscoder (Minder et al. 2025) on two models' paired features ``[a, b]``
    (the first half of each row the original model's, the second the fine-tuned model's): one
    encoder reads both, each latent decodes into both (its decoder row's halves), and the batch
    keeps the ``l0 × batch`` largest activations weighted by the sum of the latent's two decoder
    norms. Decoder rows are unit-norm as a whole, so the halves' norms say which model a latent
    serves (:meth:`decoder_norms`). At inference a latent is active above the shared threshold
    divided by its weight (a JumpReLU with one threshold per latent)."""

    method = "batchtopk_crosscoder"
    family = "paired"

    def fit(self, features, callback=None):
        if features.shape[1] % 2:
            raise VlmsteerError(f"a crosscoder reads two models' features side by side; {features.shape[1]} "
                                "columns cannot be split in two halves")
        return super().fit(features, callback)

    @staticmethod
    def _norms(w: torch.Tensor) -> torch.Tensor:
        half = w.shape[1] // 2
        return torch.stack([w[:, :half].norm(dim=1), w[:, half:].norm(dim=1)], dim=1)

    def decoder_norms(self) -> np.ndarray:
        """``(latents, 2)``: each latent's decoder norm in the original and the fine-tuned model."""
        self._check_fitted()
        return self._norms(torch.as_tensor(self.components_)).numpy()

    def _score(self, pre, t):
        return pre * self._norms(t["components_"].detach()).sum(1)

    def _threshold(self, w, train):
        return super()._threshold(w, train) / self._norms(w["components_"]).sum(1).clamp_min(1e-12)


class MatryoshkaSAE(BatchTopKSAE):
    """BatchTopK whose loss also asks nested prefixes of the latents (1/16, 1/8, 1/4, 1/2 and all
    of them) to reconstruct the input alone (Bussmann et al. 2025; Nabeshima 2024)."""

    method = "matryoshka_sae"

    def _latent_groups(self):
        ends = sorted({max(1, self.k >> s) for s in (4, 3, 2, 1, 0)})
        return ends


class _Gate(torch.autograd.Function):
    """JumpReLU's gate ``pre·H(pre − θ)`` with its straight-through threshold gradient on the
    active values (the rectangle kernel's half above θ, as the written-out gradients have it)."""

    @staticmethod
    def forward(ctx, pre, log_theta, eps):
        ctx.save_for_backward(pre, log_theta)
        ctx.eps = eps
        return pre * (pre > log_theta.exp())

    @staticmethod
    def backward(ctx, grad):
        pre, log_theta = ctx.saved_tensors
        theta = log_theta.exp()
        active, near = pre > theta, ((pre - theta).abs() < ctx.eps / 2).to(pre.dtype)
        return grad * active, (-(theta / ctx.eps) * near * grad * active).sum(0) * theta, None


class _Count(torch.autograd.Function):
    """The number of active entries, with the rectangle kernel's straight-through gradient for θ."""

    @staticmethod
    def forward(ctx, pre, log_theta, eps):
        ctx.save_for_backward(pre, log_theta)
        ctx.eps = eps
        return (pre > log_theta.exp()).sum().to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, log_theta = ctx.saved_tensors
        theta = log_theta.exp()
        return None, grad * -((pre - theta).abs() < ctx.eps / 2).sum(0).to(pre.dtype) / ctx.eps * theta, None


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

    def _activation(self, selected, t, cols):
        return selected  # (all above θ > 0)

    def train_codes(self, pre, t, train):
        return _Gate.apply(pre, t["log_threshold"], self.BANDWIDTH)

    def autograd_extra_loss(self, pre, t):
        l0 = _Count.apply(pre, t["log_threshold"], self.BANDWIDTH) / len(pre)
        return 2 * self.SPARSITY * (float(l0) / self.l0 - 1) / self.l0 * l0

    def _activation_grad(self, grad, values, t, cols, grads):
        grads["log_threshold"] += jump_threshold_grad(grad, values, t["log_threshold"].exp(), cols, self.BANDWIDTH)
        return grad

    def _extra_loss(self, pre, t, grads):
        """A penalty ``w·L0`` holding the batch's mean L0 at ``l0``: ``w = 2·SPARSITY·(L0/l0 − 1)/l0``
        (L0 as measured, constant for the gradient), L0's threshold gradient straight-through."""
        theta = t["log_threshold"].exp()
        l0 = float((pre > theta).sum()) / len(pre)
        weight = 2 * self.SPARSITY * (l0 / self.l0 - 1) / self.l0
        grads["log_threshold"] += weight / len(pre) * step_count_grad(pre, theta, self.BANDWIDTH)
        return weight * l0

    def _threshold(self, w, train):
        return w["log_threshold"].exp()


class ReLUSAE(SparseAutoencoder):
    """``a = relu(pre)``: SAELens's "standard" architecture, loaded from SAELens folders (not
    trained here: train a TopK, BatchTopK, Matryoshka or JumpReLU SAE instead)."""

    method = "relu_sae"
    architecture = "standard"
    loads_only = True

    def __init__(self, k: int = 1024, seed: int = 0, l0: int = 1, **options):
        super().__init__(k, seed, l0=l0, **options)

    def activate(self, pre, t):
        return pre.clamp_min(0)

    def fit(self, features, callback=None):
        raise VlmsteerError("ReLU (L1) SAEs are only loaded from SAELens folders here; train topk_sae, "
                            "batchtopk_sae, matryoshka_sae or jumprelu_sae")
