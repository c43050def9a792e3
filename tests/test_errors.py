"""Bad input gets a clear error from hf_px's small hierarchy, naming what was given."""

import dataclasses
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
    assert "'pxx'" in message and all(name in message for name in hf_px.list_methods()) and "'auto'" in message


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


def test_sparsity_as_numpy_or_torch_scalar(model):
    import numpy as np

    for sparsity in (np.float32(0.5), np.float64(0.5), torch.tensor(0.5)):
        masks = hf_px.prune(PlainCNN(in_channels=3), random_batches(), method="magnitude", sparsity=sparsity)
        assert hf_px.global_density(masks) == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(hf_px.ConfigError, match="sparsity"):
        hf_px.prune(model, random_batches(), sparsity=torch.tensor([0.5, 0.5]))


# every method, also those that read only the first batch (random, magnitude, synflow): every batch is checked
@pytest.mark.parametrize("method", ["px", "random", "magnitude", "synflow"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_inf_in_the_inputs(model, bad, method):
    data = random_batches()
    data[1][0][0, 0, 0, 0] = bad
    with pytest.raises(hf_px.DataError, match="batch 1 holds NaN or inf"):
        hf_px.score(model, data, method=method)
    with pytest.raises(hf_px.DataError, match="batch 1 holds NaN or inf"):
        hf_px.prune(model, data, method=method, rounds=1)


def test_batch_that_is_not_a_tensor_names_its_type(model):
    import numpy as np

    with pytest.raises(hf_px.DataError, match="first item is a ndarray"):
        hf_px.prune(model, [(np.zeros((2, 3, 32, 32), dtype=np.float32), np.zeros(2))], method="magnitude")


def test_registered_method_returning_a_bad_shape(model):
    @dataclasses.dataclass
    class Broken(hf_px.Criterion):
        name = "broken-shape"

        def score(self, model, batches, targets, masks, head, seed):
            return {name: torch.zeros(3) for name in targets}

    hf_px.register_method("broken-shape", Broken)
    try:
        with pytest.raises(hf_px.ModelError, match="broken-shape.*no score of shape"):
            hf_px.score(model, random_batches(), method="broken-shape")
    finally:
        from hf_px.criteria import base
        base._METHODS.pop("broken-shape", None)


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
