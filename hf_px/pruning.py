"""The two entry points: `score` (one round of saliencies) and `prune` (the iterative schedule)."""

import contextlib
import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._dtypes import model_dtype
from .apply import apply_masks_
from .batches import first_images, iter_batches, reiterable
from .batchnorm import recalibrate_batchnorm_
from .criteria import Criterion, make_criterion
from .errors import ConfigError, DataError, ModelError
from .masks import all_finite, check_masks, density_schedule, floor_count, kept_count, masks_from_scores
from .targets import find_head, resolve_targets

AUTO = "auto"
# What `method="auto"` runs (the default of `hf_px.prune`, `hf_px.score` and `hf-px prune`), by kind of model:
# the case of study 4 (pre-trained, pruned, fine-tuned) whose largest loss to the best case over the densities
# is smallest, since a default must serve any sparsity (docs/results.md, "Defaults, and what supports them",
# names the cells and margins). On EfficientNet-Lite0, magnitude: PX variants lead it at 50-10% density by
# less than it leads them at 5%, and it prunes several times faster. On the ViT, px with W_Q/W_K ranked by
# px-exact (`gate_only`), at 20 rounds, a fifth of px's default: px-exact falls furthest behind it at 2%.
AUTO_FOR_CNNS = {"method": "magnitude", "method_options": {}, "rounds": None}
AUTO_FOR_TRANSFORMERS = {"method": "px", "method_options": {"gate_only": "px-exact"}, "rounds": 20}
# "auto" also keeps every target tensor at >= this fraction of the target density: a global threshold
# otherwise empties whole tensors whose scores sit on another scale. PX all but empties the MLPs of study 4's
# pre-trained ViT at 5% density and below (docs/results.md, "Where the weights go"), and without this floor
# the second ViT's tickets have whole tensors at zero; on a randomly initialised ViT the attention is near
# uniform, so px-exact's W_Q/W_K scores (second order in the small weights) fall far below every other
# tensor's and 90% sparsity empties all of them (tests/test_cli_robustness.py).
AUTO_MIN_LAYER_DENSITY = 0.1


def auto_choice(model: nn.Module, example: Tensor) -> dict:
    """What `method="auto"` runs on `model`: {"method", "method_options", "rounds"} (None: the method's
    default) of AUTO_FOR_TRANSFORMERS if its forward pass on `example` computes softmax attention, else of
    AUTO_FOR_CNNS."""
    from .surrogate import trace_of

    with preserved(model):
        model.eval()
        attention = trace_of(model, example[:1]).has_attention
    return copy.deepcopy(AUTO_FOR_TRANSFORMERS if attention else AUTO_FOR_CNNS)


def describe_choice(choice: dict) -> str:
    """An `auto_choice` in words: "px (gate_only=px-exact, 20 rounds)", "magnitude"."""
    details = [f"{key}={value}" for key, value in choice["method_options"].items()]
    details += [f"{choice['rounds']} rounds"] if choice["rounds"] else []
    return choice["method"] + (f" ({', '.join(details)})" if details else "")


def auto_criterion(model: nn.Module, example: Tensor) -> tuple[Criterion, dict]:
    """The configured criterion of `auto_choice`, and the choice."""
    chosen = auto_choice(model, example)
    return make_criterion(chosen["method"], **chosen["method_options"]), chosen


def check_method(method: "str | Criterion", options: dict) -> Criterion | None:
    """The criterion now, or None for "auto" (chosen once the model has been run).

    `method` is a registered name (configured by `options`) or a configured `Criterion` instance.
    """
    if isinstance(method, Criterion):
        if options:
            raise ConfigError(f"options {sorted(options)} were given beside a configured {type(method).__name__}; "
                              f"set them on the instance instead, e.g. {type(method).__name__}(...)")
        return method
    if isinstance(method, type) and issubclass(method, Criterion):
        raise ConfigError(f"method={method.__name__} is a class; pass an instance ({method.__name__}()) or its name")
    if method != AUTO:
        return make_criterion(method, **options)
    if options:
        raise ConfigError(f"method='auto' takes no method options (got {sorted(options)}); name the method "
                          f"({AUTO_FOR_CNNS['method']} or {AUTO_FOR_TRANSFORMERS['method']}) to pass options")
    return None


