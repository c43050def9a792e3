"""Which parameters are pruned (PX_SPEC §5): Linear/Conv weights found by module type, minus the head.

The classifier head is found structurally, as the Linear/Conv whose output *is* the model's logits, so
no name lists (`'fc'`, `'classifier'`) are needed.
"""

import weakref

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .batches import logits_of
from .errors import ConfigError, ModelError

PRUNABLE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM_MODULES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
_LINEAR_OPS = {torch.nn.functional.linear, torch.conv1d, torch.conv2d, torch.conv3d}


def prunable_weights(model: nn.Module) -> list[str]:
    """Names of the `weight` of every Linear/Conv module (subclasses included), in model order."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_MODULES) and isinstance(getattr(module, "weight", None), nn.Parameter):
            names.append(f"{module_name}.weight" if module_name else "weight")
    return names


class _LinearOutputs(TorchFunctionMode):
    """Remembers, for each Linear/Conv call, which weight tensor produced which output tensor."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _LINEAR_OPS and len(args) > 1 and isinstance(out, torch.Tensor):
            self.calls.append((id(args[1]), out))
        return out


def structure_key(model: nn.Module) -> tuple:
    """What structural facts found by running `model` (its head, its cuts) depend on, short of its code:
    every parameter's name, shape, dtype and device, and every module's type."""
    return (tuple((n, tuple(p.shape), p.dtype, p.device) for n, p in model.named_parameters()),
            tuple(type(m) for m in model.modules()))


_HEADS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def find_head(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Parameter names (weight, and bias if any) of the module producing the logits; [] if none does.

    Memoised per model and input shape while `structure_key(model)` is unchanged.
    """
    key = (tuple(example.shape[1:]), example.dtype, example.device, structure_key(model))
    cached = _HEADS.get(model)
    if cached is None or cached[0] != key:
        cached = _HEADS[model] = (key, _find_head(model, example))
    return list(cached[1])


@torch.no_grad()
def _find_head(model: nn.Module, example: torch.Tensor) -> list[str]:
    param_names = {id(p): name for name, p in model.named_parameters()}
    was_training = model.training
    model.eval()
    try:
        recorder = _LinearOutputs()
        with recorder:
            logits = logits_of(model(example))
    finally:
        model.train(was_training)
    head_weight = None
    for weight_id, out in reversed(recorder.calls):
        # the logits themselves, or a view of them (a 1x1 Conv head followed by a flatten)
        if out is logits or (out.numel() == logits.numel() and out.data_ptr() == logits.data_ptr()):
            head_weight = param_names.get(weight_id)
            break
    if head_weight is None:  # e.g. logits averaged over two heads: take the last layer of the logits' size
        for weight_id, out in reversed(recorder.calls):
            if out.shape[1:] == logits.shape[1:] and weight_id in param_names:
                head_weight = param_names[weight_id]
                break
    if head_weight is None:
        return []
    module_name = head_weight.rpartition(".")[0]
    names = [head_weight]
    bias = f"{module_name}.bias" if module_name else "bias"
    if bias in dict(model.named_parameters()):
        names.append(bias)
    return names


def resolve_targets(model: nn.Module, targets: list[str] | None, head: list[str]) -> list[str]:
    """The default target set (prunable weights minus the head), or the caller's names, validated."""
    if targets is None:
        chosen = [name for name in prunable_weights(model) if name not in head]
        if not chosen:
            raise ModelError(
                f"{type(model).__name__} has no prunable weights (no Linear/Conv weight besides the head); "
                "pass targets=[...] with parameter names to prune"
            )
        return chosen
    if isinstance(targets, str):
        targets = [targets]
    params = dict(model.named_parameters())
    unknown = [name for name in targets if name not in params]
    if unknown or not targets:
        example = ", ".join(list(params)[:5])
        raise ConfigError(
            f"targets {unknown or targets} match no parameter of {type(model).__name__}; "
            f"use names from model.named_parameters(), e.g. {example}"
        )
    return list(dict.fromkeys(targets))
