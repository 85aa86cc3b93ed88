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
initialisation, inputs scaled so a row's mean squared norm is the dimension (folded back into
the weights at the end), Adam with linear warm-up and final linear decay, decoder rows kept
unit-norm with their parallel gradient removed, an AuxK loss that makes the top ``aux_k`` dead
latents model the residual error. Batches are shuffled rows gathered chunk by chunk from the
features (never the whole matrix in float32); gradients of the encoder and decoder are
computed from the selected (sparse) activations only. Checkpoints (safetensors) resume a long
training where it stopped, to the same result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from vlmsteer.concepts.dictionary import ConceptDictionary, check_features
from vlmsteer.errors import VlmsteerError

ENCODE_ROWS = 4096  # rows per chunk when encoding for inference


class _SparseEncode(torch.autograd.Function):
    """``pre[rows, cols]`` of ``pre = x_c·W_encᵀ + b_enc`` (``pre`` computed without grad), with
    gradients from the selected entries only: ``Sᵀ·x_c`` for the encoder rows, ``S·W_enc`` for
    the input, where ``S`` is the sparse (batch × latents) matrix of incoming gradients."""

    @staticmethod
    def forward(ctx, pre, x_c, w_enc, b_enc, rows, cols):
        ctx.save_for_backward(x_c, w_enc, rows, cols)
        ctx.needs_x = x_c.requires_grad
        return pre[rows, cols]

    @staticmethod
    def backward(ctx, grad):
        x_c, w_enc, rows, cols = ctx.saved_tensors
        s = torch.sparse_coo_tensor(torch.stack([cols, rows]), grad, (w_enc.shape[0], x_c.shape[0]))
        grad_w = torch.sparse.mm(s, x_c)
        grad_b = torch.zeros(w_enc.shape[0], dtype=grad.dtype, device=grad.device).index_add_(0, cols, grad)
        grad_x = torch.sparse.mm(s.t(), w_enc) if ctx.needs_x else None
        return None, grad_x, grad_w, grad_b, None, None


