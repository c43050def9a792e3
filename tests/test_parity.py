"""Acceptance 2: on a bias-free, BatchNorm-free ReLU CNN with the head among the targets, `px` gives the
authors' scores and their 100-round masks (docs/px.md section 11, the parity target).

The reference is `hf_px.testing.authors_px_round`/`authors_px_prune`, an independent restatement of the
authors' procedure (three deep copies, a globally patched `F.relu`, per-batch backward on an all-ones batch).
"""

import copy

import pytest
import torch

import hf_px
from hf_px import testing as authors
from hf_px.testing import PlainCNN, random_batches


def _setup(seed, masked=False):
    torch.manual_seed(seed)
    model = PlainCNN(in_channels=3, batchnorm=False, bias=False, maxpool=False, masked=masked).double()
    batches = random_batches(2, 8, dtype=torch.float64, seed=seed)
    return model, batches, hf_px.prunable_weights(model)


def _relative_gap(ours, theirs):
    return max(float((ours[n] - theirs[n]).abs().max() / theirs[n].abs().max()) for n in theirs)


@pytest.mark.parametrize("masked_layers", [False, True], ids=["torch-layers", "authors-layers"])
@pytest.mark.parametrize("with_masks", [False, True])
def test_one_round_matches_authors_scores(with_masks, masked_layers):
    """authors-layers: the model is built like the authors' (a weight_mask buffer multiplied into each
    weight in forward), so no op ever sees the head's parameter itself."""
    model, batches, targets = _setup(0, masked_layers)
    assert "fc.weight" in targets and "fc.weight" in hf_px.find_head(model, batches[0][0][:2])
    masks = None
    if with_masks:
        generator = torch.Generator().manual_seed(1)
        masks = {n: torch.rand(p.shape, generator=generator) < 0.5 for n, p in model.named_parameters() if n in targets}
    ours = hf_px.score(model, batches, method="px", targets=targets, masks=masks)
    theirs = authors.authors_px_round(model, batches, targets, masks)
    assert all(theirs[n].abs().max() > 0 for n in targets)
    assert _relative_gap(ours, theirs) < 1e-10


# seed 1 reaches dead units (alive weights scoring exactly 0) near 5%: the authors' rule prunes every score
# tied at the threshold, hf_px keeps the exact count (ties by position), so the reference breaks ties as we do
@pytest.mark.parametrize("seed, count, masked_layers", [(0, "authors", False), (0, "authors", True),
                                                        (1, "exact", False)])
def test_hundred_round_masks_match_authors(seed, count, masked_layers):
    model, batches, targets = _setup(seed, masked_layers)
    density = 0.05
    reference, ours = copy.deepcopy(model), copy.deepcopy(model)
    theirs = authors.authors_px_prune(reference, batches, targets, density, rounds=100, count=count)
    masks = hf_px.prune(ours, batches, "px", sparsity=1 - density, rounds=100, targets=targets)
    for name in targets:
        assert torch.equal(masks[name], theirs[name]), name
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == total - int((1 - density) * total)
    params_ref, params_ours = dict(reference.named_parameters()), dict(ours.named_parameters())
    assert all(torch.equal(params_ref[n], params_ours[n]) for n in targets)


def test_authors_style_resnet20_scores_like_the_plain_one():
    """The same ResNet-20 built from the authors'-style layers (masks multiplied in forward, identity
    shortcuts with a per-channel weight of ones) computes the same function, so it must get the same PX
    scores: the head is found through the masked Linear, and the shortcut's (C, 1, 1) weight stays on the
    identity paths (dropping it, as an additive term, would cut them)."""
    from hf_px.testing import resnet20

    torch.manual_seed(0)
    plain, styled = resnet20().double().eval(), resnet20(masked=True).double().eval()
    missing, unexpected = styled.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(n.endswith("weight_mask") or n.endswith("shortcut.weight") for n in missing)
    batches = random_batches(2, 4, dtype=torch.float64, seed=0)
    assert hf_px.find_head(styled, batches[0][0][:1]) == ["fc.weight", "fc.bias"]
    ours, theirs = hf_px.score(plain, batches, method="px"), hf_px.score(styled, batches, method="px")
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(theirs[name], ours[name], rtol=1e-9, atol=0)
