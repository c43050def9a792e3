"""Data-parallel pruning: PX's data term summed across 2 gloo processes (CPU), the same masks as one process.

Processes are real: `torch.multiprocessing.spawn` for the library, `accelerate launch` for the CLI.
"""

import contextlib
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import hf_px
from hf_px.cli import main
from hf_px.distributed import sum_float64_across_processes, world
from hf_px.testing import random_batches, resnet20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _one_thread():
    """One intra-op thread, as in the spawned/launched processes: the same rounding, and no OpenMP
    spinning when the 2 shared cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _join(rank, size, rendezvous):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=size)


# ---- 1. the float64 sum with a different exponent on every rank ----

_PARTS = {0: ([1 / 3, 1e-300, -2.5, 7.0], 4), 1: ([0.1, 3.0, 2.5, -1e10], -3)}   # (values, exponent)


def _sum_worker(rank, rendezvous, out):
    _join(rank, 2, rendezvous)
    try:
        values, exponent = _PARTS[rank]
        total, common = sum_float64_across_processes(torch.tensor(values, dtype=torch.float64), exponent)
        torch.save({"total": total, "exponent": common, "world": world()}, f"{out}{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sum_float64_across_processes_moves_both_ranks_to_the_smallest_exponent(tmp_path):
    mp.spawn(_sum_worker, args=(str(tmp_path / "rdv"), str(tmp_path / "rank")), nprocs=2)
    # by hand: E = min(4, -3) = -3; rank 0's values are scaled by 2**(-3 - 4), rank 1's by 2**0
    expected = torch.tensor([v * 2.0 ** -7 for v in _PARTS[0][0]], dtype=torch.float64) \
        + torch.tensor(_PARTS[1][0], dtype=torch.float64)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["exponent"] == -3 and got["world"] == (rank, 2)
        assert torch.equal(got["total"], expected)
    assert world() == (0, 1) and sum_float64_across_processes(torch.ones(2, dtype=torch.float64), 5)[1] == 5


# ---- 2. hf_px.prune on shards in 2 processes == hf_px.prune on all batches in one ----

def _shard(batches, rank, size, batch_size):
    images = torch.cat([x for x, _ in batches])[rank::size]
    labels = torch.cat([y for _, y in batches])[rank::size]
    return [(images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(labels), batch_size)]


def _prune_worker(rank, rendezvous, folder):
    _join(rank, 2, rendezvous)
    try:
        model = resnet20().double()
        model.load_state_dict(torch.load(f"{folder}/model.pt"))
        batches = _shard(torch.load(f"{folder}/batches.pt"), rank, 2, 4)
        masks = hf_px.prune(model, batches, method="px", sparsity=0.9, rounds=5)
        torch.save(masks, f"{folder}/masks{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_px_on_two_shards_gives_the_masks_of_one_process_on_all_batches(tmp_path):
    torch.manual_seed(0)
    model = resnet20().double()
    batches = random_batches(n_batches=3, batch_size=4, dtype=torch.float64, seed=1)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.save(batches, tmp_path / "batches.pt")
    mp.spawn(_prune_worker, args=(str(tmp_path / "rdv"), str(tmp_path)), nprocs=2)
    with _one_thread():
        expected = hf_px.prune(model, batches, method="px", sparsity=0.9, rounds=5)
    ranks = [torch.load(tmp_path / f"masks{r}.pt") for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys() == expected.keys()
    assert all(torch.equal(ranks[0][n], ranks[1][n]) for n in expected)
    # float64 sums in another order differ by ~1e-16 relative: only scores tied that closely could flip
    differ = sum(int((ranks[0][n] != expected[n]).sum()) for n in expected)
    assert differ == 0


# ---- 3. `accelerate launch -m hf_px prune` with 2 CPU processes == `hf-px prune` in one ----


@pytest.mark.slow
@pytest.mark.needs_fashion_mnist
@pytest.mark.parametrize("method", ["head=path", "head=real", "auto"])
def test_accelerate_launch_two_processes_writes_one_checkpoint_with_the_one_process_masks(
        method, vit_folder, dataset, tmp_path, monkeypatch):
    """px shards the images across the processes; auto's px with gate_only=px-exact cannot, so every process
    scores them all."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    chosen = ["--method", "px", "--option", method] if method != "auto" else []   # auto: the default
    args = ["prune", str(vit_folder), "--dataset", str(dataset), "--sparsity", "0.9", "--rounds", "5",
            "--examples-per-class", "2", "--batch-size", "8", "--no-progress", "--device", "cpu",
            "--eval-examples", "20", *chosen,
            "--allow-empty-layers"]   # PX empties the random tiny ViT's MLPs at 90%: not what this test is about
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", env["MASTER_PORT"], "-m", "hf_px"]
    run = subprocess.run(launch + args + ["--output", str(tmp_path / "two")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["two"]          # one checkpoint, nothing else written
    assert run.stdout.count("loading ") == 1 and run.stdout.count("saved ") == 1, run.stdout
    assert ("processes 2, each scoring all images (px is not data-parallel)" if method == "auto" else
            "processes 2, each scoring its shard") in run.stdout, run.stdout

    with _one_thread():
        assert main(args + ["--output", str(tmp_path / "one")]) == 0
    _, two = hf_px.load_sparse(str(tmp_path / "two"))
    _, one = hf_px.load_sparse(str(tmp_path / "one"))
    assert two.keys() == one.keys()
    # float32 surrogates on other batch compositions and a float64 sum in another order: scores move by
    # ~1e-7 relative, which may swap a few near-tied weights at the threshold, never more
    differ = sum(int((two[n] != one[n]).sum()) for n in one)
    total = sum(m.numel() for m in one.values())
    assert differ <= max(4, total // 10_000), f"{differ} of {total} mask entries differ"
    assert sum(int(m.sum()) for m in two.values()) == sum(int(m.sum()) for m in one.values())
