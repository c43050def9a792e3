"""Gated path lifting: run an unmodified model as PX's surrogate networks (docs/px.md sections 3-5).

Every nonlinearity is written `y = G(u) * u` with a non-negative gate `G` recorded on the real network
(the secant gate `phi(u)/u`; 0/1 for ReLU). A `torch.overrides.TorchFunctionMode` intercepts the ops by
identity (no model source is edited, no global is patched) and runs one of four passes:

- ``record``:     the real network; every gate is pushed on a queue in call order.
- ``replay``:     the real parameters with the recorded gates as constants (reproduces the logits).
- ``activation``: surrogate A, the data term: gates replaced by gate², softmax by T * A², LayerNorm by its
                  recorded 1/sigma² times |centering|, max-pool by the recorded argmax.
- ``kernel``:     surrogate K, the path kernel: gates removed (identity), softmax by uniform 1/T,
                  LayerNorm by |centering|, max-pool by a sum over the window.

Parameters are substituted with `torch.func.functional_call`, so the caller's model is never modified.

Numerics: products of many fan-ins over- or underflow float32 (ResNet-20's data term reaches ~1e40).
Values are rescaled by powers of two (exact in floating point) at *cuts*, tensors that every
input-to-output path crosses (found once by tracing the op graph), so every path and hence every
output is scaled by the same factor and the ranking is untouched; the factor is undone in float64.
"""

import math
from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from ._dtypes import model_dtype
from .batches import iter_batches, logits_of
from .errors import ModelError, StaleStructure
from .targets import NORM_MODULES, PRUNABLE_MODULES

_RELU = {F.relu, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_}
_ACTIVATIONS = {
    F.leaky_relu, F.leaky_relu_, F.hardtanh, F.hardtanh_, F.relu6, F.gelu, F.silu, F.mish, F.hardswish,
    F.elu, F.elu_, F.celu, F.selu, torch.tanh, torch.tanh_, Tensor.tanh, Tensor.tanh_,
}
# Outputs in [0, 1] that multiply another path (squeeze-excitation, hand-written swish): pure gates.
_GATES = {torch.sigmoid, torch.sigmoid_, Tensor.sigmoid, Tensor.sigmoid_, F.sigmoid, F.hardsigmoid}
_SOFTMAX = {F.softmax, torch.softmax, Tensor.softmax}
_SDPA = {F.scaled_dot_product_attention}
_LAYER_NORM = {F.layer_norm}
_GROUP_NORM = {F.group_norm}
_BATCH_NORM = {F.batch_norm}
_MAX_POOL = {F.max_pool2d, F.max_pool2d_with_indices}
_CONV = {F.conv1d, F.conv2d, F.conv3d}
_INPLACE_WRITES = {Tensor.__setitem__}
# ops that only reshape or cast a parameter (looked through when deciding whether it multiplies or adds)
_RESHAPES = {Tensor.reshape, Tensor.view, Tensor.view_as, Tensor.expand, Tensor.expand_as, Tensor.unsqueeze,
             Tensor.squeeze, Tensor.permute, Tensor.transpose, Tensor.flatten, Tensor.contiguous, Tensor.to,
             Tensor.type_as, Tensor.float, Tensor.__getitem__, torch.reshape, torch.unsqueeze, torch.squeeze,
             torch.flatten, torch.transpose, torch.permute}
_MULTIPLY = {torch.mul, torch.multiply, Tensor.mul, Tensor.mul_, Tensor.__mul__, Tensor.__rmul__, Tensor.__imul__}


@dataclass
class SurrogateOptions:
    """How the surrogates treat the ops whose rule is an option (docs/px.md section 5)."""

    power: int = 2                       # weights enter K as |theta|^power (2: PX, 1: SynFlow, 0: structure)
    batchnorm: str = "eval"              # "eval": fixed per-channel map; "batch": authors' batch statistics
    batchnorm_activation: str = "abs"    # BN scale in surrogate A: "abs" (|gamma/sqrt(var+eps)|) or "one"
    layernorm: str = "gate"              # LayerNorm/GroupNorm: "gate" (docs/px.md 5.5) or "identity" (gamma only)