def layer_density_floor(method: str, sparsity: float, value: float | None = None) -> float:
    """The per-tensor density floor `prune` applies: `value` if given (checked), else for method "auto"
    `AUTO_MIN_LAYER_DENSITY` times the target density, else 0 (a named method runs as published)."""
    density = 1.0 - sparsity
    if value is None:
        return AUTO_MIN_LAYER_DENSITY * density if method == AUTO else 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= density + 1e-9:
        raise ConfigError(f"min_layer_density={value!r} must be a number in [0, {density:.4g}] (at most the target "
                          f"density 1 - sparsity); e.g. {AUTO_MIN_LAYER_DENSITY * density:.3g}")
    return min(float(value), density)   # 1 - 0.93 is 0.06999999999999995: 0.07 is the density, not above it


@dataclass
class PruneSpec:
    """How `prune` finds the masks, as data. `hf_px.prune(model, batches, spec)` prunes as the keyword form
    `hf_px.prune(model, batches, method=..., sparsity=..., ...)` does (which builds one); `PruneConfig`
    (`hf-px prune`, its flags and `--config` file) extends it with the model, the data and the output.
    Checked on construction: a bad value raises `ConfigError` (an unknown method `UnknownMethodError`).
    """

    method: "str | Criterion" = AUTO     # a registered name, "auto" (`auto_choice`) or a configured Criterion
    method_options: dict = field(default_factory=dict)   # a named method's options, e.g. {"gate_only": "dense"}
    sparsity: float = 0.9                # the fraction of the target weights removed
    rounds: int | None = None            # None: the method's default (100 for px)
    seed: int = 0
    min_layer_density: float | None = None   # every target tensor keeps this fraction (see `layer_density_floor`)
    min_channel_density: float = 0.0     # every output channel of a target keeps this fraction (at least one weight)
    allow_empty_layers: bool = True      # a tensor left at zero density warns (True) or raises `ModelError`
    include: list[str] | None = None     # target name patterns, globs or dotted suffixes (`hf_px.targets`)
    exclude: list[str] | None = None

    def __post_init__(self):
        self.sparsity = _fraction(self.sparsity, self._given("sparsity", self.sparsity))
        self._check_count("seed", 0)
        if self.rounds is not None:
            self._check_count("rounds", 1, hint=" (or None for the method's default)")
        if not isinstance(self.allow_empty_layers, bool):
            raise ConfigError(f"{self._given('allow_empty_layers', self.allow_empty_layers)} must be true or false")
        for name in ("include", "exclude"):
            patterns = getattr(self, name)
            if patterns is not None and (isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns)):
                raise ConfigError(f"{self._given(name, patterns)} must be a list of patterns, e.g. ['*attention*']")
        if not isinstance(self.method_options, dict):
            raise ConfigError(f"method_options={self.method_options!r} must be a mapping of option names to values")
        layer_density_floor(self.method, self.sparsity, self.min_layer_density)
        channel, density = self.min_channel_density, 1 - self.sparsity
        if (isinstance(channel, bool) or not isinstance(channel, (int, float))
                or not 0.0 <= channel <= density + 1e-9):   # the float tolerance as in `layer_density_floor`
            raise ConfigError(f"{self._given('min_channel_density', channel)} must be a number in "
                              f"[0, {density:.4g}] (at most the target density 1 - sparsity); e.g. "
                              f"{AUTO_MIN_LAYER_DENSITY * density:.3g}")
        self.min_channel_density = min(float(channel), density)
        self.criterion()   # an unknown method or option fails here, before any work

    def _given(self, name: str, value) -> str:
        """How an error names a field and its value: as the keyword argument (`PruneConfig`: as the flag)."""
        return f"{name}={value!r}"

    def _check_count(self, name: str, minimum: int, hint: str = "") -> None:
        value = getattr(self, name)
        _check_int(self._given(name, value), value, minimum, hint)

    def criterion(self) -> Criterion | None:
        """The configured criterion, or None for "auto" (chosen once the model has been run)."""
        return check_method(self.method, self.method_options)

    def to_dict(self) -> dict:
        """The fields as JSON-ready values; a configured criterion as its registered name and its options."""
        values = {item.name: copy.deepcopy(getattr(self, item.name)) for item in dataclasses.fields(self)}
        if isinstance(self.method, Criterion):
            values["method"] = self.method.name
            values["method_options"] = {item.name: getattr(self.method, item.name)
                                        for item in dataclasses.fields(self.method) if item.init}
        return values


