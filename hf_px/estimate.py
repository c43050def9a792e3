"""What a pruning run will cost, said before it starts: time and peak memory from one timed forward pass of
one scoring batch, then refined by the first round as it runs.

A round of a method costs about `forwards_per_image` forward passes per scoring image (a PX round is
<= 3 of them: benchmarks/bench_px.py measures it; the gradient methods are counted: a backward pass costs
about two forwards). Its peak memory is about a training step's on one batch: the weights' gradients plus
the activations a forward pass keeps for its backward (bench_px: a PX round's peak is 1.0-1.2x that), so
the estimate is `3 x weights + kept activations`, over what is already in use.
"""

import ctypes
import gc
import math
import os
import time
from dataclasses import dataclass

import torch
from torch import nn

from .batches import logits_of

LONG_CPU_RUN_S = 600    # a CPU run expected to take longer than this gets a warning naming cheaper choices

# forward passes per scoring image in one round (see the module docstring); methods not listed count as 3
_FORWARDS_PER_IMAGE = {"px": 3.0, "snip": 3.0, "grasp": 10.0, "synflow": 0.0, "magnitude": 0.0, "random": 0.0}


def forwards_per_image(criterion) -> float:
    """About how many forward passes over every scoring image one round of `criterion` costs."""
    if criterion.name == "px-exact":       # one forward, then one backward (~2 forwards) per probe
        return 1.0 + 2.0 * criterion.probes
    if criterion.name == "px" and getattr(criterion, "gate_only", None) == "px-exact":   # and px-exact for W_Q/W_K
        from .criteria import make_criterion

        return _FORWARDS_PER_IMAGE["px"] + forwards_per_image(make_criterion("px-exact"))
    if criterion.name == "ntk-sap":        # per repeat: two forwards (fresh and perturbed weights), one backward
        return 6.0 * criterion.repeats
    return _FORWARDS_PER_IMAGE.get(criterion.name, 3.0)


@dataclass
class Measurement:
    """One forward pass over one scoring batch, with autograd recording (as a training step's forward)."""

    seconds: float
    batch_size: int
    kept_bytes: int | None    # memory the recorded graph holds (activations kept for backward); None: unknown


def measure_forward(model: nn.Module, images: torch.Tensor) -> Measurement:
    """Time one forward pass of `model` on `images` and measure the activations it keeps for a backward.
    Leaves the model as it was (no gradients are computed)."""
    device = images.device
    # a first pass at a new input shape sets up kernels and buffers (on the CPU, several times a pass's
    # cost for a small model), which no round pays again: it is run first, untimed
    with torch.no_grad():
        logits_of(model(images))
    _sync(device)
    before = _memory_in_use(device)
    start = time.perf_counter()
    with torch.enable_grad():
        out = logits_of(model(images))
        _sync(device)
        seconds = time.perf_counter() - start
        after = _memory_in_use(device)
    del out
    kept = None if before is None or after is None else max(0, after - before)
    return Measurement(seconds, len(images), kept)


@dataclass
class Estimate:
    seconds: float                  # the whole pruning (all rounds)
    round_seconds: float
    rounds: int
    peak_bytes: int | None          # over the memory in use before pruning; None: unknown
    device: str
    basis: str                      # what the estimate was computed from, for the user

    def lines(self) -> list[str]:
        """What `hf-px prune` prints, and a warning line when a CPU run is long."""
        memory = f", peak memory about +{_size(self.peak_bytes)}" if self.peak_bytes is not None else ""
        lines = [f"estimate  about {_duration(self.seconds)} for {self.rounds} rounds "
                 f"({_duration(self.round_seconds)} each, {self.basis}){memory}"]
        if self.device == "cpu" and self.seconds > LONG_CPU_RUN_S:
            lines.append(f"warning   this CPU run is expected to take about {_duration(self.seconds)}; cheaper: fewer "
                         "rounds (--rounds), fewer scoring images (--examples-per-class), --method px (a px round "
                         "costs ~3 forward passes, px-exact 1 + 2 x probes), or a GPU (--device cuda)")
        return lines


def estimate_prune(criterion, rounds: int, measurement: Measurement, images: int, model: nn.Module,
                   device: torch.device | str) -> Estimate:
    """The cost of `rounds` rounds of `criterion` over `images` scoring images (this process's share)."""
    per_image = forwards_per_image(criterion)
    round_seconds = measurement.seconds / measurement.batch_size * images * per_image
    if per_image == 0:   # data-free methods (magnitude, synflow): about one forward of one batch per round
        round_seconds = measurement.seconds
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = None if measurement.kept_bytes is None else 3 * weights + measurement.kept_bytes
    basis = (f"from a timed forward pass of one batch: {measurement.seconds:.2f} s for {measurement.batch_size} "
             f"images; ~{per_image:g} forward passes per image per round")
    return Estimate(round_seconds * rounds, round_seconds, rounds, peak, torch.device(device).type, basis)


def refine(estimate: Estimate, done: int, elapsed: float, last_round: float) -> Estimate:
    """The estimate once `done` rounds took `elapsed` seconds, the last of them `last_round`: the rest at the
    last round's pace (a px round after the first runs on a masked network and costs more than the first)."""
    return Estimate(elapsed + last_round * (estimate.rounds - done), last_round, estimate.rounds,
                    estimate.peak_bytes, estimate.device, f"measured: {done} rounds in {_duration(elapsed)}")


def _memory_in_use(device: torch.device) -> int | None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device)
    try:    # resident memory, after handing freed heap memory back (glibc); None where that cannot be read
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.2g} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GB" if count >= 2**30 else f"{math.ceil(count / 2**20)} MB"