def _arg(args, kwargs, index, name, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _is_inplace(func, args, kwargs) -> bool:
    """Whether an activation writes into its input: a trailing-underscore op (`relu_`), `inplace=True`, or
    `inplace` passed positionally (`F.relu(x, True)`, `F.leaky_relu(x, 0.1, True)`): the only `True` an
    activation takes after its input is its inplace flag."""
    return getattr(func, "__name__", "").endswith("_") or kwargs.get("inplace") is True or any(
        a is True for a in args[1:]
    )


def _secant_gate(u: Tensor, y: Tensor) -> Tensor:
    """phi(u)/u, and 0 where u == 0 (every supported activation has phi(0) = 0, so 0/0 is the only NaN)."""
    return torch.div(y, u).nan_to_num_(nan=0.0)


def _abs_centering(u: Tensor, dims: tuple[int, ...]) -> Tensor:
    """|I - 11ᵀ/d| applied over `dims`: the centering map with its entries made non-negative.

    I - 11ᵀ/d has 1 - 1/d on the diagonal and -1/d elsewhere, so its absolute value is 11ᵀ/d + (1 - 2/d) I:
    u (1 - 2/d) + mean(u), computed without forming the d x d matrix."""
    d = math.prod(u.shape[i] for i in dims)
    return u * (1.0 - 2.0 / d) + u.mean(dims, keepdim=True)


def _tensors(args, kwargs):
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, Tensor))


