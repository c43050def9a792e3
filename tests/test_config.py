"""The one config object behind `hf-px prune`: validation, option parsing, target patterns, CLI errors."""

import re

import pytest

from hf_px.cli import main
from hf_px.config import PruneConfig, parse_option
from hf_px.errors import ConfigError, HfPxError
from hf_px.targets import matches, select_targets

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
