"""SNIP (Lee et al., ICLR 2019): |dL/dm| = |theta * dL/dtheta|, connection sensitivity of the loss."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from .._dtypes import compute_dtype
from ..batches import iter_batches, logits_of
from .base import Criterion, effective_parameters, labels_or_raise, register_method


@register_method("snip")
@dataclass
class SNIP(Criterion):
    def score(self, model, batches, targets, masks, head, seed):
        dtype = compute_dtype(model)
        device = next(model.parameters()).device
        params, _ = effective_parameters(model, {n: masks[n] for n in targets}, dtype)
        params = {n: p.detach() for n, p in params.items()}
        leaves = {n: masks[n].to(dtype).requires_grad_(True) for n in targets}   # dL/dm = theta * dL/dw
        totals = {n: torch.zeros_like(leaves[n]) for n in targets}
        for images, labels in iter_batches(batches, device):
            with torch.enable_grad():
                masked = {**params, **{n: params[n] * leaves[n] for n in targets}}
                logits = logits_of(functional_call(model, masked, (images.to(dtype),), strict=False))
                loss = F.cross_entropy(logits, labels_or_raise(labels, logits, self.name))
                grads = torch.autograd.grad(loss, [leaves[n] for n in targets], allow_unused=True)
            for name, grad in zip(targets, grads):
                if grad is not None:
                    totals[name] += grad
        return {n: totals[n].abs() for n in targets}