def score(model: nn.Module, batches: Iterable, method: "str | Criterion" = AUTO, targets: list[str] | None = None,
          seed: int = 0, masks: dict[str, Tensor] | None = None, *, include: list[str] | None = None,
          exclude: list[str] | None = None, **options) -> dict[str, Tensor]:
    """One round of `method`'s saliency scores, keyed by parameter name and shaped like the weights.

    batches: (images, labels) tuples or dicts with `pixel_values` (and `labels`), e.g. a DataLoader.
    targets: parameter names to score; None means every Linear/Conv weight except the classifier head.
    include/exclude: name patterns (globs or dotted suffixes) that narrow the targets (`hf_px.targets`).
    masks: current boolean masks of the targets (pruned entries score 0); None means all kept.
    method: "auto" (the default: `auto_choice`), a name from `hf_px.list_methods()`, or a
    configured `Criterion` instance such as `PX(head="path")`.
    options: the method's own options when `method` is a name (see each criterion's docstring).
    The model is left exactly as found, also when this raises.
    """
    misplaced = sorted(set(options) & {"sparsity", "rounds", "progress", "min_layer_density", "min_channel_density",
                                       "allow_empty_layers"})
    if misplaced:
        raise ConfigError(f"score takes no {', '.join(misplaced)}: it returns one round of scores; "
                          f"hf_px.prune(model, batches, method={method!r}, sparsity=...) prunes")
    _check_model(model)
    _check_int(f"seed={seed!r}", seed, minimum=0)
    criterion = check_method(method, options)
    with preserved(model):
        batches, targets, head = _prepare(model, batches, targets, include, exclude)
        criterion = criterion or auto_criterion(model, first_images(batches, _device(model)))[0]
        masks = _initial_masks(model, targets, masks)
        return _checked(criterion, criterion.score(model, batches, targets, masks, head, seed), targets, masks)


