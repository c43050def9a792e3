"""Which parameters are pruned (docs/px.md section 7): Linear/Conv weights found by module type, minus the head.

The classifier head is found structurally, as the Linear/Conv whose output *is* the model's logits, so
no name lists (`'fc'`, `'classifier'`) are needed.
"""

import fnmatch

import torch
from torch import nn

from .batches import logits_of
from .errors import ConfigError, ModelError

PRUNABLE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM_MODULES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def prunable_weights(model: nn.Module) -> list[str]:
    """Names of the `weight` of every Linear/Conv module (subclasses included), in model order."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_MODULES) and isinstance(getattr(module, "weight", None), nn.Parameter):
            names.append(f"{module_name}.weight" if module_name else "weight")
    return names


def find_head(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Parameter names (weight, and bias if any) of the module producing the logits; [] if none does."""
    return _find_head(model, example)


@torch.no_grad()
def _find_head(model: nn.Module, example: torch.Tensor) -> list[str]:
    # forward hooks on the Linear/Conv modules, not the weight tensors their ops see: a layer may transform
    # its weight before the call (the authors' masked layers compute weight_mask * weight in forward)
    calls: list[tuple[str, torch.Tensor]] = []
    hooks = [module.register_forward_hook(lambda _module, _inputs, out, name=name: calls.append((name, out)))
             for name, module in model.named_modules()
             if isinstance(module, PRUNABLE_MODULES) and isinstance(getattr(module, "weight", None), nn.Parameter)]
    was_training = model.training
    model.eval()
    try:   # one image shows which layer makes the logits: a whole batch would only cost time
        logits = logits_of(model(example[:1]))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    calls = [(name, out) for name, out in calls if isinstance(out, torch.Tensor)]
    head_module = None
    for name, out in reversed(calls):
        # the logits themselves, or a view of them (a 1x1 Conv head followed by a flatten)
        if out is logits or (out.numel() == logits.numel() and out.data_ptr() == logits.data_ptr()):
            head_module = name
            break
    if head_module is None:  # e.g. logits averaged over two heads: take the last layer of the logits' size
        head_module = next((name for name, out in reversed(calls) if out.shape[1:] == logits.shape[1:]), None)
    if head_module is None:
        return []
    prefix = f"{head_module}." if head_module else ""
    params = dict(model.named_parameters())
    return [prefix + name for name in ("weight", "bias") if prefix + name in params]


def resolve_targets(model: nn.Module, targets: list[str] | None, head: list[str],
                    include: list[str] | None = None, exclude: list[str] | None = None) -> list[str]:
    """The targets: the caller's names (validated), or every prunable weight but the head; then only those
    matching an `include` pattern (all when none is given), minus those matching an `exclude` pattern.

    Patterns are globs (`*attention*`), exact names or dotted suffixes (`query.weight`); see `matches`.
    The API (`hf_px.prune(include=..., exclude=...)`) and the CLI (`--include/--exclude`) both come here.
    """
    if targets is None:
        chosen = [name for name in prunable_weights(model) if name not in head]
        if not chosen:
            raise ModelError(
                f"{type(model).__name__} has no prunable weights (no Linear/Conv weight besides the head); "
                "pass targets=[...] with parameter names to prune"
            )
    else:
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
        chosen = list(dict.fromkeys(targets))
    return select_targets(chosen, include or [], exclude or [])


def matches(name: str, pattern: str) -> bool:
    """A target pattern matches a parameter name as a glob (`*attention*`), exactly, or as a dotted suffix
    (`query.weight` matches `encoder.layer.0.attention.query.weight`)."""
    return fnmatch.fnmatchcase(name, pattern) or name == pattern or name.endswith("." + pattern)


def select_targets(candidates: list[str], include: list[str], exclude: list[str]) -> list[str]:
    """`candidates` kept by the include patterns (all when none) minus the exclude patterns; a pattern
    that matches no candidate is an error (a typo would otherwise prune the wrong weights silently)."""
    for kind, patterns in (("include", include), ("exclude", exclude)):
        if isinstance(patterns, str):
            raise ConfigError(f"{kind}={patterns!r} must be a list of patterns, e.g. {kind}=[{patterns!r}]")
        for pattern in patterns:
            if not any(matches(n, pattern) for n in candidates):
                raise ConfigError(f"{kind} pattern {pattern!r} (--{kind}) matches no candidate weight; candidates "
                                  f"look like {', '.join(candidates[:3])} (see hf-px prune --dry-run)")
    chosen = [n for n in candidates if not include or any(matches(n, p) for p in include)]
    chosen = [n for n in chosen if not any(matches(n, p) for p in exclude)]
    if not chosen:
        raise ConfigError(f"include={list(include)} / exclude={list(exclude)} leave no weight to prune")
    return chosen
