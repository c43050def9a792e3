"""Bad input gets a clear error from hf_px's small hierarchy, naming what was given."""

import math

import pytest
import torch
from torch import nn

import hf_px
from hf_px.testing import PlainCNN, random_batches


@pytest.fixture
def model():
    torch.manual_seed(0)
    return PlainCNN(in_channels=3)


def test_unknown_method_lists_the_known_ones(model):
    with pytest.raises(hf_px.UnknownMethodError) as info:
        hf_px.prune(model, random_batches(), method="pxx")
    assert isinstance(info.value, KeyError)
    message = str(info.value)
    assert "'pxx'" in message and all(name in message for name in hf_px.list_methods())


@pytest.mark.parametrize("sparsity", [0, 1, 1.0, -0.1, 1.5, math.nan, True, "0.9"])
def test_sparsity_outside_the_open_unit_interval(model, sparsity):
    with pytest.raises(hf_px.ConfigError, match="sparsity") as info:
        hf_px.prune(model, random_batches(), sparsity=sparsity)
    assert isinstance(info.value, ValueError)


def test_targets_that_match_nothing(model):
    with pytest.raises(hf_px.ConfigError, match="nope.weight"):
        hf_px.score(model, random_batches(), method="magnitude", targets=["nope.weight"])


def test_no_batches(model):
    with pytest.raises(hf_px.DataError, match="no scoring batches"):
        hf_px.prune(model, [], method="px")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_inf_in_the_inputs(model, bad):
    data = random_batches()
    data[1][0][0, 0, 0, 0] = bad
    with pytest.raises(hf_px.DataError, match="NaN or inf"):
        hf_px.score(model, data, method="px")


def test_model_with_no_prunable_weights():
    head_only = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(hf_px.ModelError, match="no prunable weights"):
        hf_px.prune(head_only, random_batches())
    with pytest.raises(hf_px.ModelError, match="no parameters"):
        hf_px.prune(nn.Flatten(), random_batches())


def test_unknown_option_names_the_valid_ones(model):
    with pytest.raises(hf_px.ConfigError, match="gate_only"):
        hf_px.score(model, random_batches(), method="px", gateonly="dense")
    with pytest.raises(hf_px.ConfigError, match="batchnorm"):
        hf_px.score(model, random_batches(), method="px", batchnorm="train")


def test_labels_required_and_in_range(model):
    images_only = [(x, None) for x, _ in random_batches()]
    with pytest.raises(hf_px.DataError, match="needs labels"):
        hf_px.score(model, images_only, method="snip")
    out_of_range = [(x, y + 10) for x, y in random_batches()]
    with pytest.raises(hf_px.DataError, match="outputs"):
        hf_px.score(model, out_of_range, method="grasp")


def test_bad_rounds_and_masks(model):
    with pytest.raises(hf_px.ConfigError, match="rounds"):
        hf_px.prune(model, random_batches(), rounds=0)
    with pytest.raises(hf_px.ConfigError, match="masks lack"):
        hf_px.score(model, random_batches(), method="magnitude", masks={})
