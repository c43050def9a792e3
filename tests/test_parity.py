"""Acceptance 2: on a bias-free, BatchNorm-free ReLU CNN with the head among the targets, `px` gives the
authors' scores and their 100-round masks (PX_SPEC §2, parity target).

The reference is `benchmarks/authors_px.py`, an independent restatement of the authors' procedure
(three deep copies, a globally patched `F.relu`, per-batch backward on an all-ones batch).
"""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

import hf_px
from hf_px.testing import PlainCNN, random_batches

_spec = importlib.util.spec_from_file_location(
    "authors_px", Path(__file__).resolve().parents[1] / "benchmarks" / "authors_px.py")
authors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(authors)


def _setup(seed):
    torch.manual_seed(seed)
    model = PlainCNN(in_channels=3, batchnorm=False, bias=False, maxpool=False).double()
    batches = random_batches(2, 8, dtype=torch.float64, seed=seed)
    return model, batches, hf_px.prunable_weights(model)


def _relative_gap(ours, theirs):
    return max(float((ours[n] - theirs[n]).abs().max() / theirs[n].abs().max()) for n in theirs)


@pytest.mark.parametrize("with_masks", [False, True])
def test_one_round_matches_authors_scores(with_masks):
    model, batches, targets = _setup(0)
    assert "fc.weight" in targets and "fc.weight" in hf_px.find_head(model, batches[0][0][:2])
    masks = None
    if with_masks:
        generator = torch.Generator().manual_seed(1)
        masks = {n: torch.rand(p.shape, generator=generator) < 0.5 for n, p in model.named_parameters() if n in targets}
    ours = hf_px.score(model, batches, method="px", targets=targets, masks=masks)
    theirs = authors.authors_px_round(model, batches, targets, masks)
    assert all(theirs[n].abs().max() > 0 for n in targets)
    assert _relative_gap(ours, theirs) < 1e-10


@pytest.mark.parametrize("seed", [0, 1])
def test_hundred_round_masks_match_authors(seed):
    model, batches, targets = _setup(seed)
    density = 0.05
    reference, ours = copy.deepcopy(model), copy.deepcopy(model)
    theirs = authors.authors_px_prune(reference, batches, targets, density, rounds=100, count="round")
    masks = hf_px.prune(ours, batches, "px", sparsity=1 - density, rounds=100, targets=targets)
    for name in targets:
        assert torch.equal(masks[name], theirs[name]), name
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round(density * sum(m.numel() for m in masks.values()))
    params_ref, params_ours = dict(reference.named_parameters()), dict(ours.named_parameters())
    assert all(torch.equal(params_ref[n], params_ours[n]) for n in targets)