def prune(model: nn.Module, batches: Iterable, method: "str | Criterion | PruneSpec" = PruneSpec.method,
          sparsity: float = PruneSpec.sparsity, rounds: int | None = PruneSpec.rounds, targets: list[str] | None = None,
          seed: int = PruneSpec.seed, *, include: list[str] | None = PruneSpec.include,
          exclude: list[str] | None = PruneSpec.exclude, calibration: Iterable | None = None, progress: bool = False,
          min_layer_density: float | None = PruneSpec.min_layer_density,
          min_channel_density: float = PruneSpec.min_channel_density,
          allow_empty_layers: bool = PruneSpec.allow_empty_layers, on_round=None, **options) -> dict[str, Tensor]:
    """Prune `model` in place to `sparsity` over the targets; return boolean masks keyed by name.

    method: "auto" (the default: `auto_choice`, with its per-tensor floor), a name from
    `hf_px.list_methods()`, a configured `Criterion` instance, or a whole `PruneSpec` (which then holds
    every setting below but targets, calibration, progress and on_round). targets/include/exclude: as in
    `score`.
    Round r of `rounds` (None: the method's default, 100 for px, or auto's) keeps density d ** ((r+1)/rounds) with
    one global threshold; each round re-scores the masked network, and masks only shrink. Exactly
    `masks.kept_count(1 - sparsity, N)` target weights are kept (the authors' count; ties at the threshold
    broken by position). Pruned weights are zeroed in place at the end.
    min_layer_density: every target tensor keeps at least this fraction of its weights (None: 0 for a
    named method, a tenth of the target density for "auto"; see `layer_density_floor`).
    min_channel_density: every output channel of every target tensor keeps at least this fraction of its
    weights, and at least one when > 0, so that no channel leaves the ticket entirely (default 0).
    allow_empty_layers: a tensor left at zero density warns (True) or raises `ModelError` (False).
    calibration: batches on which every BatchNorm layer's running statistics are re-estimated after each
    round (`recalibrate_batchnorm_`, weights masked first), so that later rounds score the pruned network
    with its own statistics rather than the dense network's; the returned model is then recalibrated too.
    None (the default) leaves the statistics alone.
    Under torch.distributed, give each process its own shard; PX sums its data term across processes, so
    all get the same masks. Other methods are not data-parallel: give them all the batches on every process.
    progress: a progress bar over the rounds (with an ETA); on_round: called as on_round(rounds_done,
    seconds_so_far) after every round (`hf-px prune` refines its time estimate with it).
    """
    spec = _spec_of(method, {"method_options": options, "sparsity": sparsity, "rounds": rounds, "seed": seed,
                             "min_layer_density": min_layer_density, "min_channel_density": min_channel_density,
                             "allow_empty_layers": allow_empty_layers,
                             "include": include, "exclude": exclude})
    _check_model(model)
    floor = layer_density_floor(spec.method, spec.sparsity, spec.min_layer_density)
    criterion = spec.criterion()
    calibration = reiterable(calibration) if calibration is not None else None
    with preserved(model):
        batches, targets, head = _prepare(model, batches, targets, spec.include, spec.exclude)
        chosen = {}
        if criterion is None:
            criterion, chosen = auto_criterion(model, first_images(batches, _device(model)))
        rounds = spec.rounds or chosen.get("rounds") or criterion.default_rounds
        masks = _initial_masks(model, targets, None)
        _check_floors_fit({name: mask.shape for name, mask in masks.items()}, spec, floor)
        started = time.perf_counter()
        score_round = criterion.scorer(model, batches, targets, head, spec.seed)   # the model's structure, once
        for done, density in enumerate(tqdm(density_schedule(1.0 - spec.sparsity, rounds), desc=f"{criterion.name} rounds",
                                            unit="round", disable=not progress), start=1):
            scores = _checked(criterion, score_round(masks), targets, masks)
            masks = masks_from_scores(scores, density, masks, min_density=floor,
                                      min_channel_density=spec.min_channel_density)
            if calibration is not None:
                apply_masks_(model, masks)
                recalibrate_batchnorm_(model, calibration)
            if on_round is not None:
                on_round(done, time.perf_counter() - started)
    collapsed = [name for name, mask in masks.items() if not mask.any()]
    if collapsed:   # docs/px.md section 8: never hide a tensor pruned away (it cuts every path through its layer)
        message = (f"{len(collapsed)} of {len(masks)} target tensors are pruned to zero density "
                   f"({', '.join(collapsed[:4])}{', ...' if len(collapsed) > 4 else ''}); lower the sparsity, "
                   "or pass min_layer_density (e.g. method='auto' keeps a tenth of the target density per tensor)")
        if not spec.allow_empty_layers:
            raise ModelError(message + ", or allow_empty_layers=True to accept them")
        warnings.warn(message, stacklevel=2)
    apply_masks_(model, masks)
    return masks


def _check_floors_fit(shapes: dict[str, torch.Size], spec: PruneSpec, floor: float) -> None:
    """Refuse, before any scoring, floors that need more weights than the target density keeps: they keep the
    same count every round while the schedule shrinks, so they would otherwise fail only in a late round."""
    def needed(channel: float) -> int:
        return sum(floor_count(shape, floor, channel) for shape in shapes.values())

    keep = kept_count(1.0 - spec.sparsity, sum(math.prod(shape) for shape in shapes.values()))
    if needed(spec.min_channel_density) <= keep:
        return
    if spec.min_channel_density == 0:
        raise ConfigError(f"min_layer_density={floor:.4g} keeps {needed(0.0)} weights (ceil({floor:.4g} x its size) "
                          f"per tensor) but sparsity={spec.sparsity:.4g} keeps only {keep}; lower "
                          "min_layer_density or the sparsity")
    low, high = 0.0, spec.min_channel_density   # the largest channel floor that fits (`needed` grows with it)
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if needed(middle) <= keep else (low, middle)
    if low > 0:   # two significant digits, rounded down so that it still fits
        digits = 1 - math.floor(math.log10(low))
        hint = f"lower min_channel_density to at most {math.floor(low * 10**digits) / 10**digits:g}"
    else:
        hint = "one weight per output channel is already more than that: lower the sparsity"
    raise ConfigError(f"min_channel_density={spec.min_channel_density:.4g} (every output channel keeps "
                      f"ceil({spec.min_channel_density:.4g} x its fan-in) weights, at least one) with "
                      f"min_layer_density={floor:.4g} keeps {needed(spec.min_channel_density)} weights but "
                      f"sparsity={spec.sparsity:.4g} keeps only {keep} of the targets; {hint}")


