"""The criterion interface, the registry of methods by name, and helpers the criteria share."""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .._dtypes import model_dtype
from ..errors import ConfigError, DataError, UnknownMethodError

_METHODS: dict[str, type["Criterion"]] = {}


@dataclass
class Criterion:
    """A pruning method: its options are the dataclass fields; `score` is its one job.

    `score` gets the targets (parameter names), the current boolean masks of those targets, the names of
    the classifier head's parameters and a seed, and returns one score tensor per target, shaped like the
    weight; higher means keep. It must not modify the model: the caller restores mode and flags, but
    values, buffers and `.grad` are the criterion's responsibility (use `torch.func.functional_call`).
    """

    name: ClassVar[str] = ""                # the registered name; an unregistered subclass gets its class name
    default_rounds: ClassVar[int] = 1
    nonnegative: ClassVar[bool] = True
    data_parallel: ClassVar[bool] = False   # True: under torch.distributed, scores a process's shard and
                                            # combines across processes (see PX); False: needs all the data

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:   # not inherited: a subclass of "px" is not "px"
            cls.name = cls.__name__

    def score(self, model: nn.Module, batches, targets: list[str], masks: dict[str, Tensor],
              head: list[str], seed: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def scorer(self, model: nn.Module, batches, targets: list[str], head: list[str],
               seed: int) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
        """`masks -> scores` for the rounds of one `prune` call, during which the model's code does not change
        (between rounds `prune` may zero pruned weights and re-estimate BatchNorm statistics, so read weights
        and buffers in each round, not here). A criterion whose rounds share work (PX: the traced op graph, the parameters'
        roles) does it here, once, instead of caching it between calls; by default each round is `score`."""
        return lambda masks: self.score(model, batches, targets, masks, head, seed)

    def _check_choice(self, option: str, choices: tuple[str, ...]) -> None:
        value = getattr(self, option)
        if value not in choices:
            raise ConfigError(f"{self.name} option {option}={value!r} is not one of {list(choices)}")


def register_method(name: str, criterion: type[Criterion] | None = None, *, replace: bool = False):
    """Register a `Criterion` subclass under `name`; usable as a decorator. A name already taken by another
    class is refused unless `replace=True`."""
    if not isinstance(name, str) or not name.strip() or name == "auto":
        raise ConfigError(f"register_method needs a non-empty method name other than 'auto', got {name!r}")

    def add(cls: type[Criterion]) -> type[Criterion]:
        if not (isinstance(cls, type) and issubclass(cls, Criterion)):
            raise ConfigError(f"register_method({name!r}) needs a Criterion subclass, got {cls!r}")
        taken = _METHODS.get(name)
        if taken is not None and taken is not cls and not replace:
            raise ConfigError(f"method name {name!r} is taken by {taken.__module__}.{taken.__qualname__}; choose "
                              f"another name, or pass replace=True to replace it")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return add(criterion) if criterion is not None else add


def list_methods() -> list[str]:
    """Names of the registered pruning methods."""
    return sorted(_METHODS)


def make_criterion(method: str, **options) -> Criterion:
    """The criterion registered as `method`, configured with `options` (validated)."""
    if method not in _METHODS:
        raise UnknownMethodError(f"unknown method {method!r}; known methods: {', '.join(list_methods())} "
                                 "(and 'auto' in hf_px.prune/score and hf-px prune)")
    cls = _METHODS[method]
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(options) - fields)
    if unknown:
        valid = ", ".join(sorted(fields)) or "none"
        raise ConfigError(f"method {method!r} has no option(s) {unknown}; its options are: {valid}")
    return cls(**options)


def effective_parameters(model: nn.Module, masks: dict[str, Tensor], dtype: torch.dtype
                         ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Parameters (and, when cast, buffers) with masks applied; the targets' masked weights are leaves."""
    params, leaves = {}, {}
    for name, param in model.named_parameters():
        theta = param.detach().to(dtype)
        if name in masks:
            params[name] = leaves[name] = (theta * masks[name].to(dtype)).requires_grad_(True)
        else:
            params[name] = theta
    if dtype != model_dtype(model):
        for name, buffer in model.named_buffers():
            params[name] = buffer.to(dtype) if buffer.is_floating_point() else buffer
    return params, leaves


def labels_or_raise(labels: Tensor | None, logits: Tensor, method: str) -> Tensor:
    if labels is None:
        raise DataError(f"method {method!r} needs labels: give (images, labels) batches or dicts with 'labels'")
    if labels.min() < 0 or labels.max() >= logits.shape[-1]:
        raise DataError(f"labels span [{int(labels.min())}, {int(labels.max())}] but the model has "
                        f"{logits.shape[-1]} outputs; replace the head or remap the labels")
    return labels
