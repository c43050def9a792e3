"""One config object for a pruning job: the `hf-px prune` flags, the API input and the saved provenance.

`PruneConfig` validates in one place; `to_dict()` is what `hf_px.json` records and `from_dict()` reads it
back (unknown keys are rejected with the valid ones listed).
"""

import dataclasses
import math
from dataclasses import dataclass, field

from .criteria import list_methods
from .errors import ConfigError
from .pruning import AUTO, check_method, layer_density_floor


@dataclass
class PruneConfig:
    """Everything `hf-px prune` does, as data. Field names are the CLI flags (dashes for underscores)."""

    model: str                                  # Hub id, "timm/...", "hf-hub:...", timm name or local folder
    task: str | None = None                     # a named task (see `hf_px.data.TASKS`) ...
    dataset: str | None = None                  # ... or a Hub dataset id / save_to_disk folder / image folder
    image_column: str | None = None
    label_column: str | None = None
    split: str | None = None                    # the split the scoring sample comes from (default: train)
    eval_split: str | None = None               # the split of the held-out probe sample (default: the task's)
    method: str = "auto"                        # "auto": px-exact for attention models, else magnitude (docs/results.md)
    method_options: dict = field(default_factory=dict)   # e.g. {"gate_only": "dense"}
    sparsity: float = 0.9
    rounds: int | None = None                   # None: the method's default (100 for px)
    min_layer_density: float | None = None      # per-tensor floor; None: 0, or a tenth of the density for "auto"
    allow_empty_layers: bool = False            # accept a target tensor pruned to zero density (else an error)
    examples_per_class: int = 10
    eval_examples: int = 200                    # 0: no probe accuracy
    batch_size: int = 32
    device: str = "auto"                        # "auto": cuda if available, else cpu
    seed: int = 0
    revision: str | None = None
    include: list[str] = field(default_factory=list)   # target name patterns (glob or dotted suffix)
    exclude: list[str] = field(default_factory=list)
    head: str = "auto"                          # "auto": ridge probe if the labels differ, else keep; "ridge"; "keep"
    recalibrate_bn: bool = True                 # re-estimate BatchNorm statistics of the pruned model (if it has BN)
    calibration_examples: int | None = None     # images for that: None = the scoring sample; more are drawn from train
    recalibrate_every_round: bool = False       # also between pruning rounds (docs/results.md, "BatchNorm recalibration")
    trust_remote_code: bool = False
    output: str | None = None
    overwrite: bool = False
    push_to_hub: str | None = None
    private: bool = False
    dry_run: bool = False

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(f"model={self.model!r}: give a Hub id (org/name), a timm name or a local folder")
        if (self.task is None) == (self.dataset is None):
            raise ConfigError("give exactly one of --task NAME or --dataset ID_OR_PATH "
                              f"(got task={self.task!r}, dataset={self.dataset!r})")
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) \
                or math.isnan(self.sparsity) or not 0.0 < self.sparsity < 1.0:
            raise ConfigError(f"--sparsity {self.sparsity!r} must be strictly between 0 and 1 (0.9 keeps 10%)")
        if self.method not in list_methods() and self.method != AUTO:
            raise ConfigError(f"--method {self.method!r} is unknown; choose auto or one of {', '.join(list_methods())}")
        for name in ("examples_per_class", "batch_size"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("eval_examples", self.eval_examples, minimum=0)
        _check_int("seed", self.seed, minimum=0)
        if self.rounds is not None:
            _check_int("rounds", self.rounds, minimum=1)
        if self.calibration_examples is not None:
            _check_int("calibration_examples", self.calibration_examples, minimum=1)
        if self.recalibrate_every_round and not self.recalibrate_bn:
            raise ConfigError("--recalibrate-every-round needs BatchNorm recalibration; drop --no-recalibrate-bn")
        if self.head not in ("auto", "ridge", "keep"):
            raise ConfigError(f"--head {self.head!r} must be one of auto, ridge, keep")
        if not self.dry_run and not self.output and not self.push_to_hub:
            raise ConfigError("nothing would be written: pass --output DIR and/or --push-to-hub REPO (or --dry-run)")
        if not isinstance(self.method_options, dict):
            raise ConfigError(f"method_options={self.method_options!r} must be a mapping of option names to values")
        if self.method == AUTO:
            check_method(self.method, self.method_options)   # "auto" takes no method options
        layer_density_floor(self.method, self.sparsity, self.min_layer_density)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "PruneConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; valid keys: {', '.join(sorted(known))}")
        return cls(**values)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"--{name.replace('_', '-')} {value!r} must be an integer >= {minimum}")


def parse_option(text: str) -> tuple[str, object]:
    """`key=value` from `--option`, with the value read as int, float, bool or None when it looks like one."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--option {text!r} must look like key=value, e.g. --option gate_only=dense")
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return key.strip(), lowered == "true"
    if lowered in ("none", "null"):
        return key.strip(), None
    for kind in (int, float):
        try:
            return key.strip(), kind(raw)
        except ValueError:
            pass
    return key.strip(), raw.strip()
