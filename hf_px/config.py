"""One config object for a pruning job: the `hf-px prune` flags, its `--config` file and the saved provenance.

`PruneConfig` is a `PruneSpec` (how the masks are found, what `hf_px.prune` takes) plus the model, the data
and the output; it validates in one place. `to_dict()` is what `hf_px.json` records as `config`, and
`from_dict()` / `load_config()` read it back (unknown keys are rejected with the valid ones listed).
"""

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .pruning import PruneSpec


@dataclass(kw_only=True)
class PruneConfig(PruneSpec):
    """Everything `hf-px prune` does, as data. Field names are the CLI flags (dashes for underscores) and the
    keys of a `--config` file; the pruning fields and their defaults are `PruneSpec`'s, but for the one below."""

    allow_empty_layers: bool = False            # accept a target tensor pruned to zero density (else an error)
    model: str | None = None                    # Hub id, "timm/...", "hf-hub:...", timm name or local folder
    task: str | None = None                     # a named task (see `hf_px.data.TASKS`) ...
    dataset: str | None = None                  # ... or a Hub dataset id / save_to_disk folder / image folder
    image_column: str | None = None
    label_column: str | None = None
    split: str | None = None                    # the split the scoring sample comes from (default: train)
    eval_split: str | None = None               # the split of the held-out probe sample (default: the task's)
    examples_per_class: int | None = None       # None: 10, or as many as the smallest class has (warned)
    eval_examples: int = 200                    # 0: no probe accuracy
    batch_size: int = 32
    device: str = "auto"                        # "auto": cuda if available, else cpu
    revision: str | None = None
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
            raise ConfigError(f"model={self.model!r}: give a Hub id (org/name), a timm name or a local folder, as "
                              "hf-px prune's first argument or as `model:` in its --config file")
        if (self.task is None) == (self.dataset is None):
            raise ConfigError("give exactly one of --task NAME or --dataset ID_OR_PATH "
                              f"(got task={self.task!r}, dataset={self.dataset!r})")
        if not isinstance(self.method, str):
            raise ConfigError(f"--method {self.method!r} must be a method name; a configured Criterion goes to "
                              "hf_px.prune, or give its name and --option KEY=VALUE")
        super().__post_init__()
        for name, minimum in (("batch_size", 1), ("eval_examples", 0)):
            self._check_count(name, minimum)
        if self.examples_per_class is not None:
            self._check_count("examples_per_class", 1)
        if self.calibration_examples is not None:
            self._check_count("calibration_examples", 1)
        if self.recalibrate_every_round and not self.recalibrate_bn:
            raise ConfigError("--recalibrate-every-round needs BatchNorm recalibration; drop --no-recalibrate-bn")
        if self.head not in ("auto", "ridge", "keep"):
            raise ConfigError(f"--head {self.head!r} must be one of auto, ridge, keep")
        if not self.dry_run and not self.output and not self.push_to_hub:
            raise ConfigError("nothing would be written: pass --output DIR and/or --push-to-hub REPO (or --dry-run)")

    def _given(self, name: str, value) -> str:
        return f"--{name.replace('_', '-')} {value!r}"

    @classmethod
    def from_dict(cls, values: dict, where: str = "the config") -> "PruneConfig":
        return config_from_mapping(cls, values, where)

    def spec(self) -> PruneSpec:
        """The pruning part of this config, as `hf_px.prune` takes it."""
        return PruneSpec(**{item.name: getattr(self, item.name) for item in dataclasses.fields(PruneSpec)})


def load_config(path: str | Path, overrides: dict | None = None) -> PruneConfig:
    """A `--config` file (YAML or JSON: a mapping of `PruneConfig` keys), with `overrides` (the command-line
    flags) on top, as a validated `PruneConfig`; overriding method_options adds to the file's, key by key."""
    where = f"config file {str(path)!r}"
    values = read_mapping(path, where)
    overrides = dict(overrides or {})
    if isinstance(values.get("method_options"), dict) and "method_options" in overrides:
        overrides["method_options"] = {**values["method_options"], **overrides["method_options"]}
    return PruneConfig.from_dict({**values, **overrides}, where=where)


def config_from_mapping(config: type, values: dict, where: str):
    """The config dataclass `config` made from `values` (a file's keys, flags): unknown keys are refused with
    the valid ones listed, and strings of float fields read as numbers (YAML 1.1 reads `1e-4` as a string)."""
    hints = typing.get_type_hints(config)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; valid keys: {', '.join(hints)}")
    values = dict(values)
    for name, value in values.items():
        if isinstance(value, str) and hints[name] in (float, float | None):
            try:
                values[name] = float(value)
            except ValueError:
                raise ConfigError(f"{where}: {name} {value!r} is not a number") from None
    return config(**values)


def read_mapping(path: str | Path, where: str) -> dict:
    """The mapping a YAML (or JSON) file holds; `ConfigError` naming `where` if it is missing or not one."""
    import yaml

    from .hub import first_line

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{where} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{where} is not valid YAML: {first_line(error)}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a YAML mapping of config keys, one `key: value` a line")
    return values


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
