"""One command for a session lent a GPU: are hf_px's device paths correct on CUDA, and what does ViT-B/16 cost?

    python benchmarks/gpu_check.py --out DIR            # on one GPU, about 6 minutes at most
    python benchmarks/gpu_check.py --out DIR --smoke    # the same code paths on the CPU, tiny, in a minute

Needs no network: every model is built from a config, the data are random or the local Fashion-MNIST package.
Parts, each in its own try/except (a failure is recorded with its traceback and the next part runs), run in
the order a, c, d, b; DIR/gpu_check.json is rewritten after every part and a one-line summary printed:

  a  parity: `hf_px.prune` px masks on the device equal the CPU's, bit for bit, on two tiny-zoo models in
     float64 (a CNN with BN and max-pool, a transformers ViT with sdpa: gate-only W_Q/W_K entries); also
     reported, not judged: px-exact in float64 and px on a float32 model with kernel_dtype=float64.
  c  ViT-B/16 (timm vit_base_patch16_224, pretrained=False) at 224 px on 1000 random scoring images: a PX
     round (first, and 90%-masked) over one forward pass, interleaved; a round's peak memory over one
     training step's on one batch; total `hf_px.prune` time for px (100 rounds) and px-exact (20 rounds)
     in float32, and px with TF32 matmuls (`torch.backends.cuda.matmul.allow_tf32`) with its masks'
     agreement with the float32 ones. A run that would overrun the part's time budget is cut to the rounds
     that fit and its total is projected from them (recorded as such).
  d  fine-tuning: a tiny transformers ViT is pruned through `hf-px prune` on the device (head fit, probe,
     checkpoint saved from device tensors), fine-tuned for one short epoch in bf16 and in fp16 (Accelerate's
     gradient scaler), and every checkpoint is reloaded: masks identical, pruned weights exactly zero.
  b  `benchmarks/bench_px.py --device cuda` (ResNet-20, ViT-6L, ViT-B/16), its JSON kept in DIR.

`--smoke` (used by tests/test_gpu_check.py) runs every part on the CPU at toy sizes: it checks the script,
not the GPU. Nothing in it is judged on time.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

BUDGET_S = {"a": 40, "c": 170, "d": 60, "b": 100}     # per part, on the GPU; the whole run stays under 6 min
SMOKE_BUDGET_S = {"a": 60, "c": 120, "d": 120, "b": 120}


def _agreement(first: dict, second: dict) -> float:
    """Fraction of target entries on which two sets of masks agree."""
    same = sum(int((first[n].cpu() == second[n].cpu()).sum()) for n in first)
    return same / max(1, sum(m.numel() for m in first.values()))


# --- a: CPU/device parity ---------------------------------------------------------------------------------

def part_parity(device: str, smoke: bool) -> dict:
    import torch

    import hf_px
    from hf_px.testing import random_batches, tiny_zoo

    zoo, rows = tiny_zoo(), []
    cases = [("plain_cnn", "px", {}, torch.float64), ("hf_vit_sdpa", "px", {}, torch.float64),
             ("hf_vit_sdpa", "px-exact", {}, torch.float64),
             ("plain_cnn", "px", {"kernel_dtype": "float64"}, torch.float32)]
    for model_name, method, options, dtype in cases:
        torch.manual_seed(0)
        model = zoo[model_name]().to(dtype).eval()
        batches = random_batches(2, 4, dtype=dtype)
        rounds = 2 if method == "px-exact" else 5
        masks = {}
        for where in ("cpu", device):
            twin = copy.deepcopy(model).to(where)
            moved = [(x.to(where), y.to(where)) for x, y in batches]
            masks[where] = hf_px.prune(twin, moved, method=method, sparsity=0.8, rounds=rounds, seed=0, **options)
            if where == device:
                on_device = all(m.device.type == torch.device(device).type for m in masks[where].values())
        exact = model_name != "plain_cnn" or dtype == torch.float64
        same = all(torch.equal(masks["cpu"][n], masks[device][n].cpu()) for n in masks["cpu"])
        rows.append({"model": model_name, "method": method, "options": options, "dtype": str(dtype),
                     "rounds": rounds, "identical": same, "agreement": _agreement(masks["cpu"], masks[device]),
                     "masks_on_device": on_device, "judged": method == "px" and exact})
    judged = [r for r in rows if r["judged"]]
    return {"ok": all(r["identical"] and r["masks_on_device"] for r in judged), "rows": rows,
            "note": "judged: px masks bit-identical in float64; px-exact and the float32 model are reported only"}


# --- c: ViT-B/16 at 224 px ------------------------------------------------------------------------------------

def part_vitb(device: str, smoke: bool, deadline: float) -> dict:
    import torch

    import hf_px
    from hf_px.criteria import make_criterion
    from hf_px.masks import density_schedule, masks_from_scores

    sys.path.insert(0, str(HERE))
    from bench_px import peak_increase

    import timm
    torch.manual_seed(0)
    if smoke:
        name, kwargs, images, batch_size, resolution = "vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}, 8, 4, 32
    else:
        name, kwargs, images, batch_size, resolution = "vit_base_patch16_224", {}, 1000, 100, 224
    model = timm.create_model(name, pretrained=False, **kwargs).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch_size, 3, resolution, resolution, generator=generator).to(device),
                torch.randint(0, model.num_classes, (batch_size,), generator=generator).to(device))
               for _ in range(images // batch_size)]
    head = hf_px.find_head(model, batches[0][0][:2])
    targets = [n for n in hf_px.prunable_weights(model) if n not in head]
    params = dict(model.named_parameters())
    ones = {n: torch.ones_like(params[n], dtype=torch.bool) for n in targets}
    pruned = {n: (torch.rand(params[n].shape, generator=generator) < 0.1).to(device) for n in targets}
    score_round = make_criterion("px").scorer(model, batches, targets, head, 0)

    calls = {**common.forward_and_train_calls(model, batches),
             "px": lambda: masks_from_scores(score_round(ones), density_schedule(0.1, 100)[0], ones),
             "px-masked": lambda: masks_from_scores(score_round(pruned), 0.09, pruned)}
    result = {"model": name, "images": images, "batch_size": batch_size, "resolution": resolution,
              "params": sum(p.numel() for p in model.parameters()), "peak_mb": {}, "times_s": {}}
    for call_name, call in calls.items():
        common.timed(call, device)                                    # warm-up (cuDNN, allocator)
        result["peak_mb"][call_name] = peak_increase(call, device)
    times = {k: [] for k in calls}
    for _ in range(3):
        for call_name, call in calls.items():
            times[call_name].append(common.timed(call, device))
    result["times_s"] = times
    result["round_over_forward"] = {k: statistics.median(a / b for a, b in zip(times[k], times["forward"]))
                                    for k in ("px", "px-masked")}
    result["round_peak_over_train_peak"] = {k: result["peak_mb"][k] / result["peak_mb"]["train"]
                                            for k in ("px", "px-masked")}
    del score_round
    write_progress(result)

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    round_s = statistics.median(times["px-masked"])
    runs = [("px", 100, False), ("px-exact", 20, False), ("px", 100, True)]
    if smoke:
        runs = [("px", 3, False), ("px-exact", 2, False), ("px", 3, True)]
    result["prune"], reference = [], None
    for method, rounds, tf32 in runs:
        model.load_state_dict(state)
        left = deadline - time.perf_counter() - 5
        per_round = round_s * (8 if method == "px-exact" else 1.2)    # px-exact: 8 probes' backward passes
        run_rounds = rounds if per_round * rounds < left else max(1, int(left / per_round))
        if left <= per_round:
            result["prune"].append({"method": method, "rounds": rounds, "tf32": tf32, "skipped": "out of time"})
            continue
        previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        try:
            start = time.perf_counter()
            masks = hf_px.prune(model, batches, method=method, sparsity=0.9, rounds=run_rounds, targets=targets)
            common.sync(device)
            seconds = time.perf_counter() - start
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
        row = {"method": method, "rounds": rounds, "tf32": tf32, "rounds_run": run_rounds, "seconds": seconds,
               "density": hf_px.global_density(masks)}
        if run_rounds < rounds:   # only the first run_rounds of the schedule ran: project the rest
            row["projected_seconds"] = seconds / run_rounds * rounds
        if method == "px" and not tf32 and run_rounds == rounds:
            reference = masks
        elif method == "px" and tf32 and reference is not None and run_rounds == rounds:
            row["agreement_with_float32"] = _agreement(reference, masks)
        result["prune"].append(row)
        write_progress(result)
    px = next((r for r in result["prune"] if r["method"] == "px" and not r["tf32"] and "seconds" in r), None)
    result["ok"] = px is not None
    return result


# --- d: fine-tuning in bf16 and fp16 ----------------------------------------------------------------------

def _dataset(folder: Path) -> tuple[Path, str]:
    """A save_to_disk dataset: real Fashion-MNIST images when the package is installed, else random ones."""
    from hf_px.data import FASHION_MNIST_CLASSES, FASHION_MNIST_ROOT

    if (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file():
        from hf_px.testing import write_fashion_mnist_dataset
        return write_fashion_mnist_dataset(folder, per_class_train=8, per_class_test=3), "fashion-mnist"
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=list(FASHION_MNIST_CLASSES))})

    def split(count):
        return datasets.Dataset.from_dict(
            {"image": [Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(count)],
             "label": [i % 10 for i in range(count)]}, features=features)

    datasets.DatasetDict({"train": split(80), "test": split(30)}).save_to_disk(str(folder))
    return folder, "random images"


def part_finetune(device: str, smoke: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        return _finetune(Path(scratch), device)


def _finetune(root: Path, device: str) -> dict:
    import contextlib
    import io

    import torch
    import transformers as tf

    import hf_px
    from hf_px import finetune as ft
    from hf_px.cli import main as cli
    from hf_px.data import FASHION_MNIST_CLASSES
    from hf_px.errors import ConfigError

    data, source = _dataset(root / "data")
    torch.manual_seed(0)
    config = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, num_labels=10, id2label=dict(enumerate(FASHION_MNIST_CLASSES)))
    tf.ViTForImageClassification(config).save_pretrained(root / "dense")
    tf.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.286] * 3,
                         image_std=[0.353] * 3).save_pretrained(root / "dense")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli(["prune", str(root / "dense"), "--dataset", str(data), "--sparsity", "0.8", "--method", "px",
                    "--rounds", "3", "--examples-per-class", "2", "--eval-examples", "10", "--device", device,
                    "--allow-empty-layers", "--output", str(root / "pruned"), "--no-progress"])
    if code:
        raise RuntimeError(f"hf-px prune exited with {code}: {printed.getvalue()[-500:]}")
    _, masks = hf_px.load_sparse(str(root / "pruned"))
    result = {"data": source, "prune_exit": code, "prune_output": printed.getvalue()[-2000:], "runs": []}
    for precision in ("bf16", "fp16"):
        output = root / f"tuned-{precision}"
        run = {"precision": precision}
        try:
            recipe = ft.FinetuneConfig(model=str(root / "pruned"), output=str(output), optimizer="adamw", lr=1e-3,
                                       epochs=1, batch_size=16, train_examples=64, eval_examples=20,
                                       precision=precision, device="cuda" if device.startswith("cuda") else "cpu",
                                       weight_decay=0.01, seed=0)
            start = time.perf_counter()
            history = ft.run_finetune(recipe, progress=False, log=lambda *a, **k: None).history
            run["seconds"] = time.perf_counter() - start
        except ConfigError as error:
            if precision == "fp16" and not device.startswith("cuda"):
                run["skipped"] = f"needs a GPU ({error})"
                result["runs"].append(run)
                continue
            raise
        model, saved = hf_px.load_sparse(str(output))
        weights = dict(model.named_parameters())
        run.update(history=history, masks_identical=all(torch.equal(saved[n], masks[n]) for n in masks),
                   pruned_exactly_zero=all(int(weights[n].detach()[~masks[n]].count_nonzero()) == 0 for n in masks),
                   finite=all(bool(torch.isfinite(p).all()) for p in weights.values()))
        result["runs"].append(run)
    done = [r for r in result["runs"] if "skipped" not in r]
    result["ok"] = code == 0 and bool(done) and all(r["masks_identical"] and r["pruned_exactly_zero"] and r["finite"]
                                                    for r in done)
    return result


# --- b: bench_px on the device ------------------------------------------------------------------------------

def part_bench(device: str, smoke: bool, out: Path, timeout: float) -> dict:
    path = out / f"bench_px_{'smoke' if smoke else device.split(':')[0]}.json"
    command = [sys.executable, str(HERE / "bench_px.py"), "--device", device, "--json", str(path)]
    if smoke:
        command += ["--models", "resnet20", "--images", "8", "--batch-size", "4", "--repeats", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=max(10, timeout))
    result = {"command": " ".join(command[1:]), "exit": done.returncode, "output": done.stdout[-3000:],
              "stderr": done.stderr[-2000:] if done.returncode else ""}
    if done.returncode == 0:
        report = json.loads(path.read_text())
        result["json"] = path.name
        result["ratios"] = {name: {"ratio_to_forward": r["ratio_to_forward"],
                                   "memory_ratio_to_train": r["memory_ratio_to_train"]}
                            for name, r in report["results"].items()}
    result["ok"] = done.returncode == 0
    return result


# --- docs/results.md -----------------------------------------------------------------------------------------

def report(record: dict | None) -> str:
    """The GPU section of docs/results.md (benchmarks/report.py); says so plainly when no GPU run exists."""
    title = "## GPU check (benchmarks/gpu_check.py)"
    if record is None or record.get("smoke"):
        return (f"{title}\n\nNot run on a GPU yet: no session has been lent one. On one GPU, "
                "`python benchmarks/gpu_check.py --out benchmarks/results` (about 6 minutes) writes "
                "`gpu_check.json` here and this section is rendered from it.\n")
    lines = [title, "", f"Command: `{record['command']}` on {record['device_name']} (torch {record['torch']}, CUDA "
                        f"{record['cuda']}), {record.get('seconds', 0):.0f} s.", ""]
    for name, part in record["parts"].items():
        lines.append(f"- {summary_line(name, part)}")
    return "\n".join(lines) + "\n"


# --- driver --------------------------------------------------------------------------------------------------

RECORD: dict = {}
OUT: Path | None = None


def write_progress(partial: dict | None = None) -> None:
    """Rewrite DIR/gpu_check.json (atomically): what is known so far survives a crash or a timeout."""
    if OUT is None:
        return
    if partial is not None:
        RECORD["in_progress"] = partial
    scratch = OUT / "gpu_check.json.tmp"
    scratch.write_text(json.dumps(RECORD, indent=1, default=str) + "\n")
    os.replace(scratch, OUT / "gpu_check.json")


def summary_line(key: str, part: dict) -> str:
    if "error" in part:
        return f"{key}: FAILED {part['error'].strip().splitlines()[-1]}"
    status = "ok" if part.get("ok") else "NOT OK"
    if key == "a_parity":
        cells = []
        for r in part["rows"]:
            what = f"{r['model']} {r['method']}{' ' + str(r['options']) if r['options'] else ''} {r['dtype'][6:]}"
            cells.append(f"{what} {'identical' if r['identical'] else 'agree %.4f' % r['agreement']}")
        return f"{key}: {status}; " + ", ".join(cells)
    if key == "c_vitb":
        ratios = part.get("round_over_forward", {})
        memory = part.get("round_peak_over_train_peak", {})
        runs = "; ".join(f"{r['method']}{' tf32' if r['tf32'] else ''} {r['rounds']} rounds "
                         + (r["skipped"] if "skipped" in r else f"{r.get('projected_seconds', r['seconds']):.1f} s"
                            + (" (projected)" if "projected_seconds" in r else ""))
                         for r in part.get("prune", []))
        return (f"{key}: {status}; round/forward {ratios.get('px', float('nan')):.2f}x, masked "
                f"{ratios.get('px-masked', float('nan')):.2f}x; round peak/train peak {memory.get('px', float('nan')):.2f}x, "
                f"masked {memory.get('px-masked', float('nan')):.2f}x; {runs}")
    if key == "d_finetune":
        return f"{key}: {status}; " + ", ".join(f"{r['precision']} " + (r["skipped"] if "skipped" in r else
                                                f"masks {'held' if r['masks_identical'] and r['pruned_exactly_zero'] else 'BROKEN'}")
                                                for r in part["runs"])
    return f"{key}: {status}"


def main(argv=None) -> dict:
    global OUT, RECORD
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and bench_px's JSON")
    parser.add_argument("--smoke", action="store_true", help="every part on the CPU at toy sizes (for the tests)")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --smoke")
    parser.add_argument("--parts", default="a,c,d,b", help="which parts, in this order (default a,c,d,b)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    import torch

    device = args.device or ("cpu" if args.smoke else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch; run with --smoke on a CPU machine")
    OUT = Path(args.out)
    OUT.mkdir(parents=True, exist_ok=True)
    budget = SMOKE_BUDGET_S if args.smoke else BUDGET_S
    RECORD = {"command": "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "smoke": args.smoke, "device": device,
              "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_s": budget, "parts": {}}
    try:
        sys.path.insert(0, str(HERE))
        from common import machine
        RECORD["machine"] = machine()
    except Exception:   # the record is still useful without it
        RECORD["machine"] = None
    write_progress()
    names = {"a": "a_parity", "c": "c_vitb", "d": "d_finetune", "b": "b_bench"}
    for key in args.parts.split(","):
        part_start = time.perf_counter()
        deadline = part_start + budget[key]
        print(f"[{time.perf_counter() - started:6.1f} s] part {names[key]} ...", flush=True)
        try:
            if key == "a":
                part = part_parity(device, args.smoke)
            elif key == "c":
                part = part_vitb(device, args.smoke, deadline)
            elif key == "d":
                part = part_finetune(device, args.smoke)
            else:
                part = part_bench(device, args.smoke, OUT, deadline - time.perf_counter())
        except Exception:   # record it and go on: one failure must not lose the other parts
            part = {"ok": False, "error": traceback.format_exc()[-4000:]}
        part["seconds"] = time.perf_counter() - part_start
        RECORD["parts"][names[key]] = part
        RECORD.pop("in_progress", None)
        RECORD["seconds"] = time.perf_counter() - started
        write_progress()
        print(f"[{time.perf_counter() - started:6.1f} s] {summary_line(names[key], part)}", flush=True)
    print(f"\ngpu_check on {RECORD['device_name']}: {sum(p.get('ok', False) for p in RECORD['parts'].values())} of "
          f"{len(RECORD['parts'])} parts ok in {RECORD['seconds']:.0f} s; wrote {OUT / 'gpu_check.json'}")
    return RECORD


if __name__ == "__main__":
    main()
