"""Apply boolean masks to a model in place: pruned weights become exact zeros."""

import torch
from torch import Tensor, nn

from .masks import check_masks


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    """Zero every weight whose mask entry is False; returns the model. Raises `MaskError` if a mask does not
    fit the model (checked before any weight changes)."""
    check_masks(model, masks)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(device=params[name].device, dtype=params[name].dtype))
    return model
