"""Sparse autoencoders as concept dictionaries: TopK, BatchTopK, Matryoshka-BatchTopK and
JumpReLU, trained with torch from (memory-mapped, float16) feature rows.

``x̂ = a·W_dec + b_dec`` with ``a = σ((x − b_dec)·W_encᵀ + b_enc)``: the concepts
(``components_``) are the decoder rows, unit-norm. σ is the architecture's sparse activation:
TopK keeps each row's ``l0`` largest pre-activations (ReLU'd); BatchTopK keeps the batch's
``l0 × batch`` largest during training and, at inference, those above one threshold learnt
from training (a JumpReLU with a shared threshold); Matryoshka-BatchTopK adds the reconstruction
losses of nested prefixes of the latents (the first 1/16, 1/8, … of them), so early latents
carry general concepts; JumpReLU keeps ``a_i`` above a learnt per-latent threshold, trained
with straight-through estimators and a penalty holding the mean L0 at ``l0``.

The model is this class and an architecture's subclass (:mod:`vlmsteer.concepts.sae_methods`):
weights, encoding, decoding, the activation. Training — loop, schedule, checkpoints, AuxK, the
written-out gradients or autograd — is :mod:`vlmsteer.concepts.sae_training`. A new architecture
written with autograd alone defines :meth:`SparseAutoencoder.train_codes` (its dense,
differentiable activation) and :meth:`SparseAutoencoder.activate` (inference), and trains
correctly; the built-in architectures select their active entries (``_select``) and have their
gradients written out (tested equal to autograd).
"""

from __future__ import annotations

import math

from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from vlmsteer.concepts.dictionary import ConceptDictionary
from vlmsteer.concepts.sae_training import TrainStats, train
from vlmsteer.errors import VlmsteerError

ENCODE_ROWS = 4096  # rows per chunk when encoding for inference


