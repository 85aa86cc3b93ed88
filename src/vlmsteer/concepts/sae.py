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

Training (the usual recipe): ``b_dec`` from the geometric median of a sample, tied encoder
initialisation scaled so the first reconstructions fit a sample by least squares (the decoder
rows start as random directions: started at sampled rows they fit the training rows better, but
the caption SAE spliced into VQA then lost half its accuracy), inputs scaled so a row's mean
squared norm is the dimension (folded back into the weights at the end), Adam with linear
warm-up, final linear decay and a second-moment decay suited to the run's length
(:func:`_beta2`), decoder rows kept unit-norm with their parallel gradient removed, an AuxK loss
that makes the top ``aux_k`` dead latents model the residual error. Batches are shuffled rows
gathered chunk by chunk from the features (never the whole matrix in float32); the gradients
are written out (no autograd graph), those of the encoder and decoder from the selected (sparse)
activations only, AuxK's from the dead latents' top entries (:func:`row_top`). Checkpoints
(safetensors) resume a long training where it stopped, to the same result. The architectures are
in :mod:`vlmsteer.concepts.sae_methods`, the products over positions in
:mod:`vlmsteer.concepts.sparse_ops`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from vlmsteer.concepts.dictionary import ConceptDictionary, check_features
from vlmsteer.concepts.sae_checkpoint import resume, save_checkpoint
from vlmsteer.concepts.sparse_ops import SparsePattern, geometric_median, row_top
from vlmsteer.errors import VlmsteerError
from vlmsteer.mapped import release_pages, take_rows

ENCODE_ROWS = 4096  # rows per chunk when encoding for inference


