"""What a sparse checkpoint records about itself (`hf_px.json`), as typed records: one writer, one reader.

`hf-px prune` and `hf-px finetune` build a `CheckpointRecord`, `save_sparse` completes it (counts,
densities, versions) and writes `to_dict()`; `load_sparse`, the model card and `hf-px inspect` read it back
with `from_dict`, which checks every known field's type against its annotation (a wrong one raises a
`ConfigError` naming the field). Keys a record does not know are kept in `extra` and written back as they
were, so a file from a newer hf_px (or a caller's own keys) survives a round trip.
"""

import dataclasses
import types
import typing
import warnings
from dataclasses import dataclass, field

from torch import Tensor, nn

from .errors import ConfigError
from .masks import global_density, kept_and_total, layer_densities

# 1: the layout below (flat spec, data and run fields; probe, batchnorm, finetune and counts nested). Files
# of version 1 written before the typed record load unchanged: the record adds fields, never renames one.
FORMAT_VERSION = 1
_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
          list: "a list"}


@dataclass
class Record:
    """A dataclass that checks its fields' types on construction and converts to and from a JSON-ready dict."""

    extra: dict = field(default_factory=dict, kw_only=True)   # keys this hf_px does not know, kept as they were
    # fields a saved file must have right even when read leniently: what hf_px has always checked and reads back
    STRICT: typing.ClassVar[frozenset] = frozenset()

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for item in dataclasses.fields(self):
            setattr(self, item.name, _checked(item.name, getattr(self, item.name), hints[item.name]))

    def to_dict(self) -> dict:
        values = {item.name: getattr(self, item.name) for item in dataclasses.fields(self) if item.name != "extra"}
        return {**self.extra, **{k: v.to_dict() if isinstance(v, Record) else v for k, v in values.items()}}

    @classmethod
    def from_dict(cls, values: dict, lenient: bool = False, prefix: str = "") -> "Record":
        """The record `values` describe. `lenient` (reading a saved file): a field of the wrong type is
        ignored with a warning and its default taken, rather than refusing the file, except the fields every
        earlier hf_px checked (`STRICT`). Files that an earlier hf_px, which checked fewer fields, saved
        through `save_sparse(provenance=...)` load this way."""
        if not isinstance(values, dict):
            raise ConfigError(f"a {cls.__name__} is read from a mapping, got {type(values).__name__}")
        known = {item.name for item in dataclasses.fields(cls)} - {"extra"}
        given = {k: v for k, v in values.items() if k in known}
        if lenient:
            hints = typing.get_type_hints(cls)
            for name in sorted(given):
                if given[name] is None:      # unknown: the field's default
                    del given[name]
                    continue
                try:
                    given[name] = _checked(name, given[name], hints[name], lenient=True, prefix=prefix)
                except ConfigError as error:
                    if name in cls.STRICT:
                        raise
                    warnings.warn(f"hf_px.json: {prefix}{error}; ignored (the field's default is used)", stacklevel=2)
                    del given[name]
        return cls(**given, extra={k: v for k, v in values.items() if k not in known})


