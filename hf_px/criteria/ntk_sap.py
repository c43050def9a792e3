"""NTK-SAP (Wang et al., ICLR 2023): prune by the mask-gradient of a finite-difference NTK trace.

    S = |d/dm  E_{theta0 ~ init, x ~ N(0, I)} || f(x; theta0 * m) - f(x; (theta0 + eps * d) * m) ||^2 |

with fresh Kaiming-normal weights theta0 for every batch (the "multi-sampling" of the paper) and random
Gaussian inputs shaped like the scoring images, so it is data-free. The caller's weights are never
touched: the fresh weights live only in the dict given to `functional_call`. BatchNorm normalises by
batch statistics in both networks (running statistics are untouched).
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from .._dtypes import compute_dtype
from ..batches import iter_batches, logits_of
from ..targets import NORM_MODULES, PRUNABLE_MODULES
from .base import Criterion, register_method


@register_method("ntk-sap")
@dataclass
class NTKSAP(Criterion):
    default_rounds = 100
    epsilon: float = 0.01
    repeats: int = 1

    def score(self, model, batches, targets, masks, head, seed):
        dtype = compute_dtype(model)
        device = next(model.parameters()).device
        generator = torch.Generator(device).manual_seed(seed)
        leaves = {n: masks[n].to(dtype).clone().requires_grad_(True) for n in targets}
        totals = {n: torch.zeros_like(leaves[n]) for n in targets}
        for module in model.modules():    # batch statistics; the buffers passed below are copies
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train()
        buffers = {n: b.detach().clone().to(dtype) if b.is_floating_point() else b.clone()
                   for n, b in model.named_buffers()}
        for _ in range(self.repeats):
            for images, _ in iter_batches(batches, device):
                inputs = torch.randn(images.shape, generator=generator, device=device, dtype=dtype)
                fresh = self._fresh_weights(model, dtype, generator)
                perturbed = {n: w + self.epsilon * torch.randn(w.shape, generator=generator, device=device, dtype=dtype)
                             if n in leaves else w for n, w in fresh.items()}
                with torch.enable_grad():
                    outs = []
                    for weights in (fresh, perturbed):
                        params = {n: w * leaves[n] if n in leaves else w for n, w in weights.items()}
                        outs.append(logits_of(functional_call(model, {**params, **buffers}, (inputs,), strict=False)))
                    distance = (outs[0] - outs[1]).pow(2).sum()
                    grads = torch.autograd.grad(distance, [leaves[n] for n in targets], allow_unused=True)
                for name, grad in zip(targets, grads):
                    if grad is not None:
                        totals[name] += grad
        return {n: totals[n].abs() * masks[n] for n in targets}

    @staticmethod
    def _fresh_weights(model, dtype, generator) -> dict:
        fresh = {}
        for module_name, module in model.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for name, param in module.named_parameters(recurse=False):
                value = param.detach().to(dtype)
                if isinstance(module, PRUNABLE_MODULES) and name == "weight":
                    value = nn.init.kaiming_normal_(torch.empty_like(value), generator=generator)
                elif isinstance(module, NORM_MODULES):
                    value = torch.ones_like(value) if name == "weight" else torch.zeros_like(value)
                fresh[prefix + name] = value
        return fresh
