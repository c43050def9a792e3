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


def masks_from_scores(scores: dict[str, Tensor], density: float, masks: dict[str, Tensor] | None = None,
                      min_density: float = 0.0, min_channel_density: float = 0.0) -> dict[str, Tensor]:
    """Keep the `kept_count(density, N)` highest scores over all tensors; masks only shrink.

    Entries already pruned in `masks` are never revived. Ties at the threshold are broken
    deterministically: the earlier tensor (in `scores` order) and the lower flat index win.
    min_density: every tensor first keeps its own `ceil(min_density * size)` best alive entries (a floor,
    so that no tensor is emptied by a global threshold); the rest of the count goes by the global threshold.
    min_channel_density: the same floor per output channel (dim 0): each keeps its `ceil(min_channel_density *
    fan_in)` best alive entries, so that no channel is removed from the ticket entirely (docs/px.md section 2).
    Works on the scores' device, with one scratch copy of the scores as its only weight-sized memory (two
    with a floor, plus one tensor's sort at a time).
    """
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"density {density} must lie in (0, 1]")
    for name, floor in (("min_density", min_density), ("min_channel_density", min_channel_density)):
        if not 0.0 <= floor <= density:
            raise ConfigError(f"{name} {floor} must lie in [0, density={density}]")
    names = list(scores)
    # compare in the scores' own precision (float32 scores stay float32: exact, and half the memory traffic)
    dtype = torch.float64 if any(s.dtype == torch.float64 for s in scores.values()) else torch.float32
    device = next(iter(scores.values())).device
    if masks is None:
        masks = {n: None for n in names}
    counts = [scores[n].numel() if masks[n] is None else int(torch.count_nonzero(masks[n])) for n in names]
    for name in names:
        if not all_finite(scores[name]):
            raise ModelError(f"scores of {name} hold NaN or inf; cannot threshold them")
    floors = 0
    if min_density > 0 or min_channel_density > 0:   # the floors: their entries score +inf, above every other
        scores = dict(scores)
        for name, count in zip(names, counts):
            if min_density > 0:
                floor = min(ceil_share(min_density, scores[name].numel()), count)
                scores[name] = _with_floor(scores[name], masks[name], floor)
            if min_channel_density > 0:
                scores[name] = _with_channel_floor(scores[name], masks[name], min_channel_density)
            floors += int(torch.isposinf(scores[name]).sum())
    # everything kept so far is a candidate, side by side (pruned entries never are, so the selection
    # shrinks with every round)
    values, start = torch.empty(sum(counts), dtype=dtype, device=device), 0
    for name, count in zip(names, counts):
        score = scores[name].detach()
        alive = masks[name] is not None and count < score.numel()
        values[start:start + count] = score[masks[name].to(score.device)] if alive else score.flatten()
        start += count
    keep_count = min(kept_count(density, sum(scores[n].numel() for n in names)), values.numel())
    if floors > keep_count:
        raise ConfigError(f"the floors (min_layer_density {min_density:.4g}, min_channel_density "
                          f"{min_channel_density:.4g}) keep {floors} weights but density {density:.4g} keeps only "
                          f"{keep_count}; lower them or the sparsity")
    if keep_count == 0:
        return {n: torch.zeros(scores[n].shape, dtype=torch.bool, device=scores[n].device) for n in names}
    threshold = _kth_smallest_(values, values.numel() - keep_count + 1)   # the keep_count-th largest alive
    del values
    out, need_ties = {}, keep_count
    for name, count in zip(names, counts):
        score = scores[name].detach().to(device=device, dtype=dtype)
        alive = masks[name].to(device) if masks[name] is not None and count < score.numel() else None
        out[name] = score > threshold if alive is None else (score > threshold) & alive
        need_ties -= int(torch.count_nonzero(out[name]))
    for name, count in zip(names, counts):   # the ties at the threshold, in order, until keep_count are kept
        if need_ties <= 0:
            break
        score = scores[name].detach().to(device=device, dtype=dtype)
        tied = score == threshold
        if masks[name] is not None and count < score.numel():
            tied &= masks[name].to(device)
        positions = tied.flatten().nonzero().flatten()[:need_ties]
        out[name].view(-1)[positions] = True
        need_ties -= positions.numel()
    return {n: mask.to(scores[n].device) for n, mask in out.items()}


