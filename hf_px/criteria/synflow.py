"""SynFlow (Tanaka et al., NeurIPS 2020): |theta * dR/dtheta| with R the l1 path norm sum_p prod |theta|.

R is the output of the linearised network on an all-ones input. For models beyond ReLU it runs through
the same gated path lifting as PX's kernel surrogate with |theta| in place of theta^2 (activations
removed, attention uniform, norms as fixed maps), in float64 with rescaling at cuts.
"""

from dataclasses import dataclass

import torch

from ..batches import first_images
from ..surrogate import SurrogateOptions, kernel_term, parameter_roles, pass_parameters, trace_of
from .base import Criterion, register_method


@register_method("synflow")
@dataclass
class SynFlow(Criterion):
    default_rounds = 100

    def score(self, model, batches, targets, masks, head, seed):
        return self.scorer(model, batches, targets, head, seed)(masks)

    def scorer(self, model, batches, targets, head, seed):
        """The traced op graph and the parameters' roles are found once per `prune` call."""
        example = first_images(batches, next(model.parameters()).device)[:1]
        options = SurrogateOptions(power=1)
        trace = trace_of(model, example)
        roles = parameter_roles(model, targets, head, options, trace, head_is_path=True)
        return lambda masks: self._score(model, targets, masks, example, options, trace, roles)

    def _score(self, model, targets, masks, example, options, trace, roles):
        kernel, leaves = pass_parameters(model, "kernel", roles, masks, torch.float64, power=1)
        with torch.enable_grad():
            out, _ = kernel_term(model, example, kernel, options, trace)
            grads = torch.autograd.grad(out.sum(), [leaves[n] for n in targets], allow_unused=True)
        scores = {}
        for name, grad in zip(targets, grads):
            grad = torch.zeros_like(leaves[name]) if grad is None else grad
            scores[name] = (leaves[name].detach() * grad.abs())
        peak = max(float(s.max()) for s in scores.values())
        # R can exceed float32; only the ranking matters, so normalise the largest score to 1.
        return {n: (s / peak if peak > 0 else s).float() for n, s in scores.items()}
