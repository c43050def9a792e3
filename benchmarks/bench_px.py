"""What a PX round costs against one plain forward pass and one training step: time and peak memory.

One process per model (fresh, so that models do not share allocator state), and inside it every measured
call alternated with the others (interleaved), so that a ratio is not skewed by load that drifts on a
shared machine. Models (`--models`, default resnet20,vit6,vitb):

    resnet20        hf_px.testing.resnet20() (CIFAR, BN), 3x32x32
    resnet20-authors  the same in the authors' layer style (weight_mask buffers): hf_px against the authors'
                    procedure (`hf_px.testing.authors_px_round`), every Conv/Linear weight a target
    vit6            transformers ViT, 6 layers, hidden 192, 3 heads, patch 4, 32 px, sdpa attention
    vitb            timm vit_base_patch16_224 (pretrained=False), 224 px
    hf-vitb-sdpa, hf-vitb-eager   transformers ViTForImageClassification (ViT-B/16 config), 224 px

Images per model: 100 in batches of 50 at 32 px and 8 in one batch at 224 px on CPU; 1000 in batches of
250 (32 px) or 100 (224 px) on CUDA; `--images`/`--batch-size` override both.

Calls, each on the same images:
    forward     one `torch.no_grad()` forward pass over all batches
    train       one training step's forward and backward on the first batch (the "same batch" of memory)
    px          a round of px as `hf_px.prune` runs it: `criterion.scorer(...)` is built once (the model's
                structure), then a round = score with the current masks + the global threshold
    px-masked   the same round with every target 90% pruned, as every round of `prune` after the first
    score       one stand-alone `hf_px.score(method="px")` call: a round plus finding the structure

Time: the first call of each (also its memory measurement and warm-up), then `--repeats` rounds of
forward, px and px-masked alternated; a ratio is the median of the per-repeat ratios (score: its one
call over the median forward). Memory: the peak of each call over the memory in use just before it
(allocator caches released first): on CPU the process's resident-set high-water mark (reset through
/proc/self/clear_refs), on CUDA torch.cuda.max_memory_allocated. Targets (TARGETS): a round <= 3.0x a
forward pass for ViTs and 2.3x for the CNN, first and masked rounds alike; a round's peak <= 1.5x a
training step's on ViT-B; hf_px >= 2.2x faster than the authors' procedure.

    python benchmarks/bench_px.py [--models resnet20,vit6,vitb] [--repeats 3] [--device cpu|cuda]
                                  [--images N] [--batch-size B] [--json PATH]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = ["resnet20", "resnet20-authors", "vit6", "vitb", "hf-vitb-sdpa", "hf-vitb-eager"]
DEFAULT_MODELS = ["resnet20", "resnet20-authors", "vit6", "vitb"]
TARGETS = {"cnn_round": 2.3, "vit_round": 3.0, "vit_round_goal": 2.5, "memory": 1.5, "speedup": 2.2}
# glibc returns large freed blocks to the OS (munmap / trim), so every pass re-faults its activation
# memory; on small VMs that page-faulting can double a plain forward pass and blurs every ratio. These
# settings keep freed memory in the process for all calls alike (memory is measured after malloc_trim).
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**40)}


# --- models and data -------------------------------------------------------------------------------------

def build(name: str, device: str, images: int | None = None, batch_size: int | None = None):
    """(model, batches, label, resolution) for one of MODELS, in eval mode on `device`."""
    import torch
    from hf_px.testing import random_batches, resnet20

    torch.manual_seed(0)
    if name in ("resnet20", "resnet20-authors"):
        model, resolution, classes = resnet20(masked=name == "resnet20-authors"), 32, 10
        label = "ResNet-20 (CIFAR, BN)" + (", authors' layers" if name == "resnet20-authors" else "")
    elif name == "vit6":
        import transformers as tf
        config = tf.ViTConfig(num_hidden_layers=6, hidden_size=192, num_attention_heads=3, intermediate_size=768,
                              patch_size=4, image_size=32, num_labels=10)
        config._attn_implementation = "sdpa"
        model, resolution, classes, label = tf.ViTForImageClassification(config), 32, 10, "HF ViT 6x192 (sdpa), 32 px"
    elif name == "vitb":
        import timm
        model = timm.create_model("vit_base_patch16_224", pretrained=False)
        resolution, classes, label = 224, 1000, "timm ViT-B/16, 224 px"
    elif name in ("hf-vitb-sdpa", "hf-vitb-eager"):
        import transformers as tf
        config = tf.ViTConfig(num_labels=1000)
        config._attn_implementation = name.rsplit("-", 1)[1]
        model, resolution, classes = tf.ViTForImageClassification(config), 224, 1000
        label = f"HF ViT-B/16 ({config._attn_implementation}), 224 px"
    else:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    cuda = device.startswith("cuda")
    default = (8, 8) if resolution == 224 else (100, 50)
    if cuda:
        default = (1000, 100) if resolution == 224 else (1000, 250)
    images, batch_size = images or default[0], batch_size or min(default[1], images or default[0])
    if images % batch_size:
        raise SystemExit(f"--images {images} is not a multiple of --batch-size {batch_size}")
    batches = random_batches(images // batch_size, batch_size, (3, resolution, resolution), classes, seed=0)
    model = model.to(device).eval()
    return model, [(x.to(device), y.to(device)) for x, y in batches], label, resolution


# --- measuring ------------------------------------------------------------------------------------------------

def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _high_water_mark() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def peak_increase(call, device: str) -> float:
    """MiB that `call()` adds at its peak to the memory in use just before it (see the module docstring)."""
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        call()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:   # hand freed heap memory back first, so that `before` is what is really in use
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    before = _current_rss()
    if not _reset_high_water_mark():
        raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs): memory needs Linux")
    call()
    return (_high_water_mark() - before) / 2**20


def worker(name: str, repeats: int, device: str, images: int | None, batch_size: int | None) -> dict:
    import torch
    import hf_px
    from hf_px.criteria import make_criterion
    from hf_px.masks import density_schedule, masks_from_scores

    sys.path.insert(0, str(HERE))
    import common

    model, batches, label, resolution = build(name, device, images, batch_size)
    authors = name == "resnet20-authors"
    head = hf_px.find_head(model, batches[0][0][:2])
    # the authors' convention: every Conv/Linear weight, the head included; else hf_px's default targets
    targets = hf_px.prunable_weights(model) if authors else [n for n in hf_px.prunable_weights(model) if n not in head]
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(0)
    ones = {n: torch.ones_like(params[n], dtype=torch.bool) for n in targets}
    pruned = {n: (torch.rand(params[n].shape, generator=generator) < 0.1).to(params[n].device) for n in targets}
    score_round = make_criterion("px").scorer(model, batches, targets, head, 0)
    first_density = density_schedule(0.1, 100)[0]

    calls = {
        **common.forward_and_train_calls(model, batches),
        "px": lambda: masks_from_scores(score_round(ones), first_density, ones),
        "px-masked": lambda: masks_from_scores(score_round(pruned), 0.09, pruned),
        "score": lambda: hf_px.score(model, batches, method="px", targets=targets),
    }
    if authors:
        from hf_px.testing import authors_px_round
        calls = {**common.forward_and_train_calls(model, batches), "px": calls["score"],
                 "authors": lambda: authors_px_round(model, batches, targets)}

    def timed(call) -> float:
        return common.timed(call, device)

    # the first call of each is also its warm-up: memory is measured on it (one-time allocations included)
    memory, first = {}, {}
    for call_name, call in calls.items():
        start = time.perf_counter()
        memory[call_name] = peak_increase(lambda: (call(), common.sync(device)), device)
        first[call_name] = time.perf_counter() - start
    # the training step and the stand-alone score are measured once; the rest alternate `repeats` times
    repeated = [k for k in calls if k not in ("train", "score")]
    times = {call_name: [] for call_name in repeated}
    for _ in range(repeats):
        for call_name in repeated:
            times[call_name].append(timed(calls[call_name]))
    median = {k: statistics.median(v) for k, v in times.items()}
    ratios = {k: statistics.median(a / b for a, b in zip(times[k], times["forward"])) for k in repeated if k != "forward"}
    if "score" in calls:   # one call, against the median forward pass
        median["score"] = first["score"]
        ratios["score"] = first["score"] / median["forward"]
    if authors:
        ratios["authors_over_px"] = statistics.median(a / b for a, b in zip(times["authors"], times["px"]))
    return {
        "model": name, "label": label, "device": device, "resolution": resolution,
        "images": sum(len(x) for x, _ in batches), "batch_size": len(batches[0][0]), "targets": len(targets),
        "params": sum(p.numel() for p in model.parameters()),
        "param_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
        "threads": torch.get_num_threads(), "first_call_s": first, "times_s": times, "median_s": median,
        "ratio_to_forward": ratios, "peak_mb": memory,
        "memory_ratio_to_train": {k: memory[k] / memory["train"] for k in memory if k in ("px", "px-masked", "score")
                                  and memory["train"] > 0},
    }


def run_model(name: str, args) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--repeats", str(args.repeats),
               "--device", args.device]
    if args.images:
        command += ["--images", str(args.images)]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    env = {**os.environ, **(STEADY_MALLOC if not args.default_malloc else {})}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"model {name} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- report -------------------------------------------------------------------------------------------------------

def _code_version() -> str:
    """The commit of the checkout and whether hf_px/ has uncommitted changes (timings depend on both)."""
    def git(*command):
        done = subprocess.run(["git", *command], cwd=HERE.parent, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "hf_px")
    return f"{commit}{' + uncommitted hf_px changes' if dirty else ''}"


def verdicts(result: dict) -> list[str]:
    """One line per target that applies to this model, with OK / ABOVE TARGET."""
    ratios, lines = result["ratio_to_forward"], []
    if result["model"] == "resnet20-authors":
        speedup = ratios["authors_over_px"]
        lines.append(f"authors / hf_px {speedup:.2f}x (target >= {TARGETS['speedup']}) "
                     f"{'OK' if speedup >= TARGETS['speedup'] else 'BELOW TARGET'}")
        return lines
    vit = "vit" in result["model"]
    limit = TARGETS["vit_round" if vit else "cnn_round"]
    for call in ("px", "px-masked"):
        lines.append(f"{call} round / forward {ratios[call]:.2f}x (target <= {limit}) "
                     f"{'OK' if ratios[call] <= limit else 'ABOVE TARGET'}")
    if result["resolution"] == 224:
        for call in ("px", "px-masked"):
            value = result["memory_ratio_to_train"][call]
            lines.append(f"{call} round peak / training-step peak {value:.2f}x (target <= {TARGETS['memory']}) "
                         f"{'OK' if value <= TARGETS['memory'] else 'ABOVE TARGET'}")
    return lines


def report(bench: dict) -> str:
    """The markdown section of docs/results.md for a bench_px JSON (benchmarks/report.py)."""
    settings, results = bench["settings"], bench["results"]
    lines = ["## Engine cost: a PX round against a forward pass and a training step (bench_px)", "",
             f"Command: `{settings['command']}` (device {settings['device_name']}, {settings['cpus']} CPUs, torch "
             f"{settings['torch']}, code {settings['code']}, load average {settings['loadavg_before'][0]:.1f} before "
             f"and {settings['loadavg_after'][0]:.1f} after). Ratios are medians of per-repeat ratios with the calls "
             "alternated in one process; memory is each call's peak over the memory in use before it. A round is "
             "one round of `hf_px.prune` (the model's structure is found once per call); *masked*: every target "
             "90% pruned, as in every round after the first; *score*: one stand-alone `hf_px.score` call, "
             "structure included. Targets: a round <= "
             f"{TARGETS['vit_round']}x a forward pass for ViTs (goal {TARGETS['vit_round_goal']}x) and "
             f"{TARGETS['cnn_round']}x for the CNN; a round's peak <= {TARGETS['memory']}x a training step's at "
             "224 px.", "",
             "| model | images (batch) | forward s | round / forward | masked round / forward | score / forward "
             "| round peak / training step | masked round peak / training step |",
             "|---|---|---|---|---|---|---|---|"]
    for result in results.values():
        if result["model"] == "resnet20-authors":
            continue
        ratio, memory = result["ratio_to_forward"], result["memory_ratio_to_train"]
        lines.append(f"| {result['label']} | {result['images']} ({result['batch_size']}) | "
                     f"{result['median_s']['forward']:.3f} | {ratio['px']:.2f}x | {ratio['px-masked']:.2f}x | "
                     f"{ratio['score']:.2f}x | {memory['px']:.2f}x ({result['peak_mb']['px']:.0f} / "
                     f"{result['peak_mb']['train']:.0f} MiB) | {memory['px-masked']:.2f}x |")
    authors = results.get("resnet20-authors")
    if authors:
        lines += ["", f"On ResNet-20 in the authors' layer style (every Conv/Linear weight a target), one round of "
                      f"the authors' procedure (`benchmarks/authors_px.py`) takes "
                      f"{authors['ratio_to_forward']['authors_over_px']:.2f}x as long as `hf_px.score` "
                      f"(target >= {TARGETS['speedup']}x)."]
    lines += ["", "Verdicts, computed from these numbers:", ""]
    for result in results.values():
        lines += [f"- {result['label']}: {line}" for line in verdicts(result)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    models = args.models.split(",")
    load_before = os.getloadavg()
    results = {}
    for name in models:
        print(f"  running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_model(name, args)
    load_after = os.getloadavg()
    cuda = args.device.startswith("cuda")
    print(f"\nPX cost benchmark: torch {torch.__version__}, device {args.device}"
          f"{' (' + torch.cuda.get_device_name(0) + ')' if cuda else ''}, {os.cpu_count()} CPUs "
          f"[{platform.processor() or platform.machine()}], {next(iter(results.values()))['threads']} torch threads; "
          f"first call + {args.repeats} interleaved repeats; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after; code {_code_version()}\n")
    header = (f"{'model':<34} {'images':>6} {'call':<10} {'median s':>9} {'/ forward':>9} {'peak +MiB':>10} "
              f"{'/ train':>8}")
    print(header)
    print("-" * len(header))
    for result in results.values():
        for call, memory_mb in result["peak_mb"].items():
            seconds = result["median_s"].get(call, result["first_call_s"][call])
            ratio = result["ratio_to_forward"].get(call)
            memory = result["memory_ratio_to_train"].get(call)
            print(f"{result['label']:<34} {result['images']:>6} {call:<10} {seconds:>9.3f} "
                  f"{'' if ratio is None else f'{ratio:.2f}x':>9} {memory_mb:>10.1f} "
                  f"{'' if memory is None else f'{memory:.2f}x':>8}")
        for line in verdicts(result):
            print(f"{'':<34} {line}")
    report = {"settings": {"models": models, "repeats": args.repeats, "device": args.device,
                           "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
                           "images": args.images, "batch_size": args.batch_size, "torch": torch.__version__,
                           "cpus": os.cpu_count(), "default_malloc": args.default_malloc,
                           "loadavg_before": load_before, "loadavg_after": load_after, "code": _code_version(),
                           "targets": TARGETS, "command": "python benchmarks/bench_px.py " + " ".join(argv or sys.argv[1:])},
              "results": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats after one warm-up (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--images", type=int, default=None, help="override the number of images of every model")
    parser.add_argument("--batch-size", type=int, default=None, help="override the batch size of every model")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--default-malloc", action="store_true",
                        help="run with glibc's default malloc settings (see STEADY_MALLOC)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.worker:
        print(json.dumps(worker(arguments.worker, arguments.repeats, arguments.device, arguments.images,
                                arguments.batch_size)))
    else:
        main()
