"""Parity of hf_px's PX with the authors' procedure, restated in `hf_px.testing` (`authors_px_round`,
`authors_px_prune`: what it computes is listed there; docs/px.md section 11).

Run `python benchmarks/authors_px.py` to check parity with `hf_px` on a bias-free ReLU CNN in float64.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

from hf_px.testing import authors_px_prune, authors_px_round


# --- parity check against hf_px ----------------------------------------------------------------------------

def verify(rounds: int = 100, density: float = 0.05, seed: int = 0) -> bool:
    import hf_px
    from hf_px.testing import PlainCNN, random_batches

    torch.manual_seed(seed)
    model = PlainCNN(in_channels=3, batchnorm=False, bias=False, maxpool=False).double()
    batches = random_batches(2, 8, dtype=torch.float64, seed=seed)
    targets = hf_px.prunable_weights(model)
    print(f"targets: {targets}")

    ours = hf_px.score(model, batches, method="px", targets=targets)
    theirs = authors_px_round(model, batches, targets)
    worst = max(float(((ours[n] - theirs[n]).abs().max() / theirs[n].abs().max())) for n in targets)
    print(f"one round, no masks: max |hf_px - authors| / max|authors| per tensor = {worst:.3e}")
    ok = worst < 1e-10

    # one round with masks (random 50%), so that the masked conventions are checked too
    generator = torch.Generator().manual_seed(seed + 1)
    params = dict(model.named_parameters())
    masks = {n: torch.rand(params[n].shape, generator=generator) < 0.5 for n in targets}
    ours = hf_px.score(model, batches, method="px", targets=targets, masks=masks)
    theirs = authors_px_round(model, batches, targets, masks)
    worst_masked = max(float(((ours[n] - theirs[n]).abs().max() / theirs[n].abs().max())) for n in targets)
    print(f"one round, random 50% masks: max relative difference = {worst_masked:.3e}")
    ok &= worst_masked < 1e-10

    sparsity = 1.0 - density
    model_b = copy.deepcopy(model)
    masks_ours = hf_px.prune(model_b, batches, "px", sparsity=sparsity, rounds=rounds, targets=targets)
    total = sum(m.numel() for m in masks_ours.values())
    for count in ("authors", "exact"):
        reference = copy.deepcopy(model)
        masks_theirs = authors_px_prune(reference, batches, targets, density, rounds, count=count)
        differ = sum(int((masks_ours[n] != masks_theirs[n]).sum()) for n in targets)
        print(f"{rounds} rounds to density {density}, count={count!r}: kept hf_px "
              f"{sum(int(m.sum()) for m in masks_ours.values())}/{total}, reference "
              f"{sum(int(m.sum()) for m in masks_theirs.values())}/{total}; differing mask entries: {differ}")
        if count == "authors" and differ:
            print("  (the authors' rule prunes every score tied at the threshold; see count='exact')")
        if count == "exact":
            ok &= differ == 0
    weights_equal = all(torch.equal(dict(reference.named_parameters())[n], dict(model_b.named_parameters())[n])
                        for n in targets)
    print(f"pruned weights identical: {weights_equal}")
    ok &= weights_equal
    print("PARITY OK" if ok else "PARITY FAILED")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.exit(0 if verify(args.rounds, args.density, args.seed) else 1)
