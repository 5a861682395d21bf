"""
csr_matmul (the dispatching entry point) and SparseLinear, an nn.Linear whose weight is CSR.

SparseLinear trains with its sparsity pattern fixed. Only the kept weights exist (`values`, one
per nonzero), so there is nothing to mask. For y = x @ W.T + b:
    dL/dx      = dy @ W        = csr_matmul(W.T, dy): the same kernel on the transposed CSR, whose
                                 pattern is built once; its values are a gather of `values`
    dL/dvalues = for entry (i, j): sum over tokens of dy[:, i] * x[:, j] (SDDMM): the weight
                 gradient only where the pattern has an entry, never the dense (out, in) matrix
    dL/db      = dy summed over tokens

to_sparse_model / to_dense_model swap a masked GPT's six block matrices for SparseLinear and back.
Training with them (pretrain.py / finetune.py --kernel=csr) saves checkpoints in the masked format:
dense_state_dict and dense_optimizer_state scatter the kept weights and their AdamW moments into
dense-shaped tensors, sparse_optimizer_state gathers them back, so a run resumes under either kernel.
"""
import torch
import torch.nn as nn

from . import cpu
from .csr import CSR, csr_matmul_reference, sddmm_reference, to_csr, to_dense, transpose_plan

try:  # the GPU path needs Triton; without it CUDA tensors use the reference
    from . import triton_csr
except Exception:  # ImportError, or a Triton that cannot initialise here
    triton_csr = None

# True: CPU tensors go through the Triton kernels too, which then run in Triton's interpreter
# (TRITON_INTERPRET=1 before sparse_kernels.triton_csr is imported). Slow; for tests/test_triton.py.
triton_on_cpu = False


def _triton(t):
    return triton_csr is not None and (t.device.type == "cuda" or (triton_on_cpu and t.device.type == "cpu"))


def supports(device):
    """Whether SparseLinear has a kernel for `device` ('cpu', 'cuda', 'cuda:1', ...): the C++ one on the
    CPU, the Triton one on CUDA."""
    return device == "cpu" or (device.startswith("cuda") and triton_csr is not None)


def _flat(x, k):
    assert x.shape[-1] == k, f"x has {x.shape[-1]} features, the weight expects {k}"
    return x.reshape(-1, k)


def _spmm2d(csr, x2, bias=None):
    """(N, K) -> (N, M) in fp32 on the best kernel for x2's device."""
    if _triton(x2):
        return triton_csr.spmm(csr, x2, bias)
    if x2.device.type == "cpu":
        return cpu.spmm(csr, x2, bias)
    y = csr_matmul_reference(csr, x2.float())
    return y if bias is None else y + bias.float()


def csr_matmul(csr, x, bias=None):
    """x @ W.T (+ bias) for W in CSR and x of shape (..., in_features): the nn.Linear product."""
    y = _spmm2d(csr, _flat(x, csr.shape[1]), bias)
    return y.to(x.dtype).reshape(*x.shape[:-1], csr.shape[0])


def _sddmm(csr, dy2, x2, transposed=None):
    """transposed: (W.T's CSR, perm) from transpose_plan, which the CPU kernel uses when W is wider in than out."""
    if _triton(dy2):
        return triton_csr.sddmm(csr, dy2, x2)
    if dy2.device.type == "cpu":
        return cpu.sddmm(csr, dy2, x2, transposed)
    return sddmm_reference(csr, dy2, x2)  # another device, or CUDA without Triton