def _spec_of(method, keywords: dict) -> PruneSpec:
    """`method` if it is a `PruneSpec` (the keywords left at their defaults), else the spec the keywords make."""
    if not isinstance(method, PruneSpec):
        return PruneSpec(method=method, **keywords)
    defaults = PruneSpec().to_dict()
    changed = sorted(name for name, value in keywords.items() if value != defaults[name])
    if changed:
        raise ConfigError(f"prune got a PruneSpec and the keyword argument(s) {changed}; set them on the spec "
                          f"instead: dataclasses.replace(spec, {changed[0]}=...)")
    return method


def _fraction(sparsity, given: str) -> float:
    """`sparsity` as a float strictly between 0 and 1; numpy and 0-d torch scalars are accepted."""
    try:
        value = None if isinstance(sparsity, (bool, str)) else float(sparsity)
    except (TypeError, ValueError, RuntimeError):
        value = None
    if value is None or not 0.0 < value < 1.0:   # NaN fails the comparison too
        raise ConfigError(f"{given} must be a number strictly between 0 and 1 (e.g. 0.9 keeps 10%)")
    return value


def _check_int(given: str, value, minimum: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{given} must be an integer >= {minimum}{hint}")


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        hint = (" (a name: load it first, e.g. hf_px.models.load_model(name).model)" if isinstance(model, str)
                else "")
        raise ModelError(f"model must be a torch.nn.Module, got a {type(model).__name__}{hint}")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


_CONSTANT = 1e-6   # an image whose pixels spread less than this (relative to its scale) carries no signal


def _prepare(model, batches, targets, include, exclude):
    if not any(True for _ in model.parameters()):
        raise ModelError(f"{type(model).__name__} has no parameters to prune")
    batches = reiterable(batches)
    dtype, spread, scale = model_dtype(model), 0.0, 0.0
    # every batch's layout and values, once: not all methods read them all
    for index, (images, _) in enumerate(iter_batches(batches)):
        if images.dtype != dtype:
            raise DataError(f"batch {index} holds {images.dtype} images but the model's weights are {dtype}; "
                            f"convert them (images.to({dtype}))")
        spread = max(spread, float(images.flatten(1).double().std(dim=1, correction=0).max()))
        scale = max(scale, float(images.abs().max()))
    if spread <= _CONSTANT * max(1.0, scale):
        raise DataError("every scoring image is constant (e.g. all black): no method can tell weights apart on "
                        "them; score on real images of the task")
    model.eval()   # gates are recorded in eval mode: no dropout, BN running statistics
    example = first_images(batches, next(model.parameters()).device)
    try:
        head = find_head(model, example[:2])
    except RuntimeError as error:   # e.g. 3-channel images for a 1-channel model
        text = str(error).strip().splitlines()
        raise DataError(f"the model cannot run on the scoring images (batch 0 has shape {tuple(example.shape)}): "
                        f"{text[0] if text else type(error).__name__}; give images of the model's channels and "
                        "size") from None
    return batches, resolve_targets(model, targets, head, include, exclude), head


def _initial_masks(model, targets, masks):
    """All-kept masks for the targets, or the caller's, checked and on the weights' devices."""
    params = dict(model.named_parameters())
    if masks is None:
        return {n: torch.ones_like(params[n], dtype=torch.bool) for n in targets}
    missing = [n for n in targets if n not in masks]
    if missing:
        raise ConfigError(f"masks lack the targets {missing[:3]}{'...' if len(missing) > 3 else ''}; "
                          "pass a mask for every target or masks=None")
    check_masks(model, {n: masks[n] for n in targets})
    return {n: masks[n].to(params[n].device) for n in targets}


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
