"""Training a sparse autoencoder: the loop, the schedule, checkpoints, AuxK — apart from the
model (:mod:`vlmsteer.concepts.sae`), whose architecture supplies only its activation.

The recipe: ``b_dec`` from the geometric median of a sample, tied encoder initialisation scaled
so the first reconstructions fit a sample by least squares, inputs scaled so a row's mean squared
norm is the dimension (folded back into the weights at the end), Adam with linear warm-up, final
linear decay and a second-moment decay suited to the run's length (:func:`_beta2`), decoder rows
kept unit-norm with their parallel gradient removed, an AuxK loss that makes the top ``aux_k``
dead latents model the residual error. Batches are shuffled rows gathered chunk by chunk from the
features (never the whole matrix in float32). Checkpoints (safetensors) resume a long training
where it stopped, to the same result.

Each step's gradients come one of two ways:

- **written out** (:func:`written_step`) for the architectures that select their active entries
  (``_select``): no autograd graph, the encoder's and decoder's gradients from the selected
  (sparse) activations only, AuxK's from the dead latents' top entries; tested equal to autograd
  of :func:`autograd_loss` for every such architecture;
- **autograd** (:func:`autograd_step`) of :func:`autograd_loss` for any other: an architecture
  defines ``train_codes(pre, t, train)`` — its dense activations, differentiable — and nothing
  else, and trains correctly.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vlmsteer.concepts.dictionary import check_features
from vlmsteer.concepts.sae_checkpoint import resume, save_checkpoint
from vlmsteer.concepts.sparse_ops import SparsePattern, geometric_median, row_top
from vlmsteer.errors import VlmsteerError
from vlmsteer.mapped import release_pages, take_rows


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


def train(sae, features, callback: Callable[[TrainStats], None] | None = None):
    """Train ``sae`` (a :class:`~vlmsteer.concepts.sae.SparseAutoencoder`) on the rows of ``features``
    in place; its architecture's written-out gradients where it has them, autograd otherwise."""
    z = check_features(features, 1, dtype=None)
    if len(z) < 2:
        raise VlmsteerError("a sparse autoencoder needs at least 2 rows to train on")
    torch_dtype = torch.bfloat16 if sae.dtype == "bfloat16" else torch.float32
    device = torch.device(sae.device)
    n, dim = z.shape
    _check_fits(sae, dim, device)
    batch = min(sae.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    epochs = sae.epochs or max(1, min(50, math.ceil(1000 / steps_per_epoch)))
    total = epochs * steps_per_epoch
    lr = sae.lr or 2e-4 / math.sqrt(sae.k / 2 ** 14)
    gen = torch.Generator().manual_seed(sae.seed)
    sample_rows = np.sort(np.random.default_rng(sae.seed).choice(n, size=min(n, 8192), replace=False))
    sample = torch.as_tensor(take_rows(z, sample_rows).astype(np.float32, copy=False))
    sae._data_identity = [n, dim, hashlib.sha256(sample.numpy().tobytes()).hexdigest()]
    b_dec = geometric_median(sample)
    scale = math.sqrt(dim / max(1e-12, float(((sample - b_dec) ** 2).sum(1).mean())))
    centred = (sample - b_dec) * scale
    w_dec = torch.randn(sae.k, dim, generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    t = {"W_enc": w_dec * _encoder_gain(sae, w_dec, centred), "b_enc": torch.zeros(sae.k),
         "components_": w_dec, "b_dec": b_dec * scale}
    sae._init_extra(t, centred)
    del centred
    del sample  # (8192 rows in float32: not kept through training)
    t = {k: v.to(device).contiguous() for k, v in t.items()}  # (gradients are assigned: no autograd on t)
    take_step = written_step if sae.writes_gradients else autograd_step
    opt = torch.optim.Adam([{"params": [t[k] for k in sorted(t) if k != "log_threshold"]},
                            {"params": [t[k] for k in sorted(t) if k == "log_threshold"],
                             "scale": sae.THRESHOLD_LR}], lr=lr, betas=(0.9, _beta2(total)),
                           fused=device.type in ("cpu", "cuda"))  # no temporaries of a parameter's size
    train = {"since_fired": torch.zeros(sae.k, dtype=torch.long, device=device), "threshold": None}
    dead_rows = sae.dead_rows or max(2 * batch, min(n, 50_000))
    aux_k = sae.aux_k or max(1, dim // 2)
    start = resume(sae, t, opt, train)
    sae.history_: list[dict] = []
    from vlmsteer.progress import progress_bar

    with progress_bar(f"training {sae.method} ({sae.k} latents, L0 {sae.l0})", total,
                      enabled=sae.progress) as advance:
        advance(start)
        for step, x in _batches(sae, z, batch, epochs, start, device):
            x = x.mul_(scale)
            lr_now = lr * min(1.0, (step + 1) / max(1, sae.warmup * total),
                              max(0.0, (total - step) / max(1, sae.decay * total)))
            for group in opt.param_groups:
                group["lr"] = lr_now * group.get("scale", 1.0)
            opt.zero_grad(set_to_none=True)  # the last step's gradients go before this step's
            stats, grads = take_step(sae, x, t, train, dead_rows, aux_k, step, torch_dtype)
            if not math.isfinite(stats.loss):  # (a float already: no extra synchronisation)
                raise _diverged(sae, step, total, f"the loss is {stats.loss}", lr)
            for name, grad in grads.items():
                t[name].grad = grad
            del grads  # (no other name for a gradient: each is freed before the next step's)
            _remove_radial_part(t["components_"])
            opt.step()
            with torch.no_grad():
                t["components_"] /= t["components_"].norm(dim=1, keepdim=True).clamp_min(1e-12)
            if step % 50 == 0 or step == total - 1:
                sae.history_.append(vars(stats))
                advance(1, stats.note())
            else:
                advance(1)
            if callback is not None:
                callback(stats)
            if sae.checkpoint is not None and (step + 1) % sae.checkpoint_every == 0 and step + 1 < total:
                _check_finite(sae, t, step, total, lr)  # a checkpoint is never saved with a non-finite weight
                save_checkpoint(sae, t, opt, train, step + 1)
    _check_finite(sae, t, total - 1, total, lr)
    sae._finish(t, train, scale)
    if sae.checkpoint is not None:
        Path(sae.checkpoint).unlink(missing_ok=True)
    return sae


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device`` (CPU: the kernel's MemAvailable), or None
    where it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _check_fits(sae, dim: int, device: torch.device) -> None:
    """Refuse, before allocating, weights that cannot fit: the encoder and decoder, each with two
    Adam moments and a gradient (8 float32 matrices of latents × dim)."""
    need = 8 * 4 * sae.k * dim
    free = available_bytes(device)
    if free is not None and need > free:
        size = lambda b: f"{b / 2**30:.1f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"  # noqa: E731
        raise VlmsteerError(f"{sae.k} latents of {dim} dimensions need about {size(need)} for the weights and their "
                            f"optimizer state; {device.type} has {size(free)} available: use fewer latents", "latents")


def _check_finite(sae, t: dict, step: int, total: int, lr: float) -> None:
    bad = [name for name, v in sorted(t.items()) if not bool(torch.isfinite(v).all())]
    if bad:
        raise _diverged(sae, step, total, f"{', '.join(bad)} hold non-finite values", lr)


def _diverged(sae, step: int, total: int, what: str, lr: float) -> VlmsteerError:
    """Training stopped at the first non-finite loss or weight: which step, the likely cause,
    what is kept (the last checkpoint, all finite); nothing is published."""
    kept = (f"; its last checkpoint ({sae.checkpoint}) holds finite weights only" if sae.checkpoint is not None
            and Path(sae.checkpoint).is_file() else "")
    return VlmsteerError(f"{sae.method} training stopped at step {step + 1} of {total}: {what}; the learning rate "
                         f"({lr:g}) is likely too large for these features: try a smaller one{kept}", "lr")


def _encoder_gain(sae, w_dec: torch.Tensor, sample: torch.Tensor) -> float:
    """The factor on the tied encoder that reconstructs ``sample`` best through its ``l0``
    largest activations (least squares), so training starts near the data's scale."""
    x = sample[:2048]
    top = (x @ w_dec.T).topk(min(sae.l0, len(w_dec)), dim=1)
    x_hat = torch.zeros(len(x), len(w_dec)).scatter_(1, top.indices, top.values.clamp_min(0)) @ w_dec
    return float((x_hat * x).sum() / (x_hat * x_hat).sum().clamp_min(1e-12))


CHUNK_BYTES = 1 << 27  # rows gathered at a time: 128 MiB of them as stored

def _batches(sae, z, batch: int, epochs: int, start: int, device):
    """``(step, rows)`` from ``start`` on: each epoch a seeded permutation of the rows, read
    ``chunk_rows`` at a time (default: 128 MiB of rows as stored; in order within a chunk,
    then shuffled) and kept in the store's dtype; each batch becomes float32 alone."""
    n, dim = z.shape
    steps_per_epoch = math.ceil(n / batch)
    per_chunk = sae.chunk_rows or CHUNK_BYTES // (dim * np.dtype(getattr(z, "dtype", np.float32)).itemsize)
    chunk = max(batch, per_chunk // batch * batch)
    for epoch in range(start // steps_per_epoch, epochs):
        order = np.random.default_rng([sae.seed, epoch]).permutation(n)
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
def written_step(sae, x: torch.Tensor, t: dict, train: dict, dead_rows: int, aux_k: int, step: int,
          dtype: torch.dtype = torch.float32) -> tuple[TrainStats, dict[str, torch.Tensor]]:
    """One batch's figures and the gradient of its loss for every weight, written out (no
    autograd graph): products over the selected positions only (:class:`SparsePattern`), one
    weight-sized gradient per weight."""
    b = len(x)
    w_enc, w_dec, b_dec = t["W_enc"], t["components_"], t["b_dec"]
    x_c = x - b_dec
    pre = torch.addmm(t["b_enc"].to(dtype), x_c.to(dtype), w_enc.T.to(dtype)).float()  # bf16 where asked
    rows, cols, selected = sae._select(pre, t, train)
    active = selected > 0
    fired = torch.zeros(sae.k, device=x.device).index_add_(0, cols, active.float())  # rows each fired on
    train["since_fired"] += b
    train["since_fired"].masked_fill_(fired > 0, 0)
    dead = train["since_fired"] > dead_rows
    grads = {name: torch.zeros_like(v) for name, v in t.items() if name not in ("W_enc", "components_")}

    # the reconstructions: each Matryoshka prefix adds its group's latents (a block of rows each)
    values = sae._activation(selected, t, cols)
    groups = sae._latent_groups()
    out_rows = rows
    if len(groups) > 1:
        out_rows = rows + b * torch.bucketize(cols, torch.tensor(groups, device=cols.device), right=True)
    encoded = SparsePattern(rows, cols, b, sae.k)
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
    d_selected = sae._activation_grad(decoded.dots(d_parts, w_dec), values, t, cols, grads)
    grad_w_enc = encoded.t_mm(d_selected, x_c)
    col_sums = encoded.col_sums(d_selected)
    grads["b_enc"] += col_sums
    grads["b_dec"] -= col_sums @ w_enc  # through x − b_dec (AuxK's positions do not move b_dec)

    k_aux = min(aux_k, int(dead.sum())) if sae.aux_coef > 0 else 0
    if k_aux:  # AuxK: the dead latents' top pre-activations model the residual (products over them)
        dead_cols = dead.nonzero().view(-1)
        a, aux = row_top(pre.index_select(1, dead_cols), k_aux)  # (of rows × dead latents)
        w_dead = w_dec.index_select(0, dead_cols)
        residual_norm = max(1e-12, _squared(errors[-1]) / b)  # the residual x − x̂ is −errors[-1]
        aux_error = aux.mm(a, w_dead).add_(errors[-1])  # a·W_dead − residual
        weight = sae.aux_coef * min(1.0, k_aux / aux_k)
        loss += weight * _squared(aux_error) / (b * residual_norm)
        d_aux = aux_error.mul_(2 * weight / (b * residual_norm))
        grad_w_dec.index_add_(0, dead_cols, aux.t_mm(a, d_aux))
        d_a = aux.dots(d_aux, w_dead).mul_(a > 0)
        grad_w_enc.index_add_(0, dead_cols, aux.t_mm(d_a, x_c))
        grads["b_enc"].index_add_(0, dead_cols, aux.col_sums(d_a))
    loss += sae._extra_loss(pre, t, grads)
    grads["W_enc"], grads["components_"] = grad_w_enc, grad_w_dec
    l0 = float(fired.sum()) / b
    return TrainStats(step, loss, group_fvu[-1], l0, float(dead.float().mean())), grads


def autograd_loss(sae, t: dict, x: torch.Tensor, train: dict, dead_rows: int, aux_k: int
                  ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A step's loss written densely, differentiable in ``t``: the architecture's codes
    (``train_codes``) as a full matrix, each Matryoshka prefix's reconstruction from its columns,
    AuxK from the dead columns' top pre-activations (not moving ``b_dec``), the architecture's
    extra term. Returns the loss, the codes and the last prefix's FVU."""
    b = len(x)
    pre = (x - t["b_dec"]) @ t["W_enc"].T + t["b_enc"]
    codes = sae.train_codes(pre, t, train)
    variance = x.var(0, correction=0).sum().clamp_min(1e-12)
    target = x - t["b_dec"]
    losses = [((codes[:, :end] @ t["components_"][:end] - target) ** 2).sum() / (b * variance)
              for end in sae._latent_groups()]
    loss = sum(losses) / len(losses)
    residual = (target - codes @ t["components_"]).detach()
    dead = (train["since_fired"] + b) > dead_rows
    dead[(codes.detach() > 0).any(0)] = False
    k_aux = min(aux_k, int(dead.sum())) if sae.aux_coef > 0 else 0
    if k_aux:
        pre_aux = (x - t["b_dec"].detach()) @ t["W_enc"].T + t["b_enc"]
        masked = torch.where(dead, pre_aux.detach(), -torch.inf)
        top = masked.topk(k_aux, dim=1).indices
        aux_codes = torch.zeros_like(pre_aux).scatter(1, top, pre_aux.gather(1, top).clamp_min(0))
        aux = ((aux_codes @ t["components_"] - residual) ** 2).sum(1).mean() / (residual ** 2).sum(1).mean()
        loss = loss + sae.aux_coef * min(1.0, k_aux / aux_k) * aux
    loss = loss + sae.autograd_extra_loss(pre, t)
    return loss, codes, float(losses[-1].detach())


def autograd_step(sae, x: torch.Tensor, t: dict, train: dict, dead_rows: int, aux_k: int, step: int,
                  dtype: torch.dtype = torch.float32) -> tuple[TrainStats, dict[str, torch.Tensor]]:
    """One batch's figures and the gradient of :func:`autograd_loss` for every weight (the path
    of architectures without written-out gradients; ``dtype`` is not used: float32)."""
    b = len(x)
    with torch.enable_grad():
        leaves = {name: v.detach().requires_grad_(True) for name, v in t.items()}
        loss, codes, fvu = autograd_loss(sae, leaves, x, train, dead_rows, aux_k)
        names = list(leaves)
        found = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    grads = {n: (g if g is not None else torch.zeros_like(t[n])) for n, g in zip(names, found)}
    fired = (codes.detach() > 0).float().sum(0)
    train["since_fired"] += b
    train["since_fired"].masked_fill_(fired > 0, 0)
    dead = train["since_fired"] > dead_rows
    return TrainStats(step, float(loss.detach()), fvu, float(fired.sum()) / b, float(dead.float().mean())), grads


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
