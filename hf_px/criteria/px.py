"""PX, Path eXclusion (Iurada et al., CVPR 2024): keep the weights that carry the NTK trace bound.

    R = sum_k C_k K_k(theta^2),  C = sum_n c_n  (data term, surrogate A),  K (kernel term, surrogate K)
    S_j = theta_j^2 |dR / d(theta_j^2)|                                      (docs/px.md (1), (2))

The data enter only through C, so C is summed over all scoring batches first (no grad) and surrogate K
runs once, forward and backward, on a single all-ones input (docs/px.md section 3). That also makes PX
data-parallel: under torch.distributed each process scores its own shard and C is summed across processes.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._dtypes import compute_dtype, model_dtype
from ..batches import first_images
from ..distributed import sum_float64_across_processes
from ..surrogate import (SurrogateOptions, Trace, data_term, kernel_term, parameter_roles, pass_parameters,
                         split_head_bias, trace_of)
from .base import Criterion, make_criterion, register_method

GATE_ONLY_POLICIES = ("magnitude", "px-exact", "dense")


@register_method("px")
@dataclass
class PX(Criterion):
    """PX with the authors' conventions (docs/px.md sections 6, 11) and gated path lifting beyond ReLU (4, 5).

    head: "real" keeps the classifier's signed weights and bias in both surrogates and scores it by
        |dR/dtheta| theta^2 (the authors'); "path" treats it like any other layer (the pure bound E1).
    batchnorm: "eval" uses BN as the fixed per-channel map of eval mode (scale^2 in K); "batch"
        reproduces the authors' code (surrogates normalise by their own batch statistics).
    batchnorm_activation: an eval-mode BN's scale gamma/sqrt(var+eps) in surrogate A: "abs" uses its
        magnitude (the default: better on the trained EfficientNet-Lite0 of docs/results.md, and the same as
        "one" at initialisation, where var = 1 and gamma = 1), "one" replaces it by 1.
    layernorm: LayerNorm/GroupNorm in the surrogates: "gate" (docs/px.md 5.5: gamma^2 and the fixed map |centering|
        on the path in K; the recorded 1/sigma^2 and |centering| in A) or "identity" (only gamma; an ablation).
    gate_only: weights that only feed a gate (W_Q/W_K, squeeze-excitation) lie on no path and would score
        0. "magnitude" ranks them by |theta| within their tensor and maps the ranks onto the quantiles of
        the path weights' PX scores (so they get about the global density); "px-exact" ranks them by
        px-exact instead; "dense" keeps them all.
    kernel_dtype: "auto" (float64 for float64 models, else float32 with power-of-two rescaling at cuts),
        "float32" or "float64".

    Under torch.distributed, give each process its own shard of the batches: PX sums its data term
    across processes (in float64), so every process gets the same scores, as one process would on all the
    batches (up to float rounding). With gate_only="px-exact" PX is not data-parallel (px-exact needs every
    image): give every process all the batches, as for px-exact; nothing is then summed across processes.
    """

    default_rounds = 100
    head: str = "real"
    batchnorm: str = "eval"
    batchnorm_activation: str = "abs"
    layernorm: str = "gate"
    gate_only: str = "magnitude"
    kernel_dtype: str = "auto"

    def __post_init__(self):
        self._check_choice("head", ("real", "path"))
        self._check_choice("batchnorm", ("eval", "batch"))
        self._check_choice("batchnorm_activation", ("one", "abs"))
        self._check_choice("layernorm", ("gate", "identity"))
        self._check_choice("gate_only", GATE_ONLY_POLICIES)
        self._check_choice("kernel_dtype", ("auto", "float32", "float64"))

    @property
    def data_parallel(self) -> bool:
        """Whether each process scores its own shard (see above): not when px-exact ranks the gate-only weights."""
        return self.gate_only != "px-exact"

    def score(self, model, batches, targets, masks, head, seed):
        return self.scorer(model, batches, targets, head, seed)(masks)

    def scorer(self, model, batches, targets, head, seed):
        """Round scoring for one `prune` call. The model's structure is found here, once: the traced op
        graph and its cuts, every parameter's role, the gate-only entries and their magnitude order."""
        example = first_images(batches, next(model.parameters()).device)[:1]
        options = SurrogateOptions(2, self.batchnorm, self.batchnorm_activation, self.layernorm)
        trace = trace_of(model, example)
        roles = parameter_roles(model, targets, head, options, trace, head_is_path=self.head == "path")
        gate_only = _gate_only_entries(model, example, targets, head, trace)
        order = _magnitude_order(model, gate_only) if self.gate_only == "magnitude" else {}

        def score_round(masks):
            scores = self._score(model, batches, targets, masks, example, options, trace, roles)
            if gate_only:
                self._fill_gate_only(scores, gate_only, order, model, batches, targets, masks, head, seed)
            return scores

        return score_round

    def _score(self, model, batches, targets, masks, example, options, trace, roles):
        dtype = compute_dtype(model)
        real, _ = pass_parameters(model, "real", roles, masks, model_dtype(model))
        activation, _ = pass_parameters(model, "activation", roles, masks, dtype)
        data, data_exponent = data_term(model, batches, real, activation, options, trace, dtype,
                                        output_bias=split_head_bias(activation, roles))
        del real, activation    # masked rounds hold weight-sized copies: free them before the kernel pass
        if self.data_parallel:   # each process holds its shard's data term (a no-op in one process)
            data, data_exponent = sum_float64_across_processes(data, data_exponent)

        kernel_dtype = self._kernel_dtype(model)
        kernel, leaves = pass_parameters(model, "kernel", roles, masks, kernel_dtype)
        with torch.enable_grad():
            kernel_out, kernel_exponent = kernel_term(model, example, kernel, options, trace,
                                                      output_bias=split_head_bias(kernel, roles))
            bound = (data.to(kernel_dtype) * kernel_out).sum()
            names = [n for n in targets if n in leaves]
            grads = torch.autograd.grad(bound, [leaves[n] for n in names], allow_unused=True)
        del kernel, kernel_out, bound
        params = dict(model.named_parameters())
        scores, seen = {}, set()
        for name, grad in zip(names, grads):
            leaf = leaves.pop(name).detach()
            if grad is None:
                scores[name] = torch.zeros_like(leaf)
                continue
            # the scores are written into the gradients' memory, unless autograd handed out a broadcast view
            # or one tensor for two leaves (their sum's gradient)
            if not grad.is_contiguous() or grad.untyped_storage().data_ptr() in seen:
                grad = grad.clone(memory_format=torch.contiguous_format)
            seen.add(grad.untyped_storage().data_ptr())
            if roles[name] == "head":   # signed real weight: |dR/dtheta| theta^2 (authors' head rule)
                scores[name] = grad.abs_().mul_(params[name].detach().to(kernel_dtype) ** 2)
            else:                         # leaf is theta^2: theta^2 |dR/d theta^2|  (E2), in the grad's memory
                scores[name] = grad.abs_().mul_(leaf)
        del grads
        return _unscale_(scores, data_exponent + kernel_exponent, model_dtype(model))

    def _kernel_dtype(self, model: nn.Module) -> torch.dtype:
        if self.kernel_dtype == "auto":
            return torch.float64 if model_dtype(model) == torch.float64 else torch.float32
        return getattr(torch, self.kernel_dtype)

    def _fill_gate_only(self, scores, gate_only, order, model, batches, targets, masks, head, seed):
        """Give gate-only entries scores on the path weights' scale (see `gate_only` above)."""
        quantiles = _path_score_quantiles(scores, gate_only, masks, targets)
        if self.gate_only == "dense" or quantiles.numel() == 0:
            for name, entries in gate_only.items():
                scores[name][entries & masks[name]] = torch.finfo(scores[name].dtype).max
            return
        if self.gate_only == "magnitude":   # |theta| is fixed during `prune`: its order was sorted once
            for name, positions in order.items():
                alive = positions[masks[name].flatten()[positions]]
                _place(scores[name].view(-1), alive, torch.arange(alive.numel(), dtype=torch.float64,
                                                                   device=alive.device), quantiles)
            return
        alive = {n: entries & masks[n] for n, entries in gate_only.items()}
        ranking = make_criterion("px-exact").score(model, batches, list(alive), masks, head, seed)
        for name, entries in alive.items():
            values = ranking[name][entries]
            ranks = torch.empty(values.numel(), dtype=torch.float64, device=values.device)
            ranks[values.argsort()] = torch.arange(values.numel(), dtype=torch.float64, device=values.device)
            _place(scores[name].view(-1), entries.flatten().nonzero().squeeze(1), ranks, quantiles)


def _place(flat_scores: Tensor, positions: Tensor, ranks: Tensor, quantiles: Tensor) -> None:
    """Write into `flat_scores[positions]` the quantile of the path scores at each entry's rank among them."""
    if positions.numel() == 0:
        return
    position = ((ranks + 0.5) / positions.numel() * quantiles.numel()).long().clamp(max=quantiles.numel() - 1)
    flat_scores[positions] = quantiles[position].to(flat_scores.dtype)


def _magnitude_order(model: nn.Module, gate_only: dict[str, Tensor]) -> dict[str, Tensor]:
    """Flat positions of each tensor's gate-only entries, sorted by |theta| (stable: ties in position order)."""
    params = dict(model.named_parameters())
    order = {}
    for name, entries in gate_only.items():
        positions = entries.flatten().nonzero().squeeze(1)
        magnitude = params[name].detach().flatten()[positions].abs()
        # non-negative floats order like their bit patterns read as integers, which sort several times faster
        as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[magnitude.element_size()]
        order[name] = positions[magnitude.view(as_int).argsort(stable=True)]
    return order


def _path_score_quantiles(scores, gate_only, masks, targets, size: int = 1 << 16) -> Tensor:
    """Sorted PX scores of the alive path entries, or of a fixed random sample of `size` of them: a
    quantile needs no more, and sorting millions of scores would dominate a round.

    The sample is drawn by position in the concatenation of the alive path entries of all targets, on the
    CPU (so every device draws the same), and only the sampled entries are gathered."""
    keep = {n: masks[n] & ~gate_only[n] if n in gate_only else masks[n] for n in targets}
    counts = [int(keep[n].sum()) for n in targets]
    total = sum(counts)
    if total <= size:
        return torch.cat([scores[n][keep[n]] for n in targets]).double().sort().values
    generator = torch.Generator().manual_seed(0)
    draws = torch.randint(total, (size,), generator=generator).sort().values
    bounds = torch.tensor([0] + counts).cumsum(0)
    parts = []
    for name, start, stop in zip(targets, bounds[:-1].tolist(), bounds[1:].tolist()):
        local = draws[torch.searchsorted(draws, start):torch.searchsorted(draws, stop)] - start
        if local.numel() == 0:
            continue
        flat, device = scores[name].view(-1), scores[name].device
        if stop - start == flat.numel():       # every entry kept: the k-th kept entry is entry k
            parts.append(flat[local.to(device)])
        else:
            parts.append(flat[keep[name].flatten().nonzero().squeeze(1)[local.to(device)]])
    return torch.cat(parts).double().sort().values


def _gate_only_entries(model, example, targets, head, trace: Trace) -> dict[str, Tensor]:
    """Target entries with no path to the output (zero gradient in K with every weight set to 1), for
    the tensors that have any. Only ops that multiply two paths (sigmoid gates, softmax, attention) can
    leave a weight off every path, so without them there is none."""
    if not trace.has_gates:
        return {}
    options = SurrogateOptions(power=0)
    roles = parameter_roles(model, targets, head, options, trace, head_is_path=True)
    ones = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n in targets}
    kernel, leaves = pass_parameters(model, "kernel", roles, ones, torch.float32, power=0)
    with torch.enable_grad():
        out, _ = kernel_term(model, example, kernel, options, trace)
        names = [n for n in targets if n in leaves]
        grads = torch.autograd.grad(out.sum(), [leaves[n] for n in names], allow_unused=True)
    entries = {n: torch.ones_like(leaves[n], dtype=torch.bool) if g is None else g == 0 for n, g in zip(names, grads)}
    return {n: e for n, e in entries.items() if e.any()}


