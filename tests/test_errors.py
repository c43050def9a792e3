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


# ----------------------------------------------------------------- issue 13: the Python API's bad input, in its words


@pytest.mark.parametrize("batches, match", [
    (lambda: [(torch.zeros(0, 3, 32, 32), torch.zeros(0, dtype=torch.long))], "batch 0 holds no images"),
    (lambda: torch.randn(4, 3, 32, 32), "one tensor of shape \\(4, 3, 32, 32\\), not a list of batches"),
    (lambda: [(torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.zeros(4, dtype=torch.long))],
     "torch.float64 images but the model's weights are torch.float32"),
    (lambda: [(torch.randn(4, 3, 32, 32).half(), torch.zeros(4, dtype=torch.long))], "torch.float16 images"),
    (lambda: [(torch.randn(4, 3, 32, 32), torch.zeros(4))], "torch.float32 labels; give integer class indices"),
    (lambda: [(torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8), torch.zeros(4, dtype=torch.long))],
     "torch.uint8 images; convert them to float and normalise"),
    (lambda: [(torch.randn(4, 1, 32, 32), torch.zeros(4, dtype=torch.long))],
     "cannot run on the scoring images \\(batch 0 has shape \\(4, 1, 32, 32\\)\\)"),
    (lambda: [(torch.full((4, 3, 32, 32), -2.1), torch.arange(4))], "every scoring image is constant"),
])
@pytest.mark.parametrize("entry", ["score", "prune"])
def test_bad_batches_are_data_errors_naming_the_fix(model, batches, match, entry):
    call = hf_px.score if entry == "score" else hf_px.prune
    with pytest.raises(hf_px.DataError, match=match) as info:
        call(model, batches(), method="magnitude")
    assert "\n" not in str(info.value)


def test_a_model_name_instead_of_a_model():
    with pytest.raises(hf_px.ModelError, match="model must be a torch.nn.Module, got a str.*load_model"):
        hf_px.prune("google/vit-base-patch16-224", random_batches())


def test_score_takes_no_sparsity_and_seed_follows_the_cli_rule(model):
    with pytest.raises(hf_px.ConfigError, match="score takes no sparsity.*hf_px.prune\\(.*sparsity=...\\) prunes"):
        hf_px.score(model, random_batches(), method="px", sparsity=0.9)
    for seed in (-1, 1.5, True):
        with pytest.raises(hf_px.ConfigError, match="seed=.* must be an integer >= 0"):
            hf_px.prune(model, random_batches(), method="random", seed=seed)
    from hf_px.config import PruneConfig

    with pytest.raises(hf_px.ConfigError, match="--seed -1 must be an integer >= 0"):
        PruneConfig(model="m", task="cifar10", seed=-1, output="out")


def test_min_layer_density_floor_is_exact_against_a_hand_count():
    """Tensor b's scores all lie below a's: a global threshold at density 0.5 keeps only a's 6 entries, and the
    floor 0.25 makes b keep its own best ceil(0.25 * 4) = 1 entry (the first of its tied best), a the next 5."""
    scores = {"a": torch.tensor([9.0, 8, 7, 6, 5, 4, 3, 2]), "b": torch.tensor([0.5, 0.7, 0.7, 0.1])}
    plain = hf_px.masks_from_scores(scores, 0.5)
    assert plain["a"].tolist() == [True] * 6 + [False] * 2 and not plain["b"].any()
    floored = hf_px.masks_from_scores(scores, 0.5, min_density=0.25)
    assert floored["a"].tolist() == [True] * 5 + [False] * 3
    assert floored["b"].tolist() == [False, True, False, False]
    # masks only shrink: an entry pruned earlier is never chosen by the floor
    shrunk = hf_px.masks_from_scores(scores, 0.5, masks={"a": torch.ones(8, dtype=torch.bool),
                                                         "b": torch.tensor([True, False, False, True])},
                                     min_density=0.25)
    assert shrunk["b"].tolist() == [True, False, False, False]
    with pytest.raises(hf_px.ConfigError, match="min_density"):
        hf_px.masks_from_scores(scores, 0.5, min_density=0.6)


