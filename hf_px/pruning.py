"""The two entry points: `score` (one round of saliencies) and `prune` (the iterative schedule)."""

import contextlib
import time
import warnings
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .apply import apply_masks_
from .batches import first_images, iter_batches, reiterable
from .criteria import Criterion, make_criterion
from .errors import ConfigError, ModelError
from .masks import all_finite, density_schedule, masks_from_scores
from .targets import find_head, resolve_targets


AUTO = "auto"
# The methods docs/results.md supports ("Defaults, and what supports them"), chosen by `method="auto"`.
METHOD_FOR_CNNS = "magnitude"
METHOD_FOR_TRANSFORMERS = "px-exact"


def recommended_method(model: nn.Module, example: Tensor) -> str:
    """The method the project's benchmarks support for `model`: METHOD_FOR_TRANSFORMERS if its forward
    pass on `example` computes softmax attention, else METHOD_FOR_CNNS."""
    from .surrogate import trace_of

    with preserved(model):
        model.eval()
        attention = trace_of(model, example[:1]).has_attention
    return METHOD_FOR_TRANSFORMERS if attention else METHOD_FOR_CNNS


def check_method(method: str, options: dict) -> Criterion | None:
    """The criterion now, or None for "auto" (chosen once the model has been run)."""
    if method != AUTO:
        return make_criterion(method, **options)
    if options:
        raise ConfigError(f"method='auto' takes no method options (got {sorted(options)}); name the method "
                          f"({METHOD_FOR_CNNS} or {METHOD_FOR_TRANSFORMERS}) to pass options")
    return None


def score(model: nn.Module, batches: Iterable, method: str = "px", targets: list[str] | None = None,
          seed: int = 0, masks: dict[str, Tensor] | None = None, **options) -> dict[str, Tensor]:
    """One round of `method`'s saliency scores, keyed by parameter name and shaped like the weights.

    batches: (images, labels) tuples or dicts with `pixel_values` (and `labels`), e.g. a DataLoader.
    targets: parameter names to score; None means every Linear/Conv weight except the classifier head.
    masks: current boolean masks of the targets (pruned entries score 0); None means all kept.
    method: a name from `hf_px.list_methods()`, or "auto" (`recommended_method`).
    options: the method's own options (see `hf_px.list_methods()` and each criterion's docstring).
    The model is left exactly as found, also when this raises.
    """
    criterion = check_method(method, options)
    with preserved(model):
        batches, targets, head = _prepare(model, batches, targets)
        criterion = criterion or make_criterion(recommended_method(model, first_images(batches, _device(model))))
        masks = _check_masks(model, targets, masks)
        return _checked(criterion, criterion.score(model, batches, targets, masks, head, seed), targets, masks)


def prune(model: nn.Module, batches: Iterable, method: str = "px", sparsity: float = 0.9,
          rounds: int | None = None, targets: list[str] | None = None, seed: int = 0, *,
          progress: bool = False, on_round=None, **options) -> dict[str, Tensor]:
    """Prune `model` in place to `sparsity` over the targets; return boolean masks keyed by name.

    method: a name from `hf_px.list_methods()`, or "auto" (`recommended_method`).
    Round r of `rounds` (None: the method's default, 100 for px) keeps density d ** ((r+1)/rounds) with
    one global threshold; each round re-scores the masked network, and masks only shrink. Exactly
    `masks.kept_count(1 - sparsity, N)` target weights are kept (the authors' count; ties at the threshold
    broken by position). Pruned weights are zeroed in place at the end; a tensor left at zero density warns.
    Under torch.distributed, give each process its own shard; PX sums its data term across processes, so
    all get the same masks. Other methods are not data-parallel: give them all the batches on every process.
    progress: a progress bar over the rounds (with an ETA); on_round: called as on_round(rounds_done,
    seconds_so_far) after every round (`hf-px prune` refines its time estimate with it).
    """
    sparsity = _fraction(sparsity)
    criterion = check_method(method, options)
    if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1):
        raise ConfigError(f"rounds={rounds!r} must be a positive integer (or None for the method's default)")
    with preserved(model):
        batches, targets, head = _prepare(model, batches, targets)
        criterion = criterion or make_criterion(recommended_method(model, first_images(batches, _device(model))))
        rounds = criterion.default_rounds if rounds is None else rounds
        masks = _check_masks(model, targets, None)
        started = time.perf_counter()
        score_round = criterion.scorer(model, batches, targets, head, seed)   # the model's structure, once
        for done, density in enumerate(tqdm(density_schedule(1.0 - sparsity, rounds), desc=f"{criterion.name} rounds",
                                            unit="round", disable=not progress), start=1):
            scores = _checked(criterion, score_round(masks), targets, masks)
            masks = masks_from_scores(scores, density, masks)
            if on_round is not None:
                on_round(done, time.perf_counter() - started)
    apply_masks_(model, masks)
    collapsed = [name for name, mask in masks.items() if not mask.any()]
    if collapsed:   # PX_SPEC §5: never hide a tensor pruned away (it cuts every path through its layer)
        warnings.warn(f"{len(collapsed)} of {len(masks)} target tensors are pruned to zero density "
                      f"({', '.join(collapsed[:4])}{', ...' if len(collapsed) > 4 else ''}); lower the sparsity, "
                      "or check for weights that score exactly 0 (e.g. a zero-initialised last norm per block)",
                      stacklevel=2)
    return masks


