"""Apply boolean masks to a model in place: pruned weights become exact zeros."""

import torch
from torch import Tensor, nn

from .errors import ConfigError


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    """Zero every weight whose mask entry is False; returns the model."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise ConfigError(f"mask {name!r} names no parameter of {type(model).__name__}")
        if mask.shape != params[name].shape:
            raise ConfigError(f"mask {name!r} has shape {tuple(mask.shape)} but the weight has "
                              f"{tuple(params[name].shape)}; the masks belong to another model")
        params[name].mul_(mask.to(device=params[name].device, dtype=params[name].dtype))
    return model