def _checked(name: str, value, kind, lenient: bool = False, prefix: str = ""):
    """`value` if it has the annotated type `kind` (a nested record may be given as its dict); else a
    one-line `ConfigError` naming the field, the value and the type it should have."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        kind = next(arg for arg in args if arg is not type(None))
        origin, args = typing.get_origin(kind), typing.get_args(kind)
    if isinstance(kind, type) and issubclass(kind, Record):
        if isinstance(value, kind):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name} is {value!r:.40} ({type(value).__name__}), not a mapping")
        try:
            return kind.from_dict(value, lenient=lenient, prefix=f"{prefix}{name}.")
        except ConfigError as error:   # name the field inside this one: probe.dense
            raise ConfigError(f"{name}.{error}") from None
    base = origin or kind
    if base is float:
        fits = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif base is int:
        fits = isinstance(value, int) and not isinstance(value, bool)
    else:
        fits = isinstance(value, base)
    if not fits:
        raise ConfigError(f"{name} is {value!r:.40} ({type(value).__name__}), not {_KINDS[base]}")
    if base is list and args:
        for index, item in enumerate(value):
            _checked(f"{name}[{index}]", item, args[0])
    if base is dict and args:
        for key, item in value.items():
            _checked(f"{name}[{key!r}]", item, args[1])
    return value


@dataclass
class ProbeRecord(Record):
    """The linear-probe accuracies measured when pruning (None: not measured)."""

    STRICT = frozenset({"dense", "sparse", "sparse_same_head", "eval_examples", "eval_split"})

    dense: float | None = None                  # the dense backbone, head fitted on its features
    sparse: float | None = None                 # the pruned backbone, head refit on its features
    sparse_same_head: float | None = None       # the pruned backbone with the dense backbone's head
    sparse_stale_batchnorm: float | None = None   # the pruned backbone before BatchNorm recalibration
    eval_examples: int | None = None
    eval_split: str | None = None
    head_refit: bool = False                    # the head was (re)fitted as a ridge probe
    head_fit_dense: dict | None = None          # the ridge fit's choices (regularisation, temperature, ...)
    head_fit: dict | None = None


@dataclass
class BatchNormRecord(Record):
    """What was done to the BatchNorm statistics of the pruned model."""

    layers: int = 0
    recalibrated: bool = False
    every_round: bool = False
    images: int | None = None                   # how many images the statistics were re-estimated on
    calibration_indices: list[int] | None = None


@dataclass
class FinetuneRecord(Record):
    """A fine-tuning run (`hf-px finetune`) on the pruned checkpoint."""

    STRICT = frozenset({"eval_accuracy", "eval_examples", "steps", "history", "eval_split", "task"})

    recipe: dict | None = None                  # `FinetuneConfig.to_dict()`
    command: str | None = None
    task: str | None = None
    dataset: str | None = None
    train_split: str | None = None
    eval_split: str | None = None
    train_examples: int | None = None
    eval_examples: int | None = None
    from_scratch: bool = False
    processes: int = 1
    masks_sha256_per_process: list[str] = field(default_factory=list)
    steps: int = 0
    history: list[dict] = field(default_factory=list)   # one entry per epoch
    eval_accuracy: float | None = None
    eval_loss: float | None = None
    time_s: float | None = None
    below_probe: bool = False                   # ended below the pruning-time probe accuracy


@dataclass
class Counts(Record):
    """Parameters of the model and target weights of the masks."""

    STRICT = frozenset({"parameters", "nonzero", "targets", "kept"})

    parameters: int = 0
    nonzero: int = 0
    targets: int = 0
    kept: int = 0

    @classmethod
    def of(cls, model: nn.Module, masks: dict[str, Tensor]) -> "Counts":
        params = list(model.parameters())
        kept, targets = kept_and_total(masks)
        return cls(parameters=sum(p.numel() for p in params), nonzero=sum(int(p.count_nonzero()) for p in params),
                   targets=targets, kept=kept)


@dataclass
class CheckpointRecord(Record):
    """The provenance of a sparse checkpoint: the model, the pruning as it ran, the data it was scored on, the
    probe, BatchNorm and fine-tuning records, and (filled in by `save_sparse`) counts, densities, versions.
    None means unknown."""

    STRICT = frozenset({"format_version", "method", "method_options", "sparsity", "rounds", "seed", "base_model",
                        "base_revision", "source", "library", "license", "task", "dataset", "split", "image_column",
                        "label_column", "examples_per_class", "label_names", "targets", "probe", "finetune",
                        "counts", "layer_densities", "global_density"})

    format_version: int = FORMAT_VERSION
    # the model
    base_model: str | None = None               # the Hub id; None for a local folder
    base_revision: str | None = None
    source: str | None = None                   # what the user gave: a Hub id, a timm name or a folder
    library: str | None = None                  # what wrote the weights (transformers, timm, torch): the loader's guide
    model_class: str | None = None
    license: str | None = None
    # the pruning as it ran (`PruneSpec`'s fields: the method resolved from "auto", the floor applied)
    method: str | None = None
    method_options: dict = field(default_factory=dict)
    sparsity: float | None = None
    rounds: int | None = None
    seed: int | None = None
    min_layer_density: float | None = None
    min_channel_density: float | None = None
    allow_empty_layers: bool | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    targets: list[str] | None = None
    # the data it was scored on (`TaskSample.provenance()`)
    task: str | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    label_names: list[str] | None = None
    image_column: str | None = None
    label_column: str | None = None
    split: str | None = None
    score_indices: list[int] | None = None
    eval_indices: list[int] | None = None
    examples_per_class: int | None = None
    probe: ProbeRecord | None = None
    batchnorm: BatchNormRecord | None = None
    finetune: FinetuneRecord | None = None
    # what the masks and the model say (`save_sparse` fills these in)
    layer_densities: dict[str, float] = field(default_factory=dict)
    global_density: float | None = None
    counts: Counts | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    # the run
    command: str | None = None
    config: dict | None = None                  # `PruneConfig.to_dict()` of an `hf-px prune` run
    processes: int | None = None
    time_s: float | None = None

    def with_masks(self, model: nn.Module, masks: dict[str, Tensor], library: str, versions: dict) -> "CheckpointRecord":
        """This record with what `model` and `masks` say (library and class, densities, counts) and `versions`."""
        return dataclasses.replace(
            self, library=library, model_class=f"{type(model).__module__}.{type(model).__qualname__}",
            format_version=FORMAT_VERSION, layer_densities=layer_densities(masks), global_density=global_density(masks),
            counts=Counts.of(model, masks), versions=versions)


def layer_table(masks: dict[str, Tensor]) -> list[str]:
    """Per-layer density and kept / total, a global row, and the layers at zero density: what `hf-px prune`
    prints at the end and `hf-px inspect` shows."""
    densities = layer_densities(masks)
    width = max([len("global"), *(len(name) for name in densities)])
    lines = [f"{'layer':<{width}}  density  {'kept':>10} / total"]
    for name, density in densities.items():
        lines.append(f"{name:<{width}}  {density:7.2%}  {int(masks[name].sum()):>10,} / {masks[name].numel():,}")
    kept, total = kept_and_total(masks)
    lines.append(f"{'global':<{width}}  {kept / max(1, total):7.2%}  {kept:>10,} / {total:,}")
    zero = [name for name, density in densities.items() if density == 0.0]
    lines.append(f"layers at zero density: {', '.join(zero) if zero else 'none'}")
    return lines