def _unscale_(scores: dict[str, Tensor], exponent: int, dtype: torch.dtype) -> dict[str, Tensor]:
    """Undo the power-of-two rescaling where the true values fit the output dtype; else normalise.
    In place where the scores are already in `dtype` (a power-of-two factor is exact there, as in float64).

    Scores are only ever compared with each other, so a global factor never changes a mask.
    """
    dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    finfo = torch.finfo(dtype)
    peak = max((float(s.max()) for s in scores.values() if s.numel()), default=0.0)
    if peak == 0.0 or not math.isfinite(peak):
        return {n: s.to(dtype) for n, s in scores.items()}
    true_log2 = math.log2(peak) - exponent
    if math.log2(finfo.tiny) + 60 < true_log2 < math.log2(finfo.max) - 2:
        shift = -exponent
    else:                         # true values out of range: normalise the largest score to 1
        shift = -math.frexp(peak)[1]
    out = {}
    for name, s in scores.items():
        if s.dtype == dtype and abs(shift) < math.log2(finfo.max) - 1:   # 2**shift itself fits `dtype`
            out[name] = s.mul_(2.0 ** shift)
        else:
            out[name] = torch.ldexp(s.double(), torch.tensor(shift, dtype=torch.float64, device=s.device)).to(dtype)
    return out
