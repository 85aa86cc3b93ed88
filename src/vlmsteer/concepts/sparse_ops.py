"""The products of sparse autoencoder training over the selected (row, latent) positions
alone (:class:`SparsePattern`, or :func:`row_top` over each row's largest entries); JumpReLU's
straight-through threshold gradients; the geometric median that starts ``b_dec``."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


class SparsePattern:
    """The positions ``(rows, cols)`` of a sparse ``n_rows × n_cols`` matrix ``S``, grouped once
    for the three products training needs, each a fused kernel over the entries alone:
    ``S·M`` (:meth:`mm`) and ``Sᵀ·M`` (:meth:`t_mm`) as weighted bag sums (``embedding_bag``),
    and the entries of ``A·Bᵀ`` at the positions (:meth:`dots`, a sampled product on CPU).
    Values are given and returned in the caller's order of the positions; rows already in order
    (TopK's) are not sorted again, and patterns with the same columns share one column sort
    (:meth:`with_rows`). Positions that fill a large enough share of the matrix take the
    products through the dense matrix instead (:data:`DENSE_T_MM`, :data:`DENSE_ALL`); the
    matrix of the values last given is kept (a decode's forward and backward share it)."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_cols: int, _by_col=None):
        self.rows, self.cols, self.n_rows, self.n_cols = rows, cols, n_rows, n_cols
        self.share = len(rows) / max(1, n_rows * n_cols)
        self._by_row, self._by_col, self._kept, self._flat = None, _by_col, None, None

    def with_rows(self, rows: torch.Tensor, n_rows: int) -> SparsePattern:
        """The pattern of the same columns (in the same order) in other rows."""
        by_col = None if len(rows) >= DENSE_T_MM * n_rows * self.n_cols else self._column_groups()
        return SparsePattern(rows, self.cols, n_rows, self.n_cols, by_col)

    def _row_groups(self):
        """``(order or None, columns in row order, row starts)``: rows in order are not sorted."""
        if self._by_row is None:
            rows, cols = self.rows, self.cols
            order = None if len(rows) < 2 or bool((rows[1:] >= rows[:-1]).all()) else torch.argsort(rows, stable=True)
            if order is not None:
                rows, cols = rows[order], cols[order]
            self._by_row = (order, cols, torch.searchsorted(rows, torch.arange(self.n_rows + 1, device=rows.device)))
        return self._by_row

    def _column_groups(self):
        """``(order, column starts)``: the positions grouped by column."""
        if self._by_col is None:
            cols, order = _sort_ids(self.cols, self.n_cols)
            self._by_col = (order, torch.searchsorted(cols, torch.arange(self.n_cols + 1, device=cols.device)))
        return self._by_col

    def _flat_positions(self) -> torch.Tensor:
        if self._flat is None:
            self._flat = self.rows * self.n_cols + self.cols
        return self._flat

    def _matrix(self, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``S`` as a dense matrix (duplicate positions summed)."""
        if self._kept is None or self._kept[0] is not values or self._kept[1].dtype != dtype:
            flat = torch.zeros(self.n_rows * self.n_cols, dtype=dtype, device=values.device)
            flat.index_add_(0, self._flat_positions(), values.to(dtype))
            self._kept = (values, flat.view(self.n_rows, self.n_cols))
        return self._kept[1]

    def col_sums(self, values: torch.Tensor) -> torch.Tensor:
        """``1ᵀ·S``: each column's sum of values."""
        if self._kept is not None and self._kept[0] is values:
            return self._kept[1].sum(0)
        return torch.zeros(self.n_cols, dtype=values.dtype, device=values.device).index_add_(0, self.cols, values)

    def mm(self, values: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``S·M`` (``n_rows × M.shape[1]``) for ``M`` with ``n_cols`` rows."""
        if self.share >= DENSE_ALL:
            return self._matrix(values, m.dtype) @ m
        order, cols, starts = self._row_groups()
        values = values if order is None else values[order]
        return F.embedding_bag(cols, m, starts, mode="sum", include_last_offset=True,
                               per_sample_weights=values.to(m.dtype))

    def t_mm(self, values: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``Sᵀ·M`` (``n_cols × M.shape[1]``) for ``M`` with ``n_rows`` rows."""
        if self.share >= DENSE_T_MM:
            return self._matrix(values, m.dtype).T @ m
        order, starts = self._column_groups()
        return F.embedding_bag(self.rows[order], m, starts, mode="sum", include_last_offset=True,
                               per_sample_weights=values[order].to(m.dtype))

    def dots(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a[rows]·b[cols]`` for every position."""
        if self.share >= DENSE_ALL:
            return (a @ b.T).take(self._flat_positions())
        if a.device.type != "cpu":  # gathered 16 MiB at a time
            out = torch.empty(len(self.rows), dtype=a.dtype, device=a.device)
            step = max(1, (1 << 22) // max(1, a.shape[1]))
            for s in range(0, len(self.rows), step):
                out[s:s + step] = (a[self.rows[s:s + step]] * b[self.cols[s:s + step]]).sum(1)
            return out
        order, cols, starts = self._row_groups()
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            mask = torch.sparse_csr_tensor(starts, cols, a.new_zeros(len(cols)), (self.n_rows, self.n_cols),
                                           check_invariants=False)
            sampled = torch.sparse.sampled_addmm(mask, a, b.T).values()
        return sampled if order is None else torch.empty_like(sampled).index_copy_(0, order, sampled)


# Shares of the matrix that the positions fill from which products go through the dense matrix:
# Sᵀ·M from 1/24 (measured on CPU, 256 rows of 128 dimensions, TopK's 32 of 512 latents: 0.25 ms
# against 0.8 ms for the padded column sort and bag sums); all three from 1/4, where a gather
# per position costs more than the whole dense product.
DENSE_T_MM = 1 / 24
DENSE_ALL = 1 / 4


class DenseProducts:
    """The same products as :class:`SparsePattern` for values given as a dense matrix ``S``."""

    def mm(self, values: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return values @ m

    def t_mm(self, values: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return values.T @ m

    def dots(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b.T

    def col_sums(self, values: torch.Tensor) -> torch.Tensor:
        return values.sum(0)


def row_top(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, SparsePattern | DenseProducts]:
    """The ``k`` largest entries of each row of ``scores`` (all where ``k`` reaches the width),
    clamped at 0, and the products over them: over their positions where they fill less than
    :data:`DENSE_ALL` of the matrix, else as a dense matrix with the rest zero."""
    n_rows, n_cols = scores.shape
    if k < DENSE_ALL * n_cols:
        values, cols = scores.topk(k, dim=1, sorted=False)
        rows = torch.arange(n_rows, device=scores.device).repeat_interleave(k)
        return values.reshape(-1).clamp_min_(0), SparsePattern(rows, cols.reshape(-1), n_rows, n_cols)
    if k < n_cols:
        top = scores.topk(k, dim=1, sorted=False)
        scores = torch.zeros_like(scores).scatter_(1, top.indices, top.values)
    return scores.clamp_min(0), DenseProducts()


RADIX_MIN = 32768  # torch sorts non-negative int64 vectors this long with a parallel radix sort on CPU


def _sort_ids(ids: torch.Tensor, bound: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A stable sort of ids in ``[0, bound)``. On CPU, shorter vectors are padded with ``bound``
    to the length where torch switches to its (stable, parallel) radix sort: sorting 24,576 ids
    of 512 latents then takes ~0.4 ms instead of ~1.1 ms (the comparison sort below it)."""
    n = len(ids)
    if ids.device.type != "cpu" or n >= RADIX_MIN or n <= RADIX_MIN // 4:  # (measured: no gain below)
        return torch.sort(ids, stable=True)
    padded = torch.cat([ids, ids.new_full((RADIX_MIN - n,), bound)])
    values, order = torch.sort(padded, stable=True)
    return values[:n], order[:n]


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


def jump_threshold_grad(grad: torch.Tensor, values: torch.Tensor, theta: torch.Tensor, cols: torch.Tensor,
                        eps: float) -> torch.Tensor:
    """JumpReLU's pseudo-derivative of the loss for each latent's log-threshold, from the
    gradients of its active values: ``∂a/∂θ = −(θ/ε)·K((a − θ)/ε)`` (rectangle kernel K), times
    θ for the log. Only the kernel's half above θ counts: the products run over the active
    positions, so inactive values just below θ have no gradient to weigh."""
    near = ((values - theta[cols]).abs() < eps / 2).to(grad.dtype)
    return torch.zeros_like(theta).index_add_(0, cols, -(theta[cols] / eps) * near * grad) * theta


def step_count_grad(pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    """The pseudo-derivative of ``Σ H(pre − θ)`` (the batch's active count) for each latent's
    log-threshold: ``−(1/ε)·#{|pre − θ| < ε/2}``, times θ for the log."""
    near = ((pre - theta).abs() < eps / 2).sum(0).to(theta.dtype)
    return -near / eps * theta