def ceil_share(fraction: float, total: int) -> int:
    """ceil(fraction * total): at least one for a positive fraction, at most total, and without the float
    product's last-bit excess pushing an exact integer up by one (0.07 * 100 is 7.000000000000001)."""
    if fraction <= 0 or total == 0:
        return 0
    return min(max(math.ceil(round(fraction * total, 9)), 1), total)


def floor_count(shape: torch.Size, min_density: float = 0.0, min_channel_density: float = 0.0) -> int:
    """The fewest weights the floors of `masks_from_scores` keep in a tensor of `shape` with every entry alive:
    the larger of the two floors (they may overlap, so the union can be larger, never smaller)."""
    total = math.prod(shape)
    rows = shape[0] if len(shape) > 1 else 1
    per_channel = rows * ceil_share(min_channel_density, total // rows) if total else 0
    per_tensor = ceil_share(min_density, total)
    return max(per_tensor, per_channel)


def _with_floor(score: Tensor, mask: Tensor | None, floor: int) -> Tensor:
    """A copy of `score` whose `floor` best alive entries are +inf (ties: the lower index first)."""
    floored = score.detach().flatten().clone()
    ranked = floored if mask is None else floored.masked_fill(~mask.flatten().to(floored.device), -torch.inf)
    floored[torch.sort(ranked, descending=True, stable=True).indices[:floor]] = torch.inf
    return floored.view(score.shape)


def _with_channel_floor(score: Tensor, mask: Tensor | None, fraction: float) -> Tensor:
    """A copy of `score` whose `ceil(fraction * fan_in)` best alive entries in each output channel (the rows of
    dim 0; a 1-D tensor is one channel) are +inf (ties: the lower index first)."""
    if score.numel() == 0:
        return score.detach().clone()
    rows = score.detach().reshape(score.shape[0] if score.dim() > 1 else 1, -1).clone()
    ranked = rows if mask is None else rows.masked_fill(~mask.reshape(rows.shape).to(rows.device), -torch.inf)
    best = torch.sort(ranked, dim=1, descending=True, stable=True)
    count = ceil_share(fraction, rows.shape[1])
    floored = torch.zeros_like(rows, dtype=torch.bool)
    # a row with fewer alive entries than `count` keeps those it has (pruned entries rank at -inf)
    floored.scatter_(1, best.indices[:, :count], best.values[:, :count] > -torch.inf)
    return rows.masked_fill_(floored, torch.inf).view(score.shape)


def all_finite(tensor: Tensor) -> bool:
    """No NaN or inf in `tensor`; one min/max reduction (NaN propagates through both), ~30x faster than
    `torch.isfinite(tensor).all()` on large CPU tensors, which writes a boolean per entry first."""
    if tensor.numel() == 0 or not tensor.is_floating_point():
        return True
    low, high = torch.aminmax(tensor.detach())
    return math.isfinite(float(low)) and math.isfinite(float(high))


def _kth_smallest_(values: Tensor, k: int) -> Tensor:
    """The k-th smallest (1-based) of a 1-D tensor, which it reorders. On the CPU numpy's in-place
    partition (torch.kthvalue would copy the values and allocate an int64 index per entry); on a GPU a sort."""
    if values.device.type == "cpu":
        array = values.numpy()
        array.partition(k - 1)
        return torch.tensor(array[k - 1], dtype=values.dtype)
    return values.sort().values[k - 1]


def layer_densities(masks: dict[str, Tensor]) -> dict[str, float]:
    """Fraction of kept weights per tensor."""
    return {name: float(mask.float().mean()) for name, mask in masks.items()}


def kept_and_total(masks: dict[str, Tensor]) -> tuple[int, int]:
    """How many entries the masks keep, and how many they have."""
    return sum(int(mask.sum()) for mask in masks.values()), sum(mask.numel() for mask in masks.values())


def global_density(masks: dict[str, Tensor]) -> float:
    kept, total = kept_and_total(masks)
    return kept / max(1, total)


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
