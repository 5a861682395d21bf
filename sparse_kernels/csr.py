"""
CSR (compressed sparse row) storage for a masked weight, and a reference SpMM to read.

A weight W of shape (out_features, in_features) is stored row by row, keeping only its nonzeros:

    crow    int32 (out_features + 1,)  row i owns entries crow[i] : crow[i+1]
    col     int32 (nnz,)               the input feature (column) of each entry
    values  float (nnz,)               the weight of each entry

Every kernel here computes y = x @ W.T (the nn.Linear convention), so output feature i is a dot
product of the input with row i of W: in CSR that row is a short list of (column, value) pairs,
and the zeros are never touched. That is all the saving there is; the fast kernels in cpu.py and
triton_csr.py only arrange the same arithmetic so the hardware can run it at full width.
"""
from dataclasses import dataclass, field

import torch


@dataclass
class CSR:
    crow: torch.Tensor    # int32 (rows + 1,)
    col: torch.Tensor     # int32 (nnz,); the kernels also take int16 (SparseLinear's narrow copy)
    values: torch.Tensor  # (nnz,)
    shape: tuple          # (rows, cols) = (out_features, in_features)
    # what a kernel derives from the pattern alone (crow, col), kept between calls: the pattern
    # is fixed while the values train. Entries check that crow and col are still the same tensors.
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def nnz(self):
        return self.col.numel()

    @property
    def density(self):
        return self.nnz / max(1, self.shape[0] * self.shape[1])

    def row_ids(self):
        """The row of every entry (nnz,), int64: the inverse of the crow compression."""
        counts = (self.crow[1:] - self.crow[:-1]).long()
        return torch.repeat_interleave(torch.arange(self.shape[0], device=self.crow.device), counts)

    def to(self, device):
        return CSR(self.crow.to(device), self.col.to(device), self.values.to(device), self.shape)


def to_csr(weight, mask=None):
    """
    CSR of a 2-D weight. The kept pattern is `mask` (bool, True = kept) if given, else the
    nonzeros of the weight. Pass the training mask so an entry that happens to be exactly 0 but
    is allowed to learn stays in the pattern.
    """
    assert weight.dim() == 2, f"to_csr wants a 2-D weight, got shape {tuple(weight.shape)}"
    w = weight.detach()
    keep = (w != 0) if mask is None else mask.to(device=w.device, dtype=torch.bool)
    assert keep.shape == w.shape, "mask and weight shapes differ"
    rows, cols = keep.nonzero(as_tuple=True)  # row-major order: exactly CSR order
    assert rows.numel() < 2**31, "nnz does not fit 32-bit indices"
    counts = torch.bincount(rows, minlength=w.shape[0])
    crow = torch.zeros(w.shape[0] + 1, dtype=torch.int32, device=w.device)
    crow[1:] = counts.cumsum(0)
    return CSR(crow, cols.to(torch.int32), w[rows, cols].contiguous(), tuple(w.shape))


def to_dense(csr):
    """Back to a dense (rows, cols) tensor: zeros everywhere off the pattern. Lossless."""
    w = torch.zeros(csr.shape, dtype=csr.values.dtype, device=csr.values.device)
    w[csr.row_ids(), csr.col.long()] = csr.values
    return w


def transpose_plan(csr):
    """
    CSR of W.T plus `perm`, the position in csr.values of each W.T entry, so that when the values
    change (every optimizer step) but the pattern does not, W.T is refreshed by one gather:
    values_t = csr.values[perm]. Used by the backward pass for the input gradient.
    """
    rows, cols = csr.row_ids(), csr.col.long()
    perm = torch.argsort(cols * csr.shape[0] + rows)  # sort by (col, row): row-major order of W.T
    counts = torch.bincount(cols, minlength=csr.shape[1])
    crow = torch.zeros(csr.shape[1] + 1, dtype=torch.int32, device=csr.col.device)
    crow[1:] = counts.cumsum(0)
    t = CSR(crow, rows[perm].to(torch.int32), csr.values[perm], (csr.shape[1], csr.shape[0]))
    return t, perm


def csr_matmul_rowloop(csr, x):
    """
    The teaching version: y[:, i] = x[:, cols of row i] @ values of row i, one row at a time.
    x (N, in_features) -> (N, out_features). Slow (a Python loop over rows); read this one.
    """
    y = x.new_zeros(x.shape[0], csr.shape[0])
    for i in range(csr.shape[0]):
        start, end = int(csr.crow[i]), int(csr.crow[i + 1])
        cols = csr.col[start:end].long()
        y[:, i] = x[:, cols] @ csr.values[start:end].to(x.dtype)
    return y


def csr_matmul_reference(csr, x, chunk_elems=2**24):
    """
    The oracle, vectorized: every entry (i, j, w) adds w * x[:, j] to y[:, i]. Gather the needed
    input columns, scale them, and scatter-add them into their output rows (index_add_). Tokens
    go in chunks so the (tokens, nnz) intermediate stays under chunk_elems elements.
    Accepts x of shape (..., in_features); fp32 accumulation.
    """
    lead, k = x.shape[:-1], x.shape[-1]
    assert k == csr.shape[1], f"x has {k} features, the weight expects {csr.shape[1]}"
    x2 = x.reshape(-1, k).float()
    rows, cols, vals = csr.row_ids(), csr.col.long(), csr.values.float()
    y = x2.new_zeros(x2.shape[0], csr.shape[0])
    step = max(1, chunk_elems // max(1, csr.nnz))
    for t in range(0, x2.shape[0], step):
        contrib = x2[t:t + step, cols] * vals          # (tokens, nnz)
        y[t:t + step].index_add_(1, rows, contrib)     # sum the entries of each row
    return y.to(x.dtype).reshape(*lead, csr.shape[0])


def sddmm_reference(csr, dy, x):
    """
    Weight gradient at the nonzeros only (sampled dense-dense matmul): for entry (i, j),
    sum over tokens of dy[:, i] * x[:, j]. dy (N, out), x (N, in) -> (nnz,).
    """
    rows, cols = csr.row_ids(), csr.col.long()
    g = torch.zeros(csr.nnz, dtype=torch.float32, device=dy.device)
    step = max(1, 2**24 // max(1, csr.nnz))
    for t in range(0, dy.shape[0], step):
        g += (dy[t:t + step, rows].float() * x[t:t + step, cols].float()).sum(0)
    return g
