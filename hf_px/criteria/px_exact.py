"""px-exact: the quantity PX bounds, theta_j^2 * sum_x ||d f(x) / d theta_j||^2 (docs/px.md section 12).

Estimated with Rademacher probes: one backward of sum_b v_b . f(x_b), with an independent +-1 vector
v_b per sample, gives g with E[g_j^2] = sum_b ||J_j(x_b)||^2 (cross-sample terms vanish in
expectation). Needs no per-op rules, so it scores every weight, W_Q/W_K included.
"""

from dataclasses import dataclass

import torch
from torch.func import functional_call

from .._dtypes import compute_dtype
from ..batches import iter_batches, logits_of
from ..errors import ConfigError
from .base import Criterion, effective_parameters, register_method


@register_method("px-exact")
@dataclass
class PXExact(Criterion):
    """probes: Rademacher probes per batch (more probes, less variance; each costs one backward)."""

    default_rounds = 20
    probes: int = 8

    def __post_init__(self):
        if not isinstance(self.probes, int) or self.probes < 1:
            raise ConfigError(f"px-exact option probes={self.probes!r} must be a positive integer")

    def score(self, model, batches, targets, masks, head, seed):
        dtype = compute_dtype(model)
        device = next(model.parameters()).device
        params, leaves = effective_parameters(model, {n: masks[n] for n in targets}, dtype)
        generator = torch.Generator().manual_seed(seed)   # probes drawn on the CPU: the same on every device
        names = list(targets)
        totals = {n: torch.zeros_like(leaves[n]) for n in names}
        for images, _ in iter_batches(batches, device):
            with torch.enable_grad():
                logits = logits_of(functional_call(model, params, (images.to(dtype),), strict=False))
                for probe in range(self.probes):
                    signs = torch.randint(0, 2, logits.shape, generator=generator).to(device)
                    grads = torch.autograd.grad((logits * (2 * signs - 1)).sum(), [leaves[n] for n in names],
                                                retain_graph=probe < self.probes - 1, allow_unused=True)
                    for name, grad in zip(names, grads):
                        if grad is not None:
                            totals[name] += grad.detach() ** 2
        return {n: leaves[n].detach() ** 2 * totals[n] / self.probes for n in names}