class _SparseDecode(torch.autograd.Function):
    """``S·W_dec`` for the sparse (batch × latents) activations ``S[rows, cols] = values``; the
    gradient of each value is one dot product (no dense batch × latents product)."""

    @staticmethod
    def forward(ctx, values, rows, cols, w_dec, n_rows):
        s = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n_rows, w_dec.shape[0]))
        ctx.save_for_backward(values, rows, cols, w_dec)
        return torch.sparse.mm(s, w_dec)

    @staticmethod
    def backward(ctx, grad):
        values, rows, cols, w_dec = ctx.saved_tensors
        grad_v = torch.empty_like(values)
        step = max(1, (1 << 22) // max(1, w_dec.shape[1]))  # 16 MiB of gathered rows at a time
        for a in range(0, len(values), step):
            grad_v[a:a + step] = (grad[rows[a:a + step]] * w_dec[cols[a:a + step]]).sum(1)
        s = torch.sparse_coo_tensor(torch.stack([cols, rows]), values, (w_dec.shape[0], grad.shape[0]))
        return grad_v, None, None, torch.sparse.mm(s, grad), None


def geometric_median(x: torch.Tensor, iterations: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's iterations from the mean."""
    m = x.mean(0)
    for _ in range(iterations):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(eps)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - m).norm() <= eps * max(1.0, float(m.norm())):
            return new
        m = new
    return m


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

    architecture: ClassVar[str]  # SAELens's name for the inference architecture
    THRESHOLD_LR = 10.0  # JumpReLU's log-thresholds move this much faster than the weights
    PARAMS = ("l0", "epochs", "batch_size", "lr", "warmup", "decay", "aux_k", "aux_coef", "dead_rows", "dtype")

    def __init__(self, k: int = 1024, seed: int = 0, l0: int = 32, epochs: int | None = None,
                 batch_size: int = 1024, lr: float | None = None, warmup: float = 0.05, decay: float = 0.2,
                 aux_k: int | None = None, aux_coef: float = 1 / 32, dead_rows: int | None = None,
                 dtype: str = "float32", device: str = "cpu", chunk_rows: int = 65536,
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
        self.device, self.chunk_rows, self.progress = device, int(chunk_rows), progress
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

    def sizes(self, features) -> np.ndarray:
        """Per latent, on how many rows it is active."""
        counts = np.zeros(self.k, dtype=np.int64)
        for a in range(0, len(features), ENCODE_ROWS):
            x = torch.as_tensor(np.asarray(features[a:a + ENCODE_ROWS], dtype=np.float32))
            counts += (self.encode_tensor(x) > 0).sum(0).numpy()
        return counts

    @torch.no_grad()
    def assign(self, features):
        """The most active latent of each row (−1 where none is active)."""
        self._check_fitted()
        out = np.empty(len(features), dtype=np.int64)
        for a in range(0, len(features), ENCODE_ROWS):
            codes = self.encode_tensor(torch.as_tensor(np.asarray(features[a:a + ENCODE_ROWS], dtype=np.float32)))
            best, idx = codes.max(1)
            out[a:a + len(codes)] = torch.where(best > 0, idx, -1).numpy()
        return out

    # -- training
    def _select(self, pre: torch.Tensor, t: dict, train: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, cols)`` of the active entries of ``pre`` during training."""
        raise NotImplementedError

    def _latent_groups(self) -> list[int]:
        """Ends of the nested prefixes whose reconstructions enter the loss (Matryoshka)."""
        return [self.k]

    def _extra_loss(self, pre, t, train, rows, cols) -> torch.Tensor | None:
        return None

    def _after_step(self, pre, t, train, rows, cols) -> None:
        pass

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
        sample = torch.as_tensor(np.asarray(z[sample_rows], dtype=np.float32))
        import hashlib

        self._data_identity = [n, dim, hashlib.sha256(sample.numpy().tobytes()).hexdigest()]
        b_dec = geometric_median(sample)
        scale = math.sqrt(dim / max(1e-12, float(((sample - b_dec) ** 2).sum(1).mean())))
        w_dec = torch.randn(self.k, dim, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        t = {"W_enc": w_dec.clone(), "b_enc": torch.zeros(self.k), "components_": w_dec, "b_dec": b_dec * scale}
        self._init_extra(t, (sample - b_dec) * scale)
        t = {k: torch.nn.Parameter(v.to(device)) for k, v in t.items()}
        opt = torch.optim.Adam([{"params": [t[k] for k in sorted(t) if k != "log_threshold"]},
                                {"params": [t[k] for k in sorted(t) if k == "log_threshold"],
                                 "scale": self.THRESHOLD_LR}], lr=lr, betas=(0.9, 0.999))
        train = {"since_fired": torch.zeros(self.k, dtype=torch.long, device=device), "threshold": None}
        dead_rows = self.dead_rows or max(2 * batch, min(n, 50_000))
        aux_k = self.aux_k or max(1, dim // 2)
        start = self._resume(t, opt, train)
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
                stats, loss = self._step(x, t, train, dead_rows, aux_k, step, torch_dtype)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                with torch.no_grad():  # decoder rows stay unit-norm: remove the gradient's radial part
                    g, w = t["components_"].grad, t["components_"]
                    g -= (g * w).sum(1, keepdim=True) * w
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
                    self._save_checkpoint(t, opt, train, step + 1)
        self._finish(t, train, scale)
        if self.checkpoint is not None:
            Path(self.checkpoint).unlink(missing_ok=True)
        return self

    def _init_extra(self, t: dict, sample: torch.Tensor) -> None:
        pass

    def _batches(self, z, batch: int, epochs: int, start: int, device):
        """``(step, rows)`` from ``start`` on: each epoch a seeded permutation of the rows, read
        ``chunk_rows`` at a time (in order within a chunk, then shuffled), as float32."""
        n = len(z)
        steps_per_epoch = math.ceil(n / batch)
        chunk = max(batch, self.chunk_rows // batch * batch)
        for epoch in range(start // steps_per_epoch, epochs):
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
            first = epoch * steps_per_epoch
            for c in range(0, n, chunk):
                if first + math.ceil(min(c + chunk, n) / batch) <= start:
                    continue  # every batch of this chunk was done before the resume
                part = order[c:c + chunk]
                inverse = np.argsort(np.argsort(part, kind="stable"), kind="stable")
                rows = np.asarray(z[np.sort(part)], dtype=np.float32)[inverse]  # one in-order gather
                data = torch.from_numpy(rows)
                for b in range(0, len(part), batch):
                    step = first + (c + b) // batch
                    if step >= start:
                        yield step, data[b:b + batch].to(device, copy=True)

    def _step(self, x: torch.Tensor, t: dict, train: dict, dead_rows: int, aux_k: int, step: int,
              dtype: torch.dtype = torch.float32):
        b = len(x)
        x_c = x - t["b_dec"]
        with torch.no_grad():  # the one dense product (bf16 where asked); the rest is sparse
            pre = torch.addmm(t["b_enc"].to(dtype), x_c.to(dtype), t["W_enc"].T.to(dtype)).float()
        rows, cols = self._select(pre, t, train)
        values = _SparseEncode.apply(pre, x_c, t["W_enc"], t["b_enc"], rows, cols)
        values = self._activation(values, pre, t, rows, cols)
        target = x - t["b_dec"]
        variance = float(((x - x.mean(0)) ** 2).sum(1).mean().clamp_min(1e-12))
        loss = 0.0
        recon = None
        groups = self._latent_groups()
        begin = 0
        for end in groups:  # nested prefixes: each reconstruction adds the next group's latents
            keep = (cols >= begin) & (cols < end)
            part = _SparseDecode.apply(values[keep], rows[keep], cols[keep], t["components_"], b)
            recon = part if recon is None else recon + part
            loss = loss + ((recon - target) ** 2).sum(1).mean() / variance
            begin = end
        loss = loss / len(groups)
        with torch.no_grad():
            fired = torch.zeros(self.k, dtype=torch.bool, device=x.device)
            fired[cols[values > 0]] = True
            train["since_fired"] += b
            train["since_fired"][fired] = 0
            dead = train["since_fired"] > dead_rows
            fvu = float(((recon - target) ** 2).sum(1).mean()) / variance
        if self.aux_coef > 0 and bool(dead.any()):
            k_aux = min(aux_k, int(dead.sum()))
            with torch.no_grad():
                masked = pre.masked_fill(~dead[None], -torch.inf)
                top = masked.topk(k_aux, dim=1)
                ok = torch.isfinite(top.values)
                a_rows = torch.arange(b, device=x.device)[:, None].expand(-1, k_aux)[ok]
                a_cols = top.indices[ok]
            a_vals = _SparseEncode.apply(pre, x_c.detach(), t["W_enc"], t["b_enc"], a_rows, a_cols).clamp_min(0)
            residual = (target - recon).detach()
            aux = _SparseDecode.apply(a_vals, a_rows, a_cols, t["components_"], b)
            aux_loss = ((aux - residual) ** 2).sum(1).mean() / max(1e-12, float((residual ** 2).sum(1).mean()))
            loss = loss + self.aux_coef * min(1.0, k_aux / aux_k) * aux_loss
        extra = self._extra_loss(pre, t, train, rows, cols)
        if extra is not None:
            loss = loss + extra
        self._after_step(pre, t, train, rows, cols)
        l0 = float((values > 0).sum()) / b
        return TrainStats(step, float(loss), fvu, l0, float(dead.float().mean())), loss

    def _activation(self, values, pre, t, rows, cols):
        return values.clamp_min(0)

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

    # -- checkpoints
    def _checkpoint_identity(self) -> str:
        import json

        return json.dumps({"method": self.method, "params": self.params(), "data": self._data_identity},
                          sort_keys=True)

    def _save_checkpoint(self, t: dict, opt, train: dict, step: int) -> None:
        import json

        from safetensors.torch import save

        from vlmsteer.outputs import atomic_write

        tensors = {f"param.{k}": v.detach().cpu().contiguous() for k, v in t.items()}
        for name in sorted(t):
            s = opt.state.get(t[name], {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in s:
                    tensors[f"adam.{name}.{key}"] = s[key].detach().cpu().contiguous()
        tensors["train.since_fired"] = train["since_fired"].cpu()
        meta = {"identity": self._checkpoint_identity(), "step": str(step),
                "adam_step": str(int(opt.state[t["components_"]]["step"])) if t["components_"] in opt.state else "0",
                "train": json.dumps({k: v for k, v in train.items() if not isinstance(v, torch.Tensor)})}
        atomic_write(self.checkpoint, lambda f: f.write(save(tensors, metadata=meta)), durable=False)

    def _resume(self, t: dict, opt, train: dict) -> int:
        """The step a checkpoint of this same training reached (0 without one)."""
        import json

        from safetensors import safe_open

        if self.checkpoint is None or not Path(self.checkpoint).is_file():
            return 0
        try:
            with safe_open(str(self.checkpoint), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("identity") != self._checkpoint_identity():
                    return 0
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is started over, not trusted
            return 0
        with torch.no_grad():
            for k, v in t.items():
                v.copy_(tensors[f"param.{k}"])
        adam_step = torch.tensor(float(meta["adam_step"]))
        for name in sorted(t):
            if f"adam.{name}.exp_avg" in tensors:
                opt.state[t[name]] = {"step": adam_step.clone(),
                                      "exp_avg": tensors[f"adam.{name}.exp_avg"].to(t[name].device),
                                      "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"].to(t[name].device)}
        train["since_fired"].copy_(tensors["train.since_fired"])
        train.update(json.loads(meta["train"]))
        return int(meta["step"])


class TopKSAE(SparseAutoencoder):
    """Each row keeps its ``l0`` largest pre-activations (Gao et al. 2024)."""

    method = "topk_sae"
    architecture = "topk"

    def _select(self, pre, t, train):
        idx = pre.topk(self.l0, dim=1, sorted=False).indices
        rows = torch.arange(len(pre), device=pre.device)[:, None].expand_as(idx)
        return rows.reshape(-1), idx.reshape(-1)


class BatchTopKSAE(SparseAutoencoder):
    """The batch keeps its ``l0 × batch`` largest pre-activations (Bussmann et al. 2024); at
    inference, every pre-activation above the mean over training of the smallest kept one."""

    method = "batchtopk_sae"
    architecture = "jumprelu"  # what SAELens saves a BatchTopK SAE as: one threshold per latent

    def _select(self, pre, t, train):
        flat = pre.clamp_min(0).reshape(-1)
        kept = flat.topk(min(len(flat), self.l0 * len(pre)), sorted=False)
        kept_idx = kept.indices[kept.values > 0]
        if len(kept_idx):  # the inference threshold: a running mean of the smallest kept activation
            smallest = float(flat[kept_idx].min())
            old = train.get("threshold")
            train["threshold"] = smallest if old is None else 0.99 * old + 0.01 * smallest
        return kept_idx // pre.shape[1], kept_idx % pre.shape[1]

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
        return torch.nonzero(pre > theta, as_tuple=True)

    def _activation(self, values, pre, t, rows, cols):
        return _JumpGate.apply(values, t["log_threshold"], cols, self.BANDWIDTH)

    def _extra_loss(self, pre, t, train, rows, cols):
        l0 = _StepCount.apply(pre, t["log_threshold"], self.BANDWIDTH) / len(pre)
        weight = 2 * self.SPARSITY * (float(l0) / self.l0 - 1) / self.l0
        return weight * l0

    def _threshold(self, w, train):
        return w["log_threshold"].exp()


class _JumpGate(torch.autograd.Function):
    """The selected values ``pre`` (all above θ), with the JumpReLU pseudo-derivative for θ:
    ``∂a/∂θ = −(θ/ε)·K((pre − θ)/ε)`` (rectangle kernel K)."""

    @staticmethod
    def forward(ctx, values, log_theta, cols, eps):
        ctx.save_for_backward(values, log_theta, cols)
        ctx.eps = eps
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        values, log_theta, cols = ctx.saved_tensors
        theta = log_theta.exp()
        near = ((values - theta[cols]).abs() < ctx.eps / 2).to(grad.dtype)
        g_theta = torch.zeros_like(theta).index_add_(0, cols, -(theta[cols] / ctx.eps) * near * grad)
        return grad, g_theta * theta, None, None  # through θ = exp(log θ)


class _StepCount(torch.autograd.Function):
    """``Σ H(pre − θ)`` (the batch's active count), with ``∂/∂θ = −(1/ε)·K((pre − θ)/ε)``."""

    @staticmethod
    def forward(ctx, pre, log_theta, eps):
        theta = log_theta.exp()
        ctx.save_for_backward(pre, log_theta)
        ctx.eps = eps
        return (pre > theta).sum().to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, log_theta = ctx.saved_tensors
        theta = log_theta.exp()
        near = ((pre - theta).abs() < ctx.eps / 2).sum(0).to(theta.dtype)
        return None, grad * (-near / ctx.eps) * theta, None


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
