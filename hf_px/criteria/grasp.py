"""GraSP (Wang et al., ICLR 2020): keep weights whose removal would most reduce gradient flow.

Score theta * (H g) with g the loss gradient and H the Hessian, at temperature 200 as in the authors'
code; signed, higher means keep.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from .._dtypes import compute_dtype
from ..batches import iter_batches, logits_of
from .base import Criterion, effective_parameters, labels_or_raise, register_method


@register_method("grasp")
@dataclass
class GraSP(Criterion):
    nonnegative = False
    temperature: float = 200.0

    def score(self, model, batches, targets, masks, head, seed):
        dtype = compute_dtype(model)
        device = next(model.parameters()).device
        params, leaves = effective_parameters(model, {n: masks[n] for n in targets}, dtype)
        weights = [leaves[n] for n in targets]

        def loss_of(images, labels):
            logits = logits_of(functional_call(model, params, (images.to(dtype),), strict=False))
            return F.cross_entropy(logits / self.temperature, labels_or_raise(labels, logits, self.name))

        # Second-order terms need attention's double backward, which only the math kernel has on CPU.
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            stopped = [torch.zeros_like(w) for w in weights]
            for images, labels in iter_batches(batches, device):
                grads = torch.autograd.grad(loss_of(images, labels), weights, allow_unused=True)
                stopped = [s + g if g is not None else s for s, g in zip(stopped, grads)]
            hessian_grad = [torch.zeros_like(w) for w in weights]
            for images, labels in iter_batches(batches, device):
                grads = torch.autograd.grad(loss_of(images, labels), weights, create_graph=True, allow_unused=True)
                inner = sum((s * g).sum() for s, g in zip(stopped, grads) if g is not None)
                if not isinstance(inner, torch.Tensor) or not inner.requires_grad:
                    continue
                second = torch.autograd.grad(inner, weights, allow_unused=True)
                hessian_grad = [h + s if s is not None else h for h, s in zip(hessian_grad, second)]
        return {n: (w.detach() * h).detach() for n, w, h in zip(targets, weights, hessian_grad)}