@dataclass
class TrainStats:
    """Running figures of a training (shown on the progress bar, kept in ``history_``)."""

    step: int
    loss: float
    fvu: float
    l0: float
    dead: float

    def note(self) -> str:
        return f"loss {self.loss:.4f}  FVU {self.fvu:.4f}  L0 {self.l0:.1f}  dead {100 * self.dead:.1f}%"


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
        z = check_features(features, 1, dtype=None)
        if len(z) < 2:
            raise VlmsteerError("a sparse autoencoder needs at least 2 rows to train on")
        torch_dtype = torch.bfloat16 if self.dtype == "bfloat16" else torch.float32
        device = torch.device(self.device)
        n, dim = z.shape
        batch = min(self.batch_size, n)
        steps_per_epoch = math.ceil(n / batch)
        epochs = self.epochs or max(1, min(50, math.ceil(1000 / steps_per_epoch)))
        total = epochs * steps_per_epoch
        lr = self.lr or 2e-4 / math.sqrt(self.k / 2 ** 14)
        gen = torch.Generator().manual_seed(self.seed)
        sample_rows = np.sort(np.random.default_rng(self.seed).choice(n, size=min(n, 8192), replace=False))
        sample = torch.as_tensor(take_rows(z, sample_rows).astype(np.float32, copy=False))
        import hashlib

        self._data_identity = [n, dim, hashlib.sha256(sample.numpy().tobytes()).hexdigest()]
        b_dec = geometric_median(sample)
        scale = math.sqrt(dim / max(1e-12, float(((sample - b_dec) ** 2).sum(1).mean())))
        centred = (sample - b_dec) * scale
        w_dec = torch.randn(self.k, dim, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        t = {"W_enc": w_dec * self._encoder_gain(w_dec, centred), "b_enc": torch.zeros(self.k),
             "components_": w_dec, "b_dec": b_dec * scale}
        self._init_extra(t, centred)
        del centred
        del sample  # (8192 rows in float32: not kept through training)
        t = {k: v.to(device).contiguous() for k, v in t.items()}  # (gradients are written out: no autograd)
        opt = torch.optim.Adam([{"params": [t[k] for k in sorted(t) if k != "log_threshold"]},
                                {"params": [t[k] for k in sorted(t) if k == "log_threshold"],
                                 "scale": self.THRESHOLD_LR}], lr=lr, betas=(0.9, _beta2(total)),
                               fused=device.type in ("cpu", "cuda"))  # no temporaries of a parameter's size
        train = {"since_fired": torch.zeros(self.k, dtype=torch.long, device=device), "threshold": None}
        dead_rows = self.dead_rows or max(2 * batch, min(n, 50_000))
        aux_k = self.aux_k or max(1, dim // 2)
        start = resume(self, t, opt, train)
        self.history_: list[dict] = []
        from vlmsteer.progress import progress_bar

        with progress_bar(f"training {self.method} ({self.k} latents, L0 {self.l0})", total,
                          enabled=self.progress) as advance:
            advance(start)
            for step, x in self._batches(z, batch, epochs, start, device):
                x = x.mul_(scale)
                lr_now = lr * min(1.0, (step + 1) / max(1, self.warmup * total),
                                  max(0.0, (total - step) / max(1, self.decay * total)))
                for group in opt.param_groups:
                    group["lr"] = lr_now * group.get("scale", 1.0)
                opt.zero_grad(set_to_none=True)  # the last step's gradients go before this step's
                stats, grads = self._step(x, t, train, dead_rows, aux_k, step, torch_dtype)
                for name, grad in grads.items():
                    t[name].grad = grad
                del grads  # (no other name for a gradient: each is freed before the next step's)
                _remove_radial_part(t["components_"])
                opt.step()
                with torch.no_grad():
                    t["components_"] /= t["components_"].norm(dim=1, keepdim=True).clamp_min(1e-12)
                if step % 50 == 0 or step == total - 1:
                    self.history_.append(vars(stats))
                    advance(1, stats.note())
                else:
                    advance(1)
                if callback is not None:
                    callback(stats)
                if self.checkpoint is not None and (step + 1) % self.checkpoint_every == 0 and step + 1 < total:
                    save_checkpoint(self, t, opt, train, step + 1)
        self._finish(t, train, scale)
        if self.checkpoint is not None:
            Path(self.checkpoint).unlink(missing_ok=True)
        return self

    def _init_extra(self, t: dict, sample: torch.Tensor) -> None:
        pass

    def _encoder_gain(self, w_dec: torch.Tensor, sample: torch.Tensor) -> float:
        """The factor on the tied encoder that reconstructs ``sample`` best through its ``l0``
        largest activations (least squares), so training starts near the data's scale."""
        x = sample[:2048]
        top = (x @ w_dec.T).topk(min(self.l0, len(w_dec)), dim=1)
        x_hat = torch.zeros(len(x), len(w_dec)).scatter_(1, top.indices, top.values.clamp_min(0)) @ w_dec
        return float((x_hat * x).sum() / (x_hat * x_hat).sum().clamp_min(1e-12))

    CHUNK_BYTES = 1 << 27  # rows gathered at a time: 128 MiB of them as stored

    def _batches(self, z, batch: int, epochs: int, start: int, device):
        """``(step, rows)`` from ``start`` on: each epoch a seeded permutation of the rows, read
        ``chunk_rows`` at a time (default: 128 MiB of rows as stored; in order within a chunk,
        then shuffled) and kept in the store's dtype; each batch becomes float32 alone."""
        n, dim = z.shape
        steps_per_epoch = math.ceil(n / batch)
        per_chunk = self.chunk_rows or self.CHUNK_BYTES // (dim * np.dtype(getattr(z, "dtype", np.float32)).itemsize)
        chunk = max(batch, per_chunk // batch * batch)
        for epoch in range(start // steps_per_epoch, epochs):
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
            first = epoch * steps_per_epoch
            for c in range(0, n, chunk):
                if first + math.ceil(min(c + chunk, n) / batch) <= start:
                    continue  # every batch of this chunk was done before the resume
                part = order[c:c + chunk]
                inverse = np.argsort(np.argsort(part, kind="stable"), kind="stable")
                data = torch.from_numpy(take_rows(z, np.sort(part))[inverse])  # one in-order gather
                release_pages(z)
                for b in range(0, len(part), batch):
                    step = first + (c + b) // batch
                    if step >= start:
                        yield step, data[b:b + batch].to(device=device, dtype=torch.float32, copy=True)

    @torch.no_grad()
    def _step(self, x: torch.Tensor, t: dict, train: dict, dead_rows: int, aux_k: int, step: int,
              dtype: torch.dtype = torch.float32) -> tuple[TrainStats, dict[str, torch.Tensor]]:
        """One batch's figures and the gradient of its loss for every weight, written out (no
        autograd graph): products over the selected positions only (:class:`SparsePattern`), one
        weight-sized gradient per weight."""
        b = len(x)
        w_enc, w_dec, b_dec = t["W_enc"], t["components_"], t["b_dec"]
        x_c = x - b_dec
        pre = torch.addmm(t["b_enc"].to(dtype), x_c.to(dtype), w_enc.T.to(dtype)).float()  # bf16 where asked
        rows, cols, selected = self._select(pre, t, train)
        active = selected > 0
        fired = torch.zeros(self.k, device=x.device).index_add_(0, cols, active.float())  # rows each fired on
        train["since_fired"] += b
        train["since_fired"].masked_fill_(fired > 0, 0)
        dead = train["since_fired"] > dead_rows
        grads = {name: torch.zeros_like(v) for name, v in t.items() if name not in ("W_enc", "components_")}

        # the reconstructions: each Matryoshka prefix adds its group's latents (a block of rows each)
        values = self._activation(selected, t, cols)
        groups = self._latent_groups()
        out_rows = rows
        if len(groups) > 1:
            out_rows = rows + b * torch.bucketize(cols, torch.tensor(groups, device=cols.device), right=True)
        encoded = SparsePattern(rows, cols, b, self.k)
        decoded = encoded if len(groups) == 1 else encoded.with_rows(out_rows, len(groups) * b)
        parts = decoded.mm(values, w_dec).view(len(groups), b, -1)
        mean = x_c.sum(0) / b
        variance = max(1e-12, float(_squared(x_c) / b - _squared(mean)))  # Σ of x's variances
        errors = (parts if len(groups) == 1 else parts.cumsum(0)) - x_c  # recon_g − target, target = x − b_dec
        group_fvu = [_squared(e) / (b * variance) for e in errors]
        loss = sum(group_fvu) / len(group_fvu)
        # ∂loss/∂part_h = Σ_{g ≥ h} 2·error_g / (G·b·var): a reversed cumulative sum
        d_errors = errors * (2 / (len(groups) * b * variance))
        d_parts = d_errors if len(groups) == 1 else d_errors.flip(0).cumsum(0).flip(0)
        d_parts = d_parts.view(len(groups) * b, -1)
        grads["b_dec"] += d_errors.sum((0, 1))  # through the target
        grad_w_dec = decoded.t_mm(values, d_parts)
        d_selected = self._activation_grad(decoded.dots(d_parts, w_dec), values, t, cols, grads)
        grad_w_enc = encoded.t_mm(d_selected, x_c)
        col_sums = encoded.col_sums(d_selected)
        grads["b_enc"] += col_sums
        grads["b_dec"] -= col_sums @ w_enc  # through x − b_dec (AuxK's positions do not move b_dec)

        k_aux = min(aux_k, int(dead.sum())) if self.aux_coef > 0 else 0
        if k_aux:  # AuxK: the dead latents' top pre-activations model the residual (products over them)
            dead_cols = dead.nonzero().view(-1)
            a, aux = row_top(pre.index_select(1, dead_cols), k_aux)  # (of rows × dead latents)
            w_dead = w_dec.index_select(0, dead_cols)
            residual_norm = max(1e-12, _squared(errors[-1]) / b)  # the residual x − x̂ is −errors[-1]
            aux_error = aux.mm(a, w_dead).add_(errors[-1])  # a·W_dead − residual
            weight = self.aux_coef * min(1.0, k_aux / aux_k)
            loss += weight * _squared(aux_error) / (b * residual_norm)
            d_aux = aux_error.mul_(2 * weight / (b * residual_norm))
            grad_w_dec.index_add_(0, dead_cols, aux.t_mm(a, d_aux))
            d_a = aux.dots(d_aux, w_dead).mul_(a > 0)
            grad_w_enc.index_add_(0, dead_cols, aux.t_mm(d_a, x_c))
            grads["b_enc"].index_add_(0, dead_cols, aux.col_sums(d_a))
        loss += self._extra_loss(pre, t, grads)
        grads["W_enc"], grads["components_"] = grad_w_enc, grad_w_dec
        l0 = float(fired.sum()) / b
        return TrainStats(step, loss, group_fvu[-1], l0, float(dead.float().mean())), grads

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


def _squared(x: torch.Tensor) -> float:
    """``Σ x²`` over all entries (one pass, no squared copy)."""
    flat = x.reshape(-1)
    return float(torch.dot(flat, flat))


def _beta2(total: int) -> float:
    """Adam's second-moment decay for a run of ``total`` steps: 0.999 (the usual) for long runs,
    shorter so that its average spans at most 1/32 of a short run (never below 0.9). The gradient
    norm falls ten-fold in a run's first half; with 0.999 the first steps' large gradients keep
    the later steps small for the rest of a run of hundreds of steps (measured on 600-step runs on
    caption features: held-out FVU 0.024 → 0.017 at learning rate 5e-4)."""
    return min(0.999, max(0.9, 1 - 32 / total))


@torch.no_grad()
def _remove_radial_part(w: torch.Tensor) -> None:
    """Decoder rows stay unit-norm: remove each row gradient's component along its row, in place."""
    g = w.grad
    g.addcmul_(torch.bmm(g.unsqueeze(1), w.unsqueeze(2)).view(-1, 1), w, value=-1)
