"""Known answers for the steps between scores and a pruned model: the schedule, the exact count, the global
threshold with its tie-breaking, and applying masks (docs/px.md section 8)."""

import pytest
import torch

import hf_px
from hf_px.masks import kept_count


def _bools(*values):
    return torch.tensor(values, dtype=torch.bool)


# ---------------------------------------------------------------------------------------------- schedule


def test_density_schedule_known_answers():
    assert hf_px.density_schedule(0.25, 2) == [0.5, 0.25]
    assert hf_px.density_schedule(0.1, 1) == [0.1]
    assert hf_px.density_schedule(0.008, 3) == pytest.approx([0.2, 0.04, 0.008], rel=1e-12)
    assert hf_px.density_schedule(1.0, 4) == [1.0] * 4


@pytest.mark.parametrize("density, rounds", [(0.018, 100), (0.05, 7), (0.5, 3)])
def test_density_schedule_ends_exactly_at_the_final_density_and_shrinks(density, rounds):
    schedule = hf_px.density_schedule(density, rounds)
    assert len(schedule) == rounds and schedule[-1] == density
    assert all(a > b for a, b in zip(schedule, schedule[1:]))
    # a constant ratio between rounds: d^(1/R)
    assert all(b / a == pytest.approx(density ** (1 / rounds)) for a, b in zip(schedule, schedule[1:]))


def test_kept_count_is_the_authors_count():
    # total - int((1 - d) * total): (1 - 0.95) * 2000 = 100.00000000000009, so 1900 kept
    assert kept_count(0.95, 2000) == 1900
    assert kept_count(0.4, 5) == 2              # 0.6 * 5 = 3.0 pruned
    assert kept_count(0.5, 3) == 2              # int(1.5) = 1 pruned
    assert kept_count(0.9, 10) == 10            # (1 - 0.9) * 10 = 0.9999999999999998: none pruned, one more
                                                # than round(0.9 * 10) (the authors' count, kept for parity)
    assert kept_count(1.0, 7) == 7


# ---------------------------------------------------------------------------------------- the threshold


def test_ties_at_the_threshold_go_to_the_earlier_tensor_and_the_lower_index():
    # five scores, keep 2 of them; three tie at 2.0 for the two places
    scores = {"a": torch.tensor([1.0, 2.0, 2.0]), "b": torch.tensor([2.0, 0.0])}
    masks = hf_px.masks_from_scores(scores, 0.4)
    assert torch.equal(masks["a"], _bools(False, True, True)) and torch.equal(masks["b"], _bools(False, False))
    # the same scores in the other order: "b" is now the earlier tensor
    masks = hf_px.masks_from_scores({"b": scores["b"], "a": scores["a"]}, 0.4)
    assert torch.equal(masks["b"], _bools(True, False)) and torch.equal(masks["a"], _bools(False, True, False))


def test_all_equal_scores_keep_the_first_entries_in_order():
    scores = {"w": torch.zeros(2, 3), "v": torch.zeros(4)}
    masks = hf_px.masks_from_scores(scores, 0.5)     # 10 - int(5.0) = 5 kept: the first 5 of "w" (flat order)
    assert torch.equal(masks["w"], torch.tensor([[True, True, True], [True, True, False]]))
    assert torch.equal(masks["v"], _bools(False, False, False, False))


def test_strictly_higher_scores_win_before_any_tie_is_broken():
    scores = {"a": torch.tensor([3.0, 1.0, 1.0]), "b": torch.tensor([1.0, 5.0])}
    masks = hf_px.masks_from_scores(scores, 0.6)     # 5 - int(2.0) = 3 kept: 5, 3 and the first 1
    assert torch.equal(masks["a"], _bools(True, True, False)) and torch.equal(masks["b"], _bools(False, True))


def test_pruned_entries_are_never_revived_and_alive_ones_cap_the_count():
    scores = {"a": torch.tensor([1.0, 2.0, 10.0]), "b": torch.tensor([9.0, 3.0])}
    previous = {"a": _bools(True, True, False), "b": _bools(False, True)}
    masks = hf_px.masks_from_scores(scores, 0.4, previous)   # keep 2 of the 3 alive: 3 and 2, never 10 or 9
    assert torch.equal(masks["a"], _bools(False, True, False)) and torch.equal(masks["b"], _bools(False, True))
    masks = hf_px.masks_from_scores(scores, 0.9, previous)   # asks for 5, only 3 are alive: masks only shrink
    assert all(torch.equal(masks[n], previous[n]) for n in previous)


def test_float64_scores_are_compared_in_float64():
    scores = {"a": torch.tensor([1.0, 1.0 + 1e-12], dtype=torch.float64)}   # equal in float32
    assert torch.equal(hf_px.masks_from_scores(scores, 0.5)["a"], _bools(False, True))


def test_bad_density_and_nonfinite_scores_are_refused():
    with pytest.raises(hf_px.ConfigError, match="density"):
        hf_px.masks_from_scores({"a": torch.ones(3)}, 0.0)
    with pytest.raises(hf_px.ModelError, match="NaN or inf"):
        hf_px.masks_from_scores({"a": torch.tensor([1.0, float("nan")])}, 0.5)


def test_densities_known_answers():
    masks = {"a": _bools(True, False, False, False), "b": _bools(True, True)}
    assert hf_px.layer_densities(masks) == {"a": 0.25, "b": 1.0}
    assert hf_px.global_density(masks) == 0.5


# --------------------------------------------------------------------------------------------- applying


def test_apply_masks_zeroes_exactly_the_pruned_weights():
    layer = torch.nn.Linear(3, 2).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]]))
        layer.bias.copy_(torch.tensor([7.0, 8.0]))
    mask = torch.tensor([[True, False, True], [False, False, True]])
    assert hf_px.apply_masks_(layer, {"weight": mask}) is layer
    assert torch.equal(layer.weight, torch.tensor([[1.0, 0.0, 3.0], [0.0, 0.0, -6.0]], dtype=torch.float64))
    assert torch.equal(layer.bias, torch.tensor([7.0, 8.0], dtype=torch.float64))   # no mask: untouched
    assert layer.weight.requires_grad and layer.weight.grad is None


def test_apply_masks_checks_every_mask_before_changing_any_weight():
    layer = torch.nn.Linear(3, 2)
    before = layer.weight.detach().clone()
    masks = {"weight": torch.zeros(2, 3, dtype=torch.bool), "bias": torch.zeros(3, dtype=torch.bool)}
    with pytest.raises(hf_px.MaskError, match="'bias' has shape \\(3,\\) but the weight has \\(2,\\)"):
        hf_px.apply_masks_(layer, masks)
    assert torch.equal(layer.weight, before)
