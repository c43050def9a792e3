"""From scores to boolean masks: the exponential schedule and one exact global threshold (docs/px.md section 8)."""

import math

import torch
from torch import Tensor, nn

from .errors import ConfigError, MaskError, ModelError


def density_schedule(final_density: float, rounds: int) -> list[float]:
    """Round r (0-based) keeps final_density ** ((r + 1) / rounds) of the targets."""
    return [final_density ** ((r + 1) / rounds) for r in range(rounds)]


def kept_count(density: float, total: int) -> int:
    """How many weights are kept: total - int((1 - density) * total), the authors' count (their k-th
    smallest score with k = int((1 - density) * N)), so that masks match theirs round for round. It is
    round(density * total) or one more (the float product can fall just short of an integer: 0.95 * 2000
    is 1899.9999999999998).

    Unlike the authors' code, which prunes every score <= the k-th smallest and so overshoots when scores
    tie at the threshold (common at 0: dead units), ties are broken by position: the count is exact.
    """
    return total - int((1.0 - density) * total)


def masks_from_scores(scores: dict[str, Tensor], density: float,
                      masks: dict[str, Tensor] | None = None, min_density: float = 0.0) -> dict[str, Tensor]:
    """Keep the `kept_count(density, N)` highest scores over all tensors; masks only shrink.

    Entries already pruned in `masks` are never revived. Ties at the threshold are broken
    deterministically: the earlier tensor (in `scores` order) and the lower flat index win.
    min_density: every tensor first keeps its own `ceil(min_density * size)` best alive entries (a floor,
    so that no tensor is emptied by a global threshold); the rest of the count goes by the global threshold.
    """
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"density {density} must lie in (0, 1]")
    if not 0.0 <= min_density <= density:
        raise ConfigError(f"min_density {min_density} must lie in [0, density={density}]")
    names = list(scores)
    # compare in the scores' own precision (float32 scores stay float32: exact, and half the memory traffic)
    dtype = torch.float64 if any(s.dtype == torch.float64 for s in scores.values()) else torch.float32
    flat = []
    for name in names:
        score = scores[name].detach().flatten().to(dtype)
        if not torch.isfinite(score).all():
            raise ModelError(f"scores of {name} hold NaN or inf; cannot threshold them")
        if masks is not None:
            score = score.masked_fill(~masks[name].flatten().to(score.device), -torch.inf)
        if min_density > 0:   # the floor: the tensor's best alive entries rank above every other score
            floor = min(math.ceil(min_density * score.numel()), int((score > -torch.inf).sum()))
            order = torch.sort(score, descending=True, stable=True).indices[:floor]   # ties: lower index
            score = score.clone()
            score[order] = torch.inf
        flat.append(score.cpu())
    values = torch.cat(flat)
    alive = sum(int(masks[n].sum()) for n in names) if masks is not None else values.numel()
    keep_count = min(kept_count(density, values.numel()), alive)
    floors = int((values == torch.inf).sum())
    if floors > keep_count:
        raise ConfigError(f"min_density {min_density} keeps {floors} weights but density {density:.4g} keeps only "
                          f"{keep_count}; lower min_density")
    keep = torch.zeros(values.numel(), dtype=torch.bool)
    if keep_count > 0:
        # the threshold is the keep_count-th largest alive score: select among the alive ones only (pruned
        # entries are -inf), which shrinks with every round
        candidates = values[values > -torch.inf] if alive < values.numel() else values
        threshold = torch.kthvalue(candidates, candidates.numel() - keep_count + 1).values
        keep = values > threshold
        ties = (values == threshold).nonzero().flatten()[: keep_count - int(keep.sum())]
        keep[ties] = True
    out, start = {}, 0
    for name in names:
        size = scores[name].numel()
        out[name] = keep[start:start + size].view(scores[name].shape).to(scores[name].device)
        start += size
    return out


def layer_densities(masks: dict[str, Tensor]) -> dict[str, float]:
    """Fraction of kept weights per tensor."""
    return {name: float(mask.float().mean()) for name, mask in masks.items()}


def global_density(masks: dict[str, Tensor]) -> float:
    kept = sum(int(mask.sum()) for mask in masks.values())
    return kept / max(1, sum(mask.numel() for mask in masks.values()))


def check_masks(model: nn.Module, masks: dict[str, Tensor], zeroed: bool = False, where: str = "",
                fix: str = "zero them with hf_px.apply_masks_(model, masks)") -> None:
    """Raise `MaskError` unless every mask is a boolean tensor naming a parameter of `model` with its shape;
    with `zeroed`, also unless every weight a mask marks as pruned is exactly zero.

    `where` (e.g. " in the checkpoint") goes into the messages; `fix` ends the one about non-zero weights.
    """
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise MaskError(f"mask {name!r}{where} names no parameter of {type(model).__name__} (its parameters "
                            f"look like {', '.join(list(params)[:3])}); the masks belong to another model")
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise MaskError(f"mask {name!r}{where} must be a torch.bool tensor, got "
                            f"{getattr(mask, 'dtype', type(mask).__name__)}; threshold scores with "
                            "hf_px.masks_from_scores")
        if mask.shape != params[name].shape:
            raise MaskError(f"mask {name!r}{where} has shape {tuple(mask.shape)} but the weight has "
                            f"{tuple(params[name].shape)}; the masks belong to another model")
        if zeroed:
            stray = int(params[name].detach()[~mask.to(params[name].device)].count_nonzero())
            if stray:
                raise MaskError(f"{stray} pruned weights of {name!r}{where} are not zero; {fix}")