class GatedPass(TorchFunctionMode):
    """One pass of gated path lifting; see the module docstring for the four kinds."""

    def __init__(self, kind: str, gates: deque, options: SurrogateOptions | None = None,
                 cuts: dict[int, str] | None = None, exponents: dict[int, int] | None = None):
        super().__init__()
        assert kind in ("record", "replay", "activation", "kernel")
        self.kind, self.gates, self.options = kind, gates, options or SurrogateOptions()
        # `(cuts or {}) if ... else {}`: only the surrogates rescale; the real-network passes never do
        self.cuts = (cuts or {}) if kind in ("activation", "kernel") else {}
        self.exponents = exponents if exponents is not None else {}
        self.exponent = 0      # total power of two applied along every path in this pass
        self.ops: list = []    # the op sequence, checked against the trace the cuts came from

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        index = len(self.ops)
        self.ops.append(func)
        if func in _RELU or func in _ACTIVATIONS:
            out = self._activation(func, args, kwargs, relu=func in _RELU)
        elif func in _GATES:
            out = self._gate(func, args, kwargs)
        elif func in _SOFTMAX:
            out = self._softmax(func, args, kwargs)
        elif func in _SDPA:
            out = self._attention(func, args, kwargs)
        elif func in _LAYER_NORM or func in _GROUP_NORM:
            out = self._norm(func, args, kwargs)
        elif func in _BATCH_NORM:
            out = self._batch_norm(func, args, kwargs)
        elif func in _MAX_POOL:
            out = self._max_pool(func, args, kwargs)
        elif (func in _CONV or func is F.linear) and _is_constant(_arg(args, kwargs, 1, "weight"),
                                                                  check_values=self.kind == "activation"):
            out = _constant_weight_layer(func, args, kwargs)
        else:
            out = func(*args, **kwargs)
        if index in self.cuts:
            out = self._rescale(index, func, args, kwargs, out)
        return out

    # -- gate queue -------------------------------------------------------------------------------
    def _push(self, func, gate):
        self.gates.append((func, gate))

    def _pop(self, func):
        if not self.gates:
            raise ModelError(f"the model called {getattr(func, '__name__', func)} more often than when its gates were "
                             "recorded; data-dependent control flow is not supported by PX's surrogates")
        recorded, gate = self.gates.popleft()
        if recorded is not func:
            raise ModelError(f"op sequence changed between passes: recorded {getattr(recorded, '__name__', recorded)}, "
                             f"now {getattr(func, '__name__', func)}; PX's surrogates need a fixed op order")
        return gate

    # -- rules --------------------------------------------------------------------------------------
    def _activation(self, func, args, kwargs, relu):
        u = _arg(args, kwargs, 0, "input")
        inplace = _is_inplace(func, args, kwargs)
        if self.kind == "record":
            before = u.clone() if inplace and not relu else u
            y = func(*args, **kwargs)
            # Gates are kept in the activations' float dtype: multiplying by a bool tensor is ~20x slower
            # on CPU. ReLU's gate is sign(y) in {0, 1} (read from the output, so in-place ReLU works too).
            self._push(func, torch.sign(y) if relu else _secant_gate(before, y))
            return y
        if self.kind == "kernel":
            return u
        gate = self._pop(func)
        if self.kind == "activation" and not relu:
            gate = gate * gate
        return u.mul_(gate) if inplace else u * gate

    def _gate(self, func, args, kwargs):
        u = _arg(args, kwargs, 0, "input")
        inplace = _is_inplace(func, args, kwargs)
        if self.kind == "record":
            y = func(*args, **kwargs)
            self._push(func, y.clone() if inplace else y)
            return y
        if self.kind == "kernel":
            value = torch.ones_like(u)
        else:
            gate = self._pop(func)
            value = gate * gate if self.kind == "activation" else gate
        return u.copy_(value) if inplace else value.to(u.dtype)

    def _softmax(self, func, args, kwargs):
        u = _arg(args, kwargs, 0, "input")
        dim = _arg(args, kwargs, 1, "dim")
        dim = -1 if dim is None else dim
        dtype = _arg(args, kwargs, 3 if func is F.softmax else 2, "dtype") or u.dtype
        if self.kind == "record":
            y = func(*args, **kwargs)
            self._push(func, y)
            return y
        size = u.shape[dim]
        if self.kind == "kernel":   # attention A -> uniform 1/T; the factor T moves to surrogate A
            return torch.full(u.shape, 1.0 / size, dtype=dtype, device=u.device)
        probs = self._pop(func)
        return (probs * probs * size if self.kind == "activation" else probs).to(dtype)

    def _attention(self, func, args, kwargs):
        q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
        # Uniform attention: the mean of V over *all* keys, for every query. attn_mask and is_causal are
        # ignored on purpose: surrogate K's attention is the constant 1/T over every key (PX's kernel rule), as
        # in `_softmax`; a masked key still gets its weights scored through the other passes.
        if self.kind == "kernel":
            mean = v.mean(-2, keepdim=True)
            return mean.expand(*mean.shape[:-2], q.shape[-2], v.shape[-1]).clone()
        if kwargs.get("enable_gqa") and v.shape[-3] != q.shape[-3]:
            v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
        if self.kind == "record":   # attention computed once, by the math backend (eval: no dropout)
            probs = _attention_probs(q, k, args, kwargs)
            self._push(func, probs)
            return probs.to(v.dtype) @ v
        probs = self._pop(func)
        if self.kind == "activation":
            probs = probs * probs * k.shape[-2]
        return probs.to(v.dtype) @ v

    def _norm(self, func, args, kwargs):
        u = _arg(args, kwargs, 0, "input")
        if func in _LAYER_NORM:
            shape = _arg(args, kwargs, 1, "normalized_shape")
            weight, bias, eps = (_arg(args, kwargs, i, n, d) for i, n, d in ((2, "weight", None), (3, "bias", None), (4, "eps", 1e-5)))
            dims = tuple(range(-len(shape), 0))
            grouped, channel_shape = u, None
        else:
            groups = _arg(args, kwargs, 1, "num_groups")
            weight, bias, eps = (_arg(args, kwargs, i, n, d) for i, n, d in ((2, "weight", None), (3, "bias", None), (4, "eps", 1e-5)))
            dims = (-1,)
            grouped, channel_shape = u.reshape(u.shape[0], groups, -1), (1, -1) + (1,) * (u.dim() - 2)
        if self.kind == "record":
            if func in _LAYER_NORM:   # the kernel returns 1/sigma with the output: no second pass over u
                y, _, inv_std = torch.native_layer_norm(u, shape, weight, bias, eps)
            else:
                y = func(*args, **kwargs)
                inv_std = torch.rsqrt(grouped.float().var(dims, unbiased=False, keepdim=True) + eps)
            self._push(func, inv_std.to(u.dtype))
            return y
        if self.kind == "replay":
            y = (grouped - grouped.mean(dims, keepdim=True)) * self._pop(func)
            shift = bias
        elif self.options.layernorm == "identity":   # ablation: the norm reduced to its gamma
            if self.kind == "activation":
                self._pop(func)
            y, shift = grouped, None
        elif self.kind == "activation":
            inv_std = self._pop(func)
            y, shift = _abs_centering(grouped, dims) * inv_std * inv_std, None
        else:
            y, shift = _abs_centering(grouped, dims), None
        y = y.reshape(u.shape)
        if weight is not None:
            y = y * (weight if channel_shape is None else weight.view(channel_shape))
        if shift is not None:
            y = y + (shift if channel_shape is None else shift.view(channel_shape))
        return y

    def _batch_norm(self, func, args, kwargs):
        if self.kind in ("record", "replay"):
            return func(*args, **kwargs)
        u, mean, var, weight, bias = (_arg(args, kwargs, i, n) for i, n in
                                      enumerate(("input", "running_mean", "running_var", "weight", "bias")))
        eps = _arg(args, kwargs, 7, "eps", 1e-5)
        if self.options.batchnorm == "batch" or var is None:   # authors' convention: batch statistics
            return F.batch_norm(u, None, None, weight, bias, True, 0.0, eps)
        scale = torch.rsqrt(var.to(u.dtype) + eps)
        if self.kind == "kernel":
            factor = scale ** self.options.power
        else:
            factor = scale.abs() if self.options.batchnorm_activation == "abs" else torch.ones_like(scale)
        if weight is not None:
            factor = factor * weight
        return u * factor.view((1, -1) + (1,) * (u.dim() - 2))

    def _max_pool(self, func, args, kwargs):
        u = _arg(args, kwargs, 0, "input")
        kernel = _arg(args, kwargs, 1, "kernel_size")
        stride = _arg(args, kwargs, 2, "stride") or kernel
        padding, dilation, ceil_mode = (_arg(args, kwargs, i, n, d) for i, n, d in
                                        ((3, "padding", 0), (4, "dilation", 1), (5, "ceil_mode", False)))
        with_indices = func is F.max_pool2d_with_indices or _arg(args, kwargs, 6, "return_indices", False)
        if self.kind == "record":
            out, indices = F.max_pool2d_with_indices(u, kernel, stride, padding, dilation, ceil_mode)
            self._push(func, indices)
            return (out, indices) if with_indices else out
        if self.kind == "kernel":   # every window element is on a path: sum over the window
            if dilation not in (1, (1, 1), [1, 1]):
                raise ModelError("PX's kernel surrogate supports max-pool with dilation 1 only")
            out, indices = F.avg_pool2d(u, kernel, stride, padding, ceil_mode, True, 1), None
        else:                       # replay the recorded argmax
            indices = self._pop(func)
            out = u.flatten(-2).gather(-1, indices.flatten(-2)).view(indices.shape)
        return (out, indices) if with_indices else out

    # -- rescaling at cuts ------------------------------------------------------------------------------
    def _rescale(self, index, func, args, kwargs, out):
        if not isinstance(out, Tensor) or getattr(func, "__name__", func) != self.cuts[index]:
            raise StaleStructure(f"op sequence changed since tracing at op {index} "
                                 f"({getattr(func, '__name__', func)} vs {self.cuts[index]})")
        if index not in self.exponents:    # decided on the first batch, then fixed for the round
            peak = 0.0
            if out.numel():
                low, high = torch.aminmax(out.detach())
                peak = max(-low.item(), high.item())
            exponent = -math.frexp(peak)[1] if peak > 0 and math.isfinite(peak) else 0
            # Rescale only far from 1: float32 keeps its relative precision over its whole range, so
            # values may drift 2^±_DRIFT between rescales and still leave 2^90 of headroom.
            self.exponents[index] = exponent if abs(exponent) > _DRIFT else 0
        exponent = self.exponents[index]
        if exponent == 0:
            return out
        self.exponent += exponent
        if (args and out is args[0]) or (not torch.is_grad_enabled() and _owns_storage(out, args, kwargs)):
            return out.mul_(2.0 ** exponent)   # in-place op, or a fresh tensor nothing else sees yet
        return out * 2.0 ** exponent