class SparseAutoencoder(ConceptDictionary):
    """The shared machinery; subclasses choose the sparse activation (``_select``)."""

    architecture: ClassVar[str] = "custom"  # SAELens's name for the inference architecture
    family = "sae"
    FIT_OPTIONS = ("l0", "epochs", "batch_size", "lr", "dtype", "device", "checkpoint", "progress")
    THRESHOLD_LR = 10.0  # JumpReLU's log-thresholds move this much faster than the weights
    PARAMS = ("l0", "epochs", "batch_size", "lr", "warmup", "decay", "aux_k", "aux_coef", "dead_rows", "dtype")

    def __init__(self, k: int = 1024, seed: int = 0, l0: int = 32, epochs: int | None = None,
                 batch_size: int = 1024, lr: float | None = None, warmup: float = 0.05, decay: float = 0.2,
                 aux_k: int | None = None, aux_coef: float = 1 / 32, dead_rows: int | None = None,
                 dtype: str = "float32", device: str = "cpu", chunk_rows: int | None = None,
                 checkpoint: str | Path | None = None, checkpoint_every: int = 500, progress: bool = False):
        super().__init__(k, seed)
        if l0 < 1 or l0 > k:
            raise VlmsteerError(f"--l0 must be between 1 and the number of latents ({k}), got {l0}", "l0")
        if batch_size < 1:
            raise VlmsteerError(f"the batch size must be >= 1, got {batch_size}")
        if lr is not None and not (math.isfinite(lr) and 0 < lr <= 1):
            raise VlmsteerError(f"the learning rate must be a number in (0, 1], got {lr}", "lr")
        if dtype not in ("float32", "bfloat16"):
            raise VlmsteerError(f"unknown training dtype {dtype!r}; choose float32 or bfloat16")
        self.l0, self.epochs, self.batch_size, self.lr = int(l0), epochs, int(batch_size), lr
        self.warmup, self.decay, self.aux_k, self.aux_coef = warmup, decay, aux_k, aux_coef
        self.dead_rows, self.dtype = dead_rows, dtype
        self.device, self.chunk_rows, self.progress = device, chunk_rows, progress
        self.checkpoint, self.checkpoint_every = checkpoint, int(checkpoint_every)

    # -- the parameters, as numpy arrays (the saved state) and torch tensors (the work)
    def params(self) -> dict[str, Any]:
        return {**super().params(), **{name: getattr(self, name) for name in self.PARAMS}}

    def state(self) -> dict[str, np.ndarray]:
        out = {"components_": self.components_, "W_enc": self.W_enc_, "b_enc": self.b_enc_, "b_dec": self.b_dec_}
        if getattr(self, "threshold_", None) is not None:
            out["threshold"] = self.threshold_
        return out

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        for key in ("components_", "W_enc", "b_enc", "b_dec"):
            if key not in state:
                raise VlmsteerError(f"a {self.method} dictionary needs {key!r}")
        self.components_ = np.asarray(state["components_"], dtype=np.float32)
        self.W_enc_ = np.asarray(state["W_enc"], dtype=np.float32)
        self.b_enc_ = np.asarray(state["b_enc"], dtype=np.float32)
        self.b_dec_ = np.asarray(state["b_dec"], dtype=np.float32)
        self.threshold_ = None if "threshold" not in state else np.asarray(state["threshold"], dtype=np.float32)
        shapes = {"W_enc": self.W_enc_.shape, "b_enc": self.b_enc_.shape, "b_dec": self.b_dec_.shape}
        latents, dim = self.components_.shape
        if shapes != {"W_enc": (latents, dim), "b_enc": (latents,), "b_dec": (dim,)} or (
                self.threshold_ is not None and self.threshold_.shape != (latents,)):
            raise VlmsteerError(f"inconsistent {self.method} weights: decoder {self.components_.shape}, "
                                + ", ".join(f"{k} {v}" for k, v in shapes.items()))
        self.k = latents
        self._torch = {}

    def tensors(self, device="cpu") -> dict[str, torch.Tensor]:
        """The weights as float32 tensors on ``device`` (cached)."""
        self._check_fitted()
        key = str(device)
        cache = self.__dict__.setdefault("_torch", {})
        if key not in cache:
            cache[key] = {name: torch.as_tensor(v, dtype=torch.float32, device=device)
                          for name, v in self.state().items()}
        return cache[key]

    # -- inference
    def activate(self, pre: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
        """The architecture's sparse activation of pre-activations (inference)."""
        if "threshold" in t:
            return pre.clamp_min(0) * (pre > t["threshold"])
        top = pre.topk(min(self.l0, pre.shape[-1]), dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.clamp_min(0))

    def encode_tensor(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tensors(x.device)
        pre = torch.addmm(t["b_enc"], x.float() - t["b_dec"], t["W_enc"].T)
        return self.activate(pre, t)

    def decode_tensor(self, a: torch.Tensor) -> torch.Tensor:
        t = self.tensors(a.device)
        return torch.addmm(t["b_dec"], a.float(), t["components_"])

    @torch.no_grad()
    def encode(self, features):
        self._check_fitted()
        n = len(features)
        out = np.empty((n, self.k), dtype=np.float32)
        for a in range(0, n, ENCODE_ROWS):
            x = torch.as_tensor(np.asarray(features[a:a + ENCODE_ROWS], dtype=np.float32))
            out[a:a + len(x)] = self.encode_tensor(x).numpy()
        return out

    @torch.no_grad()
    def decode(self, activations):
        return self.decode_tensor(torch.as_tensor(np.asarray(activations, dtype=np.float32))).double().numpy()

    def assign_codes(self, codes, features):
        """The most active latent of each row (−1 where none is active)."""
        codes = np.asarray(codes)
        return np.where(codes.max(1) > 0, codes.argmax(1), -1)

    def count_codes(self, codes, assign):
        """Per latent, on how many rows it is active."""
        return (np.asarray(codes) > 0).sum(0)

    # -- training
    def _select(self, pre: torch.Tensor, t: dict, train: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rows, cols, pre[rows, cols])`` of the active entries of ``pre`` during training."""
        raise NotImplementedError

    def _latent_groups(self) -> list[int]:
        """Ends of the nested prefixes whose reconstructions enter the loss (Matryoshka)."""
        return [self.k]

    def fit(self, features, callback: Callable[[TrainStats], None] | None = None):
        return train(self, features, callback)

    @property
    def writes_gradients(self) -> bool:
        """Whether training writes out this architecture's gradients (it selects its active
        entries, ``_select``); else autograd differentiates its ``train_codes``."""
        return type(self)._select is not SparseAutoencoder._select

    def train_codes(self, pre: torch.Tensor, t: dict, train: dict) -> torch.Tensor:
        """The dense activations of ``pre`` during training, differentiable in ``pre`` and ``t``:
        an architecture written with autograd alone defines this (and :meth:`activate` for
        inference). The default keeps what ``_select`` selects, ReLU'd."""
        if not self.writes_gradients:
            raise NotImplementedError(f"{type(self).__name__} defines neither _select nor train_codes")
        rows, cols, _ = self._select(pre.detach(), {k: v.detach() for k, v in t.items()}, dict(train))
        mask = torch.zeros_like(pre, dtype=torch.bool).index_put((rows, cols), torch.tensor(True, device=pre.device))
        return pre.clamp_min(0) * mask

    def autograd_extra_loss(self, pre: torch.Tensor, t: dict) -> torch.Tensor | float:
        """An architecture's further loss term, differentiable (the autograd counterpart of
        ``_extra_loss``)."""
        return 0.0

    def _init_extra(self, t: dict, sample: torch.Tensor) -> None:
        pass

    def _activation(self, selected: torch.Tensor, t: dict, cols: torch.Tensor) -> torch.Tensor:
        """The active values of the selected pre-activations."""
        return selected.clamp_min(0)

    def _activation_grad(self, grad, values, t, cols, grads) -> torch.Tensor:
        """The gradient for the selected pre-activations from their values' (adding any the
        activation's own parameters get to ``grads``)."""
        return grad * (values > 0)

    def _extra_loss(self, pre: torch.Tensor, t: dict, grads: dict) -> float:
        """An architecture's further loss term (its gradients added to ``grads``)."""
        return 0.0

    def _finish(self, t: dict, train: dict, scale: float) -> None:
        """Weights back to the data's scale (activations scale by 1/scale, decoder rows stay unit)."""
        w = {k: v.detach().float().cpu() for k, v in t.items()}
        state = {"components_": w["components_"].numpy(), "W_enc": w["W_enc"].numpy(),
                 "b_enc": (w["b_enc"] / scale).numpy(), "b_dec": (w["b_dec"] / scale).numpy()}
        threshold = self._threshold(w, train)
        if threshold is not None:
            state["threshold"] = (threshold / scale).numpy()
        self.set_state(state)

    def _threshold(self, w: dict, train: dict) -> torch.Tensor | None:
        return None
