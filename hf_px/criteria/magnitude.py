"""Data-free baselines: random scores and weight magnitude."""

from dataclasses import dataclass

import torch

from .base import Criterion, register_method


@register_method("random")
@dataclass
class Random(Criterion):
    """Uniform random scores from `seed`: a random subnetwork of the exact requested size."""

    def score(self, model, batches, targets, masks, head, seed):
        params = dict(model.named_parameters())
        generator = torch.Generator().manual_seed(seed)
        return {n: torch.rand(params[n].shape, generator=generator).to(params[n].device) for n in targets}


@register_method("magnitude")
@dataclass
class Magnitude(Criterion):
    """|theta|: keep the largest weights."""

    def score(self, model, batches, targets, masks, head, seed):
        params = dict(model.named_parameters())
        return {n: params[n].detach().abs().float() for n in targets}
