"""Autograd pieces of sparse autoencoder training: products with sparse activations whose
gradients touch only the selected entries, JumpReLU's straight-through threshold gradients,
and the geometric median that starts ``b_dec``."""

from __future__ import annotations

import torch


class SparseEncode(torch.autograd.Function):
    """``pre[rows, cols]`` of ``pre = x_c·W_encᵀ + b_enc`` (``pre`` computed without grad), with
    gradients from the selected entries only: ``Sᵀ·x_c`` for the encoder rows, ``S·W_enc`` for
    the input, where ``S`` is the sparse (batch × latents) matrix of incoming gradients. Only
    the first ``n_x`` entries (default: all) send gradient to the input; every entry reaches the
    weights through one dense gradient (one call per step: no second weight-sized gradient to
    add)."""

    @staticmethod
    def forward(ctx, pre, x_c, w_enc, b_enc, rows, cols, n_x=None):
        ctx.save_for_backward(x_c, w_enc, rows, cols)
        ctx.needs_x = x_c.requires_grad
        ctx.n_x = len(rows) if n_x is None else n_x
        return pre[rows, cols]

    @staticmethod
    def backward(ctx, grad):
        x_c, w_enc, rows, cols = ctx.saved_tensors
        s = torch.sparse_coo_tensor(torch.stack([cols, rows]), grad, (w_enc.shape[0], x_c.shape[0]),
                                    check_invariants=False)
        grad_w = torch.sparse.mm(s, x_c)
        grad_b = torch.zeros(w_enc.shape[0], dtype=grad.dtype, device=grad.device).index_add_(0, cols, grad)
        grad_x = None
        if ctx.needs_x:
            m = ctx.n_x
            s_x = torch.sparse_coo_tensor(torch.stack([rows[:m], cols[:m]]), grad[:m],
                                          (x_c.shape[0], w_enc.shape[0]), check_invariants=False)
            grad_x = torch.sparse.mm(s_x, w_enc)
        return None, grad_x, grad_w, grad_b, None, None, None


class SparseDecode(torch.autograd.Function):
    """``S·W_dec`` for the sparse (batch × latents) activations ``S[rows, cols] = values``; the
    gradient of each value is one dot product (no dense batch × latents product)."""

    @staticmethod
    def forward(ctx, values, rows, cols, w_dec, n_rows):
        s = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n_rows, w_dec.shape[0]),
                                    check_invariants=False)
        ctx.save_for_backward(values, rows, cols, w_dec)
        return torch.sparse.mm(s, w_dec)

    @staticmethod
    def backward(ctx, grad):
        values, rows, cols, w_dec = ctx.saved_tensors
        if grad.shape[0] * w_dec.shape[0] <= 1 << 22:  # small: one dense product beats the gathers
            grad_v = (grad @ w_dec.T)[rows, cols]
        else:
            grad_v = torch.empty_like(values)
            step = max(1, (1 << 22) // max(1, w_dec.shape[1]))  # 16 MiB of gathered rows at a time
            for a in range(0, len(values), step):
                grad_v[a:a + step] = (grad[rows[a:a + step]] * w_dec[cols[a:a + step]]).sum(1)
        s = torch.sparse_coo_tensor(torch.stack([cols, rows]), values, (w_dec.shape[0], grad.shape[0]),
                                    check_invariants=False)
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


class JumpGate(torch.autograd.Function):
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


class StepCount(torch.autograd.Function):
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
