"""The one config object behind `hf-px prune`: validation, option parsing, target patterns, CLI errors."""

import dataclasses
import inspect
import json
import re

import pytest
import torch
import yaml

import hf_px
from hf_px import PruneSpec
from hf_px.cli import build_parser, main
from hf_px.cli.prune import config_from_args
from hf_px.config import PruneConfig, parse_option
from hf_px.criteria import PX
from hf_px.errors import ConfigError, HfPxError
from hf_px.targets import matches, select_targets
from hf_px.testing import random_batches, resnet20

BASE = {"model": "org/model", "task": "cifar10", "output": "out"}


@pytest.mark.parametrize("changes,fragment", [
    ({"sparsity": 1.0}, "--sparsity 1.0"),
    ({"sparsity": 0.0}, "--sparsity 0.0"),
    ({"sparsity": float("nan")}, "--sparsity nan"),
    ({"method": "pxx"}, "unknown method 'pxx'; known methods: grasp, magnitude"),
    ({"method": "auto", "method_options": {"gate_only": "dense"}}, "takes no method options"),
    ({"dataset": "x"}, "exactly one of --task"),
    ({"task": None}, "exactly one of --task"),
    ({"examples_per_class": 0}, "--examples-per-class 0"),
    ({"rounds": 0}, "--rounds 0"),
    ({"head": "linear"}, "--head 'linear'"),
    ({"output": None}, "nothing would be written"),
    ({"model": " "}, "model=' '"),
])
def test_bad_values_name_the_flag(changes, fragment):
    with pytest.raises(HfPxError, match=re.escape(fragment)):
        PruneConfig(**{**BASE, **changes})


def test_round_trip_through_dict_and_unknown_keys():
    config = PruneConfig(**BASE, method="px", method_options={"gate_only": "dense"}, include=["*attention*"])
    assert PruneConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="the config has unknown keys \\['sparsty'\\]; valid keys: method, "):
        PruneConfig.from_dict({**BASE, "sparsty": 0.5})


def test_parse_option_types():
    assert parse_option("gate_only=dense") == ("gate_only", "dense")
    assert parse_option("probes=16") == ("probes", 16)
    assert parse_option("temperature=0.5") == ("temperature", 0.5)
    assert parse_option("flag=True") == ("flag", True)
    with pytest.raises(ConfigError, match="key=value"):
        parse_option("dense")


def test_target_patterns():
    names = ["encoder.layer.0.attention.query.weight", "encoder.layer.0.output.dense.weight",
             "encoder.layer.1.attention.query.weight"]
    assert matches(names[0], "query.weight") and matches(names[0], "*attention*") and not matches(names[1], "query.weight")
    assert select_targets(names, ["*attention*"], []) == [names[0], names[2]]
    assert select_targets(names, [], ["*layer.1.*"]) == names[:2]
    with pytest.raises(ConfigError, match="include pattern 'key.weight' \\(--include\\) matches no candidate weight"):
        select_targets(names, ["key.weight"], [])
    with pytest.raises(ConfigError, match="leave no weight"):
        select_targets(names, [], ["*"])