def test_min_channel_density_floor_is_exact_against_a_hand_count():
    """Rows are output channels. Density 5/16 keeps 5 of the 16 scores: a global threshold takes a's row 0 and the
    first of a's tied 0.6s, and leaves b empty. The channel floor 0.1 keeps each row's best alive entry
    (ceil(0.1 * 4) = 1; ties: the lower index), 4 of them, so one weight goes by the threshold: a[0]'s 8."""
    scores = {"a": torch.tensor([[9.0, 8, 7, 1], [0.5, 0.6, 0.6, 0.2]]), "b": torch.tensor([[0.1, 0.3, 0.2, 0.3],
                                                                                          [0.4, 0.1, 0.1, 0.1]])}
    plain = hf_px.masks_from_scores(scores, 5 / 16)
    assert plain["a"].tolist() == [[True] * 4, [False, True, False, False]] and not plain["b"].any()
    floored = hf_px.masks_from_scores(scores, 5 / 16, min_channel_density=0.1)
    assert floored["a"].tolist() == [[True, True, False, False], [False, True, False, False]]
    assert floored["b"].tolist() == [[False, True, False, False], [True, False, False, False]]
    # masks only shrink: b's row 0 keeps its best *alive* entry, a's pruned row stays empty (3 floors, then a[0]'s
    # 8 and 7 by the threshold)
    masks = {"a": torch.tensor([[True] * 4, [False] * 4]), "b": torch.tensor([[True, False, True, False], [True] * 4])}
    shrunk = hf_px.masks_from_scores(scores, 5 / 16, masks=masks, min_channel_density=0.1)
    assert shrunk["a"].tolist() == [[True, True, True, False], [False] * 4]
    assert shrunk["b"].tolist() == [[False, False, True, False], [True, False, False, False]]
    # a larger fraction keeps ceil(0.3 * 4) = 2 per row: 8 weights, more than the density keeps (5)
    with pytest.raises(hf_px.ConfigError, match="keep 8 weights but density 0.3125 keeps only 5"):
        hf_px.masks_from_scores(scores, 5 / 16, min_channel_density=0.3)


def test_floors_overlap_counted_once_and_shares_are_exact_ceilings():
    """Both floors: the per-tensor floor 0.25 keeps 2 of each tensor's 8 (a's 9 and 8, b's 0.4 and its first
    0.3); the channel floor 0.1 keeps each row's best (a's 9 and first 0.6, b's first 0.3 and 0.4), 3 of them
    already in: the floors are 5 weights, not 8. Density 5/16 keeps exactly them; 4/16 cannot."""
    scores = {"a": torch.tensor([[9.0, 8, 7, 1], [0.5, 0.6, 0.6, 0.2]]), "b": torch.tensor([[0.1, 0.3, 0.2, 0.3],
                                                                                          [0.4, 0.1, 0.1, 0.1]])}
    both = hf_px.masks_from_scores(scores, 5 / 16, min_density=0.25, min_channel_density=0.1)
    assert both["a"].tolist() == [[True, True, False, False], [False, True, False, False]]
    assert both["b"].tolist() == [[False, True, False, False], [True, False, False, False]]
    with pytest.raises(hf_px.ConfigError, match="keep 5 weights but density 0.25 keeps only 4"):
        hf_px.masks_from_scores(scores, 4 / 16, min_density=0.25, min_channel_density=0.1)
    # ceil(0.07 * 100) is 7, though the float product is 7.000000000000001; a positive share keeps at least one
    assert hf_px.masks.ceil_share(0.07, 100) == 7 and hf_px.masks.ceil_share(0.071, 100) == 8
    assert hf_px.masks.ceil_share(1e-12, 10) == 1 and hf_px.masks.ceil_share(0.0, 10) == 0
    kept = hf_px.masks_from_scores({"a": torch.rand(4, 100)}, 0.5, min_channel_density=0.07)["a"]
    assert int(kept.sum()) == 200
    assert hf_px.masks.floor_count(torch.Size([4, 100]), 0.0, 0.07) == 28
    assert hf_px.masks.floor_count(torch.Size([4, 100]), 0.5, 0.07) == 200
    # a tensor with no entries (Linear(k, 0)) has no channel to keep
    empty = hf_px.masks_from_scores({"a": torch.rand(0, 5), "b": torch.rand(3, 4)}, 0.5, min_channel_density=0.2)
    assert empty["a"].shape == (0, 5) and int(empty["b"].sum()) == 6


