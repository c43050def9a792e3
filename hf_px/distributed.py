"""Data-parallel pruning under `accelerate launch` / `torchrun`: who am I, sum PX's data term, check masks agree.

Every process holds the whole model and scores its own shard of the images; PX's data term C is the only
quantity that depends on the images, so summing it across processes gives every process the same scores.
"""

import hashlib
import os

import torch
import torch.distributed as dist

from .errors import ConfigError, ModelError


def world() -> tuple[int, int]:
    """(rank, number of processes) of the initialised torch.distributed group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def sum_float64_across_processes(tensor: torch.Tensor, exponent: int) -> tuple[torch.Tensor, int]:
    """Sum `tensor * 2**-exponent` over processes, in float64; returns (sum, common exponent).

    Each process may carry its own power-of-two exponent: all move to the smallest one (an exact scaling
    by a power of two) before the sum, so the result is as exact as a float64 sum of the parts.
    """
    size = world()[1]
    if size == 1:
        return tensor, exponent
    common = torch.tensor(int(exponent), dtype=torch.int64, device=tensor.device)
    dist.all_reduce(common, op=dist.ReduceOp.MIN)
    common = int(common)
    total = torch.ldexp(tensor.double(), torch.tensor(common - int(exponent), dtype=torch.float64,
                                                      device=tensor.device))
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total, common


def masks_digest(masks: dict[str, torch.Tensor]) -> str:
    """A sha256 of the masks (names, shapes and bits): equal digests mean identical masks."""
    digest = hashlib.sha256()
    for name in sorted(masks):
        mask = masks[name].detach().to(torch.bool).cpu()
        digest.update(name.encode())
        digest.update(str(tuple(mask.shape)).encode())
        digest.update(mask.flatten().numpy().tobytes())
    return digest.hexdigest()


def check_same_masks(masks: dict[str, torch.Tensor]) -> None:
    """Raise ModelError unless every process holds bit-identical masks (compares a sha256 digest)."""
    if world()[1] == 1:
        return
    value = int(masks_digest(masks)[:15], 16)
    device = next(iter(masks.values())).device if masks else torch.device("cpu")
    low = torch.tensor(value, dtype=torch.int64, device=device)
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if int(low) != int(high):
        raise ModelError(f"the {world()[1]} processes ended with different masks (rank {world()[0]}); a method "
                         "or model is not deterministic across processes: run one process")


def start_from_launcher(device_name: str) -> torch.device:
    """The device of this process; under a launcher (WORLD_SIZE > 1) first join its process group.

    The group is built by accelerate: gloo for `--device cpu` or without CUDA, else NCCL with one GPU per
    process. Without a launcher this is just `torch.device(device_name)` ("auto": cuda if available).
    """
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not (launched or world()[1] > 1):
        if device_name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return _parse_device(device_name)
    if device_name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {device_name!r} names one device but {os.environ.get('WORLD_SIZE')} processes "
                          "were launched; use cpu, cuda or auto (each process takes its own GPU)")
    from accelerate import PartialState

    cpu = device_name == "cpu" or not torch.cuda.is_available()
    if device_name == "cuda" and cpu:
        raise ConfigError("--device cuda but torch sees no GPU; use --device cpu")
    state = PartialState(cpu=cpu)
    return torch.device("cpu") if cpu else state.device


def _parse_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ConfigError(f"--device {name!r} is not a torch device ({error}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {name} but torch sees no GPU; use --device cpu or auto")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {name} but torch sees {count} GPU(s) (cuda:0 to cuda:{count - 1}); "
                              "choose one of those")
    elif device.type not in ("cpu", "mps"):
        raise ConfigError(f"--device {name!r}: hf-px runs on cpu, cuda or cuda:N")
    return device
