"""Which floating type a model holds, and which one to score it in."""

import torch
from torch import nn


def model_dtype(model: nn.Module) -> torch.dtype:
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.get_default_dtype()


def compute_dtype(model: nn.Module) -> torch.dtype:
    """Score in float32 or float64 even when the model is half precision (docs/px.md section 9)."""
    dtype = model_dtype(model)
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32