def test_floors_that_cannot_fit_are_refused_before_any_scoring():
    """The floors keep the same count every round while the schedule shrinks: prune refuses them up front (no
    round runs), naming the largest channel floor that fits, and that value then works."""
    batches, rounds_run = random_batches(), []
    with pytest.raises(hf_px.ConfigError) as info:
        hf_px.prune(PlainCNN(in_channels=3), batches, method="px", sparsity=0.98, rounds=5, min_channel_density=0.02,
                    on_round=lambda done, seconds: rounds_run.append(done))
    message = str(info.value)
    assert not rounds_run and "\n" not in message
    assert message.startswith("min_channel_density=0.02 (every output channel keeps ceil(0.02 x its fan-in)")
    hint = float(message.rsplit("at most ", 1)[1])
    assert 0 < hint < 0.02
    masks = hf_px.prune(PlainCNN(in_channels=3), batches, method="magnitude", sparsity=0.98, min_channel_density=hint)
    assert all(mask.reshape(mask.shape[0], -1).any(1).all() for mask in masks.values())
    # the upper end of the range is the density itself, float error included (1 - 0.93 < 0.07)
    with pytest.raises(hf_px.ConfigError, match="min_layer_density=0.07 keeps .* but sparsity=0.93 keeps only"):
        hf_px.prune(PlainCNN(in_channels=3), batches, method="magnitude", sparsity=0.93, min_layer_density=0.07)


def test_prune_channel_floor_keeps_every_output_channel():
    """At 98% sparsity magnitude empties whole output channels of PlainCNN (and a tensor); with the channel floor
    none is empty, the count stays exact, and a floor above the target density is refused naming the bound."""
    import warnings

    from hf_px.masks import kept_and_total

    batches = random_batches()

    def empty_rows(masks):
        return sum(int((~mask.reshape(mask.shape[0], -1).any(1)).sum()) for mask in masks.values())

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the tensor at zero density is the point
        plain = hf_px.prune(PlainCNN(in_channels=3), batches, method="magnitude", sparsity=0.98)
    torch.manual_seed(0)
    floored = hf_px.prune(PlainCNN(in_channels=3), batches, method="magnitude", sparsity=0.98,
                          min_channel_density=0.002)
    assert empty_rows(plain) > 0 and empty_rows(floored) == 0
    assert kept_and_total(floored) == kept_and_total(plain)
    with pytest.raises(hf_px.ConfigError, match="min_channel_density=0.5 must be a number in \\[0, 0.02\\]"):
        hf_px.prune(PlainCNN(in_channels=3), batches, method="magnitude", sparsity=0.98, min_channel_density=0.5)


def test_prune_floor_and_empty_layer_arguments(model):
    import warnings

    batches = random_batches()
    with pytest.raises(hf_px.ConfigError, match="min_layer_density=0.2 must be a number in \\[0, 0.1\\]"):
        hf_px.prune(model, batches, method="magnitude", sparsity=0.9, min_layer_density=0.2)
    # every tensor of PlainCNN keeps >= 5% when asked, whatever magnitude's global ranking prefers
    masks = hf_px.prune(PlainCNN(in_channels=3), batches, method="magnitude", sparsity=0.95, min_layer_density=0.05)
    assert min(hf_px.layer_densities(masks).values()) >= 0.05
    assert hf_px.global_density(masks) == pytest.approx(0.05, abs=1e-3)

    class Tiny(nn.Module):   # a small tensor of tiny weights after a big one: a global threshold empties it
        def __init__(self):
            super().__init__()
            self.big = nn.Linear(3 * 32 * 32, 16)
            self.small = nn.Linear(16, 10)
            with torch.no_grad():
                self.small.weight.mul_(1e-3)

        def forward(self, x):
            return self.small(self.big(x.flatten(1)))

    with pytest.raises(hf_px.ModelError, match="pruned to zero density.*allow_empty_layers=True"):
        hf_px.prune(Tiny(), batches, method="magnitude", sparsity=0.9, targets=["small.weight", "big.weight"],
                    allow_empty_layers=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = hf_px.prune(Tiny(), batches, method="magnitude", sparsity=0.9, targets=["small.weight", "big.weight"])
    assert not masks["small.weight"].any() and any("zero density" in str(w.message) for w in caught)