def _fraction(sparsity) -> float:
    """`sparsity` as a float strictly between 0 and 1; numpy and 0-d torch scalars are accepted."""
    try:
        value = None if isinstance(sparsity, (bool, str)) else float(sparsity)
    except (TypeError, ValueError, RuntimeError):
        value = None
    if value is None or not 0.0 < value < 1.0:   # NaN fails the comparison too
        raise ConfigError(f"sparsity={sparsity!r} must be a number strictly between 0 and 1 (e.g. 0.9 keeps 10%)")
    return value


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _prepare(model, batches, targets):
    if not any(True for _ in model.parameters()):
        raise ModelError(f"{type(model).__name__} has no parameters to prune")
    batches = reiterable(batches)
    for _ in iter_batches(batches):   # every batch's layout and values, once: not all methods read them all
        pass
    model.eval()   # gates are recorded in eval mode: no dropout, BN running statistics
    example = first_images(batches, next(model.parameters()).device)
    head = find_head(model, example[:2])
    return batches, resolve_targets(model, targets, head), head


def _check_masks(model, targets, masks):
    params = dict(model.named_parameters())
    if masks is None:
        return {n: torch.ones_like(params[n], dtype=torch.bool) for n in targets}
    missing = [n for n in targets if n not in masks]
    if missing:
        raise ConfigError(f"masks lack the targets {missing[:3]}{'...' if len(missing) > 3 else ''}; "
                          "pass a mask for every target or masks=None")
    for name in targets:
        if masks[name].shape != params[name].shape:
            raise ConfigError(f"mask {name!r} has shape {tuple(masks[name].shape)}, weight {tuple(params[name].shape)}")
    return {n: masks[n].to(device=params[n].device, dtype=torch.bool) for n in targets}


def _checked(criterion: Criterion, scores: dict[str, Tensor], targets, masks) -> dict[str, Tensor]:
    """The scores of every target, finite, and 0 at pruned entries; a criterion that breaks this raises.
    Takes the scores out of `scores` as it goes, so that one score tensor is held twice at most."""
    checked = {}
    for name in targets:
        if name not in scores or scores[name].shape != masks[name].shape:
            raise ModelError(f"method {criterion.name!r} returned no score of shape {tuple(masks[name].shape)} "
                             f"for {name}; a registered method must score every target it is given")
        value = scores.pop(name).detach()
        if not all_finite(value):
            raise ModelError(f"{criterion.name} scores of {name} are not finite; the model may already hold "
                             "NaN/inf weights, or it uses an op the method cannot handle")
        checked[name] = torch.where(masks[name], value, torch.zeros((), dtype=value.dtype, device=value.device))
    return checked


@contextlib.contextmanager
def preserved(model: nn.Module):
    """Restore train/eval modes, requires_grad flags and `.grad` of `model` on exit, even on error."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad, grad in flags:
            param.requires_grad_(requires_grad)
            param.grad = grad