class _CSRLinearFn(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, values, bias, layer):
        x2 = _flat(x, layer.in_features)
        y = _spmm2d(layer.pattern(values), x2, bias)
        ctx.save_for_backward(x2, values)
        ctx.layer, ctx.x_shape, ctx.has_bias = layer, x.shape, bias is not None
        return y.to(x.dtype).reshape(*x.shape[:-1], layer.out_features)

    @staticmethod
    def backward(ctx, dy):
        x2, values = ctx.saved_tensors
        layer = ctx.layer
        dy2 = _flat(dy, layer.out_features)
        grad_x = grad_values = grad_bias = None
        shape_t = (layer.in_features, layer.out_features)
        if ctx.needs_input_grad[0]:
            # index_select: 0.6x the time of values[perm] on the CPU (a gather of every kept weight, per step)
            values_t = values.index_select(0, layer.perm)
            csr_t = CSR(layer.crow_t, layer.col_t, values_t, shape_t, layer.kernel_cache_t)
            grad_x = _spmm2d(csr_t, dy2).to(x2.dtype).reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            pattern_t = CSR(layer.crow_t, layer.col_t, values, shape_t, layer.kernel_cache_t)  # values unused
            grad_values = _sddmm(layer.pattern(values), dy2, x2, (pattern_t, layer.perm)).to(values.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = dy2.float().sum(0).to(dy.dtype)
        return grad_x, grad_values, grad_bias, None


class SparseLinear(nn.Module):
    """nn.Linear with a fixed sparsity pattern: parameters `values` (nnz,) and `bias`."""

    def __init__(self, csr, bias=None):
        super().__init__()
        self.out_features, self.in_features = csr.shape
        self.values = nn.Parameter(csr.values.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        csr_t, perm = transpose_plan(csr)
        # the pattern: buffers, so .to(device) and state_dict carry it. Column indices are int16
        # when the matrix is narrow enough (every GPT layer here): the CPU kernel then streams
        # 6 bytes per nonzero instead of 8, and generation is bound by exactly that stream
        index = torch.int16 if max(csr.shape) <= torch.iinfo(torch.int16).max else torch.int32
        self.register_buffer("crow", csr.crow.clone())
        self.register_buffer("col", csr.col.to(index))
        self.register_buffer("crow_t", csr_t.crow)
        self.register_buffer("col_t", csr_t.col.to(index))
        self.register_buffer("perm", perm.int())  # int32: half the bytes of argsort's int64, nnz < 2**31
        # the kernels' per-pattern plans for W and W.T (see CSR.cache), kept across steps
        self.kernel_cache, self.kernel_cache_t = {}, {}

    @classmethod
    def from_linear(cls, linear, mask=None):
        """From an nn.Linear; the pattern is `mask` (True = kept) or else the weight's nonzeros."""
        return cls(to_csr(linear.weight, mask), linear.bias)

    def pattern(self, values):
        """The CSR the kernels take: this layer's pattern (int16 or int32 columns) with `values`."""
        return CSR(self.crow, self.col, values, (self.out_features, self.in_features), self.kernel_cache)

    def csr(self):
        """The weight as a CSR in the documented format (int32 columns)."""
        return CSR(self.crow, self.col.int(), self.values.detach(), (self.out_features, self.in_features))

    def dense_weight(self):
        return to_dense(self.csr())

    def to_linear(self):
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.dense_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def forward(self, x):
        values = self.values  # each module attribute read goes through nn.Module.__getattr__: read once
        if torch.is_grad_enabled() and (x.requires_grad or values.requires_grad):
            return _CSRLinearFn.apply(x, values, self.bias, self)
        # inference (generation): skip the autograd bookkeeping, it costs more than a small matmul.
        # A token or a few in fp32 on the CPU go straight to the kernel: the general path's Python (a
        # CSR object, dtype casts, reshapes; ~15 us) is a third of a 768 x 768 product at 75 %, and even
        # this path's checks, kept to plain reads, are 2-3 % of a generated token (72 products)
        k = self.in_features
        if x.is_cpu and x.dtype is values.dtype is torch.float32 and x.numel() < 8 * k and x.shape[-1] == k \
                and not triton_on_cpu:
            ext = cpu.extension()
            if ext is not None:
                crow, col = self.crow, self.col
                bits = cpu.bitmap(ext, crow, col, k, self.kernel_cache)
                return ext.spmm(crow, col, values, self.bias, x, self.out_features, None, bits)
        return csr_matmul(self.pattern(values.detach()), x, None if self.bias is None else self.bias.detach())

    def extra_repr(self):
        nnz = self.values.numel()
        return (f"in_features={self.in_features}, out_features={self.out_features}, nnz={nnz}, "
                f"density={nnz / (self.in_features * self.out_features):.3f}")


def _swap(model, param_name, make):
    """Replace the module owning `param_name` ('a.b.c.weight') by make(old_module)."""
    path = param_name.rsplit(".", 1)[0]
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, make(getattr(parent, child)))


@torch.no_grad()
def to_sparse_model(model, masks=None):
    """
    In place: each of the six block matrices becomes a SparseLinear holding only its kept weights.
    masks: {param name: bool mask} as made by sparsity.make_masks; None = sparsify every
    sparsifiable matrix on its current nonzeros. Returns the model.
    """
    if masks is None:
        from sparsity import sparsifiable
        masks = {name: None for name in sparsifiable(model)}
    for name, mask in masks.items():
        _swap(model, name, lambda lin: SparseLinear.from_linear(lin, mask))
    return model


@torch.no_grad()
def to_dense_model(model):
    """In place: every SparseLinear back to an nn.Linear (zeros off the pattern). Returns the model."""
    names = [n for n, m in model.named_modules() if isinstance(m, SparseLinear)]
    for name in names:
        _swap(model, name + ".weight", lambda sl: sl.to_linear())
    return model


# -----------------------------------------------------------------------------
# checkpoints in the masked format: dense-shaped weights and optimizer moments, zeros off the pattern


def dense_state_dict(model):
    """model.state_dict() as the masked model has it: each SparseLinear as `weight` (zeros off its
    pattern) and `bias`, its pattern buffers left out."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, SparseLinear):
            for key in [k for k in state if k.startswith(name + ".")]:
                del state[key]
            state[name + ".weight"] = module.dense_weight()
            if module.bias is not None:
                state[name + ".bias"] = module.bias.detach()
    return state


def _values_owners(model, optimizer):
    """{index in optimizer.state_dict() numbering: SparseLinear whose `values` it is}."""
    owner = {id(m.values): m for m in model.modules() if isinstance(m, SparseLinear)}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {i: owner[id(p)] for i, p in enumerate(params) if id(p) in owner}


def _convert_state(state, owners, fn):
    out = {**state, "state": dict(state["state"])}
    for i, module in owners.items():
        if i in out["state"]:
            out["state"][i] = {k: fn(module, v) if torch.is_tensor(v) and v.dim() >= 1 else v
                               for k, v in out["state"][i].items()}
    return out


def dense_optimizer_state(state, model, optimizer):
    """optimizer.state_dict() of a model with SparseLinear layers, with each `values` moment scattered
    into the (out, in) shape the masked model's weight has. The parameter numbering is already the
    masked model's: a SparseLinear's `values` sits where nn.Linear's `weight` does."""
    scatter = lambda m, v: to_dense(CSR(m.crow, m.col.int(), v.detach(), (m.out_features, m.in_features)))
    return _convert_state(state, _values_owners(model, optimizer), scatter)


def sparse_optimizer_state(state, model, optimizer):
    """The inverse of dense_optimizer_state: dense-shaped moments gathered at each layer's pattern."""
    def gather(m, v):
        if v.shape != (m.out_features, m.in_features):
            return v  # already the layer's own (nnz,) moment
        rows = CSR(m.crow, m.col, m.values, (m.out_features, m.in_features)).row_ids()
        return v[rows.to(v.device), m.col.long().to(v.device)]
    return _convert_state(state, _values_owners(model, optimizer), gather)