def test_cli_prints_one_line_and_exits_nonzero(capsys, tmp_path):
    code = main(["prune", "org/model", "--task", "cifar10", "--sparsity", "1.5", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--sparsity 1.5" in err[0]
    assert not (tmp_path / "o").exists()
    code = main(["prune", "org/model", "--task", "cifar10", "--option", "nokey", "--output", str(tmp_path / "o")])
    assert code == 2 and "key=value" in capsys.readouterr().err


# ------------------------------------------------------------------ one spec for hf_px.prune, PruneConfig and the CLI


def _pruned(how):
    """Masks and weights of resnet20 (fixed init) pruned by `how(model, batches)`."""
    torch.manual_seed(0)
    model = resnet20(num_classes=10)
    masks = how(model, random_batches(num_classes=10))
    return masks, {name: param.detach().clone() for name, param in model.named_parameters()}


def test_a_prune_spec_gives_the_masks_of_the_keyword_form():
    keywords = {"sparsity": 0.8, "rounds": 2, "seed": 3, "min_layer_density": 0.05, "exclude": ["blocks.0.conv1.weight"]}
    masks, weights = _pruned(lambda m, b: hf_px.prune(m, b, method="px", batchnorm="batch", **keywords))
    assert "blocks.0.conv1.weight" not in masks and min(hf_px.layer_densities(masks).values()) >= 0.05
    spec = PruneSpec(method="px", method_options={"batchnorm": "batch"}, **keywords)
    configured = PruneSpec(method=PX(batchnorm="batch"), **keywords)     # a configured criterion, the same
    config = PruneConfig(model="m", task="cifar10", output="out", method="px", method_options={"batchnorm": "batch"},
                         **keywords)                                     # the CLI's config is a spec too
    for given in (spec, configured, config, config.spec()):
        other, other_weights = _pruned(lambda m, b, given=given: hf_px.prune(m, b, given))
        assert list(other) == list(masks) and all(torch.equal(other[n], masks[n]) for n in masks), given
        assert all(torch.equal(other_weights[n], weights[n]) for n in weights)
    assert configured.to_dict()["method"] == "px" and configured.to_dict()["method_options"]["batchnorm"] == "batch"
    assert PruneSpec(**{**configured.to_dict(), "method_options": {"batchnorm": "batch"}}) == spec


def test_a_spec_and_keywords_that_disagree_are_refused_and_defaults_live_in_the_spec():
    with pytest.raises(ConfigError, match=r"got a PruneSpec and the keyword argument\(s\) \['sparsity'\]"):
        hf_px.prune(resnet20(), random_batches(), PruneSpec(method="magnitude"), sparsity=0.5)
    with pytest.raises(ConfigError, match=r"\['method_options'\]"):
        hf_px.prune(resnet20(), random_batches(), PruneSpec(method="px"), batchnorm="batch")
    # hf_px.prune's keyword defaults are the spec's (one place), and the config overrides only one of them
    parameters = inspect.signature(hf_px.prune).parameters
    spec_defaults = PruneSpec().to_dict()
    assert {name: parameters[name].default for name in spec_defaults if name in parameters} == {
        name: value for name, value in spec_defaults.items() if name in parameters}
    config = PruneConfig(model="m", task="cifar10", output="out").spec().to_dict()
    assert {name for name in config if config[name] != spec_defaults[name]} == {"allow_empty_layers"}
    assert (config["method"], spec_defaults["method"], config["allow_empty_layers"]) == ("auto", "auto", False)


def test_every_finetune_field_has_a_flag():
    from hf_px.cli.finetune import _HELP
    from hf_px.finetune import FinetuneConfig

    fields = {item.name for item in dataclasses.fields(FinetuneConfig)}
    assert set(_HELP) == fields - {"description", "expected"}   # a new field without help would have no flag


def test_prune_flags_are_generated_from_the_config():
    from hf_px.cli.prune import _help

    fields = {item.name for item in dataclasses.fields(PruneConfig)}
    assert set(_help()) == fields - {"model", "method_options"}          # every other field is a flag
    args = build_parser().parse_args(["prune", "m"])
    assert set(vars(args)) == {"verb", "model", "config", "option", "no_progress"}   # a flag not given is not set
    given = build_parser().parse_args(["prune", "m", "--task", "cifar10", "--sparsity", "0.5", "--rounds", "3",
                                       "--min-layer-density", "0.01", "--include", "a*", "--include", "b*",
                                       "--no-recalibrate-bn", "--allow-empty-layers", "--head", "ridge",
                                       "--dry-run", "--option", "gate_only=dense", "--method", "px"])
    config = config_from_args(given)
    assert (config.sparsity, config.rounds, config.min_layer_density, config.include) == (0.5, 3, 0.01, ["a*", "b*"])
    assert not config.recalibrate_bn and config.allow_empty_layers and config.head == "ridge" and config.dry_run
    assert config.method_options == {"gate_only": "dense"} and config.batch_size == 32   # a dataclass default
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["prune"].format_help().split())
    assert "fraction of target weights removed (default 0.9)" in help_text
    assert "held-out images for the probe accuracy (default 200, or all there are; 0: none)" in help_text


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_config_file_with_flags_on_top(tmp_path, suffix, capsys):
    values = {"model": "org/model", "task": "cifar10", "sparsity": 0.5, "method": "px", "rounds": 4,
              "method_options": {"batchnorm": "batch", "gate_only": "dense"}, "include": ["*conv*"],
              "min_layer_density": "1e-3", "output": "out"}
    path = tmp_path / f"prune.{suffix}"
    path.write_text(yaml.safe_dump(values) if suffix == "yaml" else json.dumps(values))
    config = config_from_args(build_parser().parse_args(["prune", "--config", str(path)]))
    assert config == PruneConfig(**{**values, "min_layer_density": 0.001})   # YAML's 1e-3 string read as a number
    config = config_from_args(build_parser().parse_args(
        ["prune", "other/model", "--config", str(path), "--sparsity", "0.7", "--dataset", "my/data",
         "--option", "gate_only=magnitude", "--include", "layer*", "--dry-run"]))
    assert (config.model, config.sparsity, config.rounds) == ("other/model", 0.7, 4)       # flags win, the file stays
    assert (config.task, config.dataset) == (None, "my/data")            # --dataset replaces the file's task
    assert config.method_options == {"batchnorm": "batch", "gate_only": "magnitude"} and config.include == ["layer*"]

    path.write_text(yaml.safe_dump({**values, "sparsty": 0.4}))
    code = main(["prune", "--config", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"config file {str(path)!r} has unknown keys ['sparsty']; valid keys: method, method_options, sparsity" in err[0]
    path.write_text(yaml.safe_dump({**values, "sparsity": 1.5}))
    assert main(["prune", "--config", str(path)]) == 2 and "--sparsity 1.5 must be" in capsys.readouterr().err
    assert main(["prune", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml' does not exist" in capsys.readouterr().err