_DRIFT = 32


def _is_constant(weight, check_values: bool = False) -> bool:
    """Whether `weight` is one value broadcast to its shape (a `_constant`, e.g. surrogate A's unpruned 1s),
    or, with `check_values`, a materialised tensor of one value (a layer that multiplies its own mask into
    the weight before the op, as the authors' layers do). Comparing the weights costs far less than the op."""
    if not isinstance(weight, Tensor) or weight.numel() <= 1:
        return False
    if not any(weight.stride()):
        return True
    if not check_values:
        return False
    flat = weight.reshape(-1)   # 64 spread-out entries first: a masked or trained weight fails there, cheaply
    return bool((flat[::max(1, flat.numel() // 64)] == flat[0]).all()) and bool((flat == flat[0]).all())


def _constant_weight_layer(func, args, kwargs) -> Tensor:
    """Conv or Linear with a constant weight c, without the dense product: every output channel of a group
    is c times the same sum of its input channels over the window. Surrogate A's unpruned layers have
    c = 1, so this turns most of its cost into one sum per group (same values, summed in another order)."""
    x, weight, bias = (_arg(args, kwargs, i, n) for i, n in enumerate(("input", "weight", "bias")))
    value = weight[(0,) * weight.dim()]
    if func is F.linear:
        out = (x.sum(-1, keepdim=True) * value).expand(*x.shape[:-1], weight.shape[0])
    else:
        groups = _arg(args, kwargs, 6, "groups", 1)
        if x.dim() != weight.dim() or weight.shape[1] == weight.shape[0] // groups == 1:
            return func(*args, **kwargs)   # unbatched input or depthwise: nothing to share
        stride, padding, dilation = (_arg(args, kwargs, i, n, d) for i, n, d in
                                     ((3, "stride", 1), (4, "padding", 0), (5, "dilation", 1)))
        summed = x.unflatten(1, (groups, -1)).sum(2)
        window = torch.ones((groups, 1, *weight.shape[2:]), dtype=x.dtype, device=x.device) * value
        out = func(summed, window, None, stride, padding, dilation, groups)
        out = out.unsqueeze(2).expand(out.shape[0], groups, weight.shape[0] // groups, *out.shape[2:]).flatten(1, 2)
    if bias is not None:
        return out + (bias if func is F.linear else bias.view(-1, *[1] * (out.dim() - 2)))
    return out.contiguous()


def _owns_storage(out: Tensor, args, kwargs) -> bool:
    """Whether `out` has storage of its own, shared with no input (not a view, not an input returned)."""
    if out._base is not None:
        return False
    pointer = out.untyped_storage().data_ptr()
    return all(t.untyped_storage().data_ptr() != pointer for t in _tensors(args, kwargs))


def _attention_probs(q, k, args, kwargs) -> Tensor:
    """The softmax probabilities `scaled_dot_product_attention` uses internally (math backend)."""
    mask, is_causal, scale = (_arg(args, kwargs, i, n, d) for i, n, d in
                              ((3, "attn_mask", None), (5, "is_causal", False), (6, "scale", None)))
    if kwargs.get("enable_gqa") and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    return logits.softmax(-1)


# --- tracing the op graph to find cuts ----------------------------------------------------------------

class _Tracer(TorchFunctionMode):
    """Runs the model plainly, logging which op produced each tensor from which tensors, and the first op
    that uses each parameter (looking through reshapes and casts)."""

    def __init__(self, x: Tensor, params: dict[str, Tensor]):
        super().__init__()
        self.param_of = {id(t): name for name, t in params.items()}   # includes reshaped views of them
        self.first_use: dict[str, object] = {}
        self.node_of = {id(x): 0}
        self.site = [None]            # node -> (op index, op name); None for the input
        self.edges: list[tuple[int, int]] = []
        self.alive = [x]              # keep tensors alive so that id() is never reused during the trace
        self.ops: list = []           # the op sequence (GatedPass checks a cached trace against it)

    def _node(self, tensor, inputs, site):
        node = len(self.site)
        self.site.append(site)
        self.edges.extend((i, node) for i in inputs)
        self.node_of[id(tensor)] = node
        self.alive.append(tensor)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        index = len(self.ops)
        self.ops.append(func)
        out = func(*args, **kwargs)
        for t in _tensors(args, kwargs):
            param = self.param_of.get(id(t))
            if param is None:
                continue
            if func in _RESHAPES and isinstance(out, Tensor):
                self.param_of[id(out)] = param
                self.alive.append(out)
            else:
                self.first_use.setdefault(param, func)
        inputs = {self.node_of[id(t)] for t in _tensors(args, kwargs) if id(t) in self.node_of}
        name = getattr(func, "__name__", str(func))
        if isinstance(out, Tensor):
            self._node(out, inputs, (index, name))
        elif isinstance(out, (tuple, list)):
            for t in out:
                if isinstance(t, Tensor):
                    self._node(t, inputs, None)     # parts of a tuple: connected, never rescaled
        elif func in _INPLACE_WRITES and inputs:
            self._node(args[0], inputs, None)
        return out


@dataclass(frozen=True)
class Trace:
    """What one traced forward pass tells the surrogates: where to rescale, and the op sequence."""

    cuts: dict[int, str]      # op index -> op name of the cuts
    ops: list                 # every op called, in order
    multiplied: frozenset = frozenset()   # parameters whose first use multiplies (scales on the path)

    @property
    def has_gates(self) -> bool:
        """Whether some op multiplies two data-dependent paths (then gate-only weights may exist)."""
        return any(op in _GATES or op in _SOFTMAX or op in _SDPA for op in self.ops)

    @property
    def has_attention(self) -> bool:
        """Whether the model computes softmax attention (a transformer, for `pruning.auto_choice`)."""
        return any(op in _SOFTMAX or op in _SDPA for op in self.ops)


def trace_of(model: nn.Module, example: Tensor) -> Trace:
    """`find_cuts` on the model's real weights and one image of `example`. Computed once per `prune` or
    `score` call (by the criterion's `scorer`) and passed down; every pass checks its op sequence against
    it and raises `StaleStructure` on a difference."""
    return find_cuts(model, example[:1], {n: p.detach() for n, p in model.named_parameters()})


def find_cuts(model: nn.Module, x: Tensor, params: dict[str, Tensor]) -> Trace:
    """The ops whose single-tensor output every input-to-logits path crosses (cuts), by tracing one
    forward pass.

    In a topological order, a node is crossed by every path iff no edge between two path nodes jumps
    over it; the op order of one forward pass is such an order.

    The sweep counts, for every node, the edges that jump over it with a difference array: an edge a -> b
    adds 1 at a + 1 and removes it at b, so the running sum at a node is the number of edges spanning it,
    in O(nodes + edges) instead of marking every node under every edge.
    """
    trace = _Tracer(x, params)
    with torch.no_grad(), trace:
        logits = logits_of(functional_call(model, params, (x,), strict=False))
    multiplied = frozenset(name for name, func in trace.first_use.items() if func in _MULTIPLY)
    output = trace.node_of.get(id(logits))
    if output is None:
        return Trace({}, trace.ops, multiplied)
    successors, predecessors = {}, {}
    for a, b in trace.edges:
        successors.setdefault(a, []).append(b)
        predecessors.setdefault(b, []).append(a)
    forward, backward = _reach(0, successors), _reach(output, predecessors)
    on_path = forward & backward
    jumps = [0] * (len(trace.site) + 1)
    for a, b in trace.edges:
        if a in on_path and b in on_path and b - a > 1:
            jumps[a + 1] += 1
            jumps[b] -= 1
    cuts, covered = {}, 0
    for node in range(len(trace.site)):
        covered += jumps[node]
        site = trace.site[node]
        if covered == 0 and node in on_path and 0 < node < output and site is not None:
            cuts[site[0]] = site[1]
    return Trace(cuts, trace.ops, multiplied)


def _reach(start, neighbours) -> set[int]:
    seen, stack = {start}, [start]
    while stack:
        for nxt in neighbours.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


# --- parameters of each pass ----------------------------------------------------------------------------

def parameter_roles(model: nn.Module, targets: list[str], head: list[str], options: SurrogateOptions,
                    trace: Trace, head_is_path: bool = False) -> dict[str, str]:
    """Role of every parameter in the surrogates (docs/px.md sections 5.1, 6).

    target: pruned weight (K: |theta|^p * mask, A: mask); path: other multiplicative weight, such as a
    non-target Linear/Conv weight, a norm's gamma or a layer-scale vector (K: |theta|^p, A: 1); scale: an
    eval-mode BatchNorm's gamma under batchnorm_activation="abs" (K: |theta|^p, A: |theta|);
    head: kept real and signed in both (authors' convention); real: kept as is; zero: additive terms
    (biases, tokens, position embeddings, norm shifts), dropped from both surrogates.
    A parameter outside Linear/Conv/norm modules is a path scale (a layer scale, a shortcut's per-channel
    weight) when the op that first uses it, in `trace`, multiplies; otherwise it adds.
    """
    roles = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, PRUNABLE_MODULES) or isinstance(module, NORM_MODULES):
            batch_norm = isinstance(module, nn.modules.batchnorm._NormBase)
            keep_real = options.batchnorm == "batch" and batch_norm
            scale = "scale" if batch_norm and options.batchnorm_activation == "abs" else "path"
            for name, _ in module.named_parameters(recurse=False):
                roles[prefix + name] = "real" if keep_real else (scale if name == "weight" else "zero")
    for name, _ in model.named_parameters():
        if name not in roles:
            roles[name] = "path" if name in trace.multiplied else "zero"
    for name in head:
        roles[name] = "head"
    for name in targets:
        roles[name] = "target" if (head_is_path or name not in head) else "head"
    if head_is_path:
        for name in head:
            if roles[name] == "head":
                roles[name] = "path" if name.endswith("weight") else "zero"
    return roles


def pass_parameters(model: nn.Module, kind: str, roles: dict[str, str], masks: dict[str, Tensor],
                    dtype: torch.dtype, power: int = 2) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Parameters and buffers for one pass, and the leaves to differentiate (kernel pass only).

    kind: "real" (record/replay), "activation" or "kernel". The kernel pass's leaves are |theta|^power
    for targets and the signed theta for a head among the targets.
    """
    params, leaves = {}, {}
    for name, param in model.named_parameters():
        theta = param.detach().to(dtype)
        role = roles.get(name, "real")
        if kind == "real" or role == "real":
            value = theta
        elif role == "zero":
            value = _constant(theta, 0.0)
        elif role == "head":
            if kind == "kernel" and name in masks:
                theta = leaves[name] = theta.clone().requires_grad_(True)
            value = theta
        elif kind == "activation" and role == "scale":
            value = theta.abs()
        elif kind == "activation" or (power == 0 and role != "target"):
            value = _constant(theta, 1.0)
        else:
            value = torch.ones_like(theta) if power == 0 else theta.square() if power == 2 else theta.abs() ** power
            if role == "target":
                # the leaf is |theta|^p with the mask already applied: one weight-sized tensor less, and the
                # same scores (leaf * |grad| is 0 at a pruned entry either way)
                if name in masks:
                    value.masked_fill_(~masks[name], 0.0)
                params[name] = leaves[name] = value.requires_grad_(True)
                continue
        mask = masks.get(name)
        if name in leaves:   # the head among the targets: its mask is part of the differentiated graph
            value = value * mask.to(dtype)
        elif mask is not None and not bool(mask.all()):
            value = torch.where(mask, value, 0.0)   # one pass over the weight (a product would take two)
        params[name] = value
    if dtype != model_dtype(model):
        for name, buffer in model.named_buffers():
            params[name] = buffer.to(dtype) if buffer.is_floating_point() else buffer
    return params, leaves


def _constant(like: Tensor, value: float) -> Tensor:
    """A read-only constant shaped like `like` without allocating it (a stride-0 view)."""
    return torch.full((), value, dtype=like.dtype, device=like.device).expand(like.shape)


# --- the two terms of PX ----------------------------------------------------------------------------------

def run_pass(model: nn.Module, x: Tensor, params: dict[str, Tensor], mode: GatedPass,
             traced_ops: list | None = None) -> Tensor:
    """The model's logits under `mode`; raises `StaleStructure` if its ops differ from `traced_ops`."""
    with mode:
        logits = logits_of(functional_call(model, params, (x,), strict=False))
    if traced_ops is not None and mode.ops != traced_ops:
        raise StaleStructure(f"{type(model).__name__}'s op sequence differs from the trace its cuts were found on: "
                             "its control flow depends on its weights or masks, which PX's surrogates cannot follow")
    return logits


@torch.no_grad()
def data_term(model, batches, real_params, activation_params, options, trace: Trace, dtype,
              output_bias: Tensor | None = None) -> tuple[Tensor, int]:
    """C = sum_n c_n (E1), in float64, and the power of two it carries from rescaling.

    output_bias: the head's bias, left out of `activation_params` and added to the logits here, scaled by
    the same power of two as the paths (the rescaling at cuts scales the features, never a bias after them).

    Gates are recorded on the real network and consumed by surrogate A batch by batch, so the gates
    of the whole scoring set are never held at once. A record pass whose ops differ from `trace` raises
    `StaleStructure` before the cuts are used.
    """
    total, exponents, exponent = None, {}, None
    device = next(iter(real_params.values())).device
    for images, _ in iter_batches(batches, device):
        gates = deque()
        run_pass(model, images, real_params, GatedPass("record", gates, options), trace.ops)
        surrogate = GatedPass("activation", gates, options, trace.cuts, exponents)
        out = _with_bias(run_pass(model, images.to(dtype) ** 2, activation_params, surrogate), output_bias,
                         surrogate.exponent)
        if gates:
            raise ModelError(f"{len(gates)} recorded gates were not consumed by surrogate A; "
                             "the model's op sequence depends on its weights")
        if exponent is not None and surrogate.exponent != exponent:
            raise ModelError("rescaling differed between batches; please report this model")
        exponent = surrogate.exponent
        batch_sum = out.double().sum(0)
        total = batch_sum if total is None else total + batch_sum
    return total, exponent


def kernel_term(model, example, kernel_params, options, trace: Trace,
                output_bias: Tensor | None = None) -> tuple[Tensor, int]:
    """K(theta^2) (E1) on one all-ones input, with its power of two from rescaling; differentiable.
    output_bias: as in `data_term`."""
    dtype = next(iter(kernel_params.values())).dtype
    ones = torch.ones_like(example[:1], dtype=dtype)
    surrogate = GatedPass("kernel", deque(), options, trace.cuts)
    out = _with_bias(run_pass(model, ones, kernel_params, surrogate, trace.ops), output_bias, surrogate.exponent)
    return out[0], surrogate.exponent


def split_head_bias(params: dict[str, Tensor], roles: dict[str, str]) -> Tensor | None:
    """Take the head's real bias out of a pass's parameters (zeroed there) and return it, so that it can be
    added to the logits after the pass at the paths' scale (`output_bias`). None when the head has none."""
    names = [n for n, role in roles.items() if role == "head" and n.endswith("bias") and n in params]
    if not names:
        return None
    bias = sum(params[n] for n in names)
    for name in names:
        params[name] = _constant(params[name], 0.0)
    return bias


def _with_bias(logits: Tensor, bias: Tensor | None, exponent: int) -> Tensor:
    if bias is None:
        return logits
    bias = bias.to(logits.dtype).reshape(-1, *([1] * (logits.dim() - 2)))
    return logits + bias * 2.0 ** exponent
