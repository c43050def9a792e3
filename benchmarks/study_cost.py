"""Evidence study 3, cost: what one PX round costs against one plain forward pass, in time and peak memory,
for growing model sizes, and how the total `hf_px.prune` time grows with rounds and with scoring images.

Part 1 (per model: timm resnet18, resnet50, vit_small_patch16_224, vit_base_patch16_224, pretrained=False,
1000 classes, random images): two fresh subprocesses per model. The "forward" process measures the peak RSS
increase of one `torch.no_grad()` forward pass over all scoring images (over the RSS once model and data are
built), then times `repeats` more. The "px" process measures the peak RSS increase of one
`hf_px.score(model, batches, method="px")` round the same way, then alternates `repeats` PX rounds with
forward passes over the same images; the headline ratio is the median of those paired ratios (robust to
load that drifts on a shared machine), the second is PX median / forward median across the two processes.
On CUDA the peak allocated memory (torch.cuda.max_memory_allocated over the allocated memory before the
call) is recorded too. Subprocesses run with bench_px's STEADY_MALLOC (freed memory stays in the process).

Part 2 (one process per sweep, ResNet-18): total wall time of `hf_px.prune(method="px", sparsity=0.9,
rounds=R)` for several R at fixed images, and for several image counts at fixed R; the settings are
alternated within each repeat (order reversed every other repeat) and the weights restored before every
call. A least-squares line through the medians gives seconds per round and seconds per image.

Settings: default (quick, CPU, one torch thread: on a shared 2-core machine two threads collapse under
contention) 64 px / ViT img_size=64, 32 images; `--full` (GPU): 224 px, 256 images, more rounds and images;
`--smoke`: tiny, workers in-process (for the test).

    python benchmarks/study_cost.py [--smoke | --full] [--out PATH] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_px import STEADY_MALLOC, _current_rss, _peak_rss  # noqa: E402
import common  # noqa: E402
from common import IMAGES, RESULTS, figure, save_figure, start_record, write_json  # noqa: E402

STUDY = "study_cost"
SPARSITY = 0.9
QUICK_MODELS = [("resnet18", 64), ("resnet50", 64), ("vit_small_patch16_224", 64), ("vit_base_patch16_224", 64)]
FULL_MODELS = [(name, 224) for name, _ in QUICK_MODELS]

SETTINGS = {
    "smoke": dict(models=[("resnet10t", 32), ("vit_tiny_patch16_224", 32)], images=8, batch_size=4, repeats=3,
                  sweep_model=("resnet10t", 32), rounds_sweep=[1, 2, 4], rounds_images=8, rounds_batch=4,
                  images_sweep=[4, 8, 16], images_rounds=1, images_batch=4, sweep_repeats=3, threads=1,
                  in_process=True),
    "quick": dict(models=QUICK_MODELS, images=32, batch_size=16, repeats=3,
                  sweep_model=("resnet18", 64), rounds_sweep=[1, 5, 20, 100], rounds_images=32, rounds_batch=16,
                  images_sweep=[10, 20, 40, 80], images_rounds=5, images_batch=10, sweep_repeats=3, threads=1,
                  in_process=False),
    "full": dict(models=FULL_MODELS, images=256, batch_size=64, repeats=5,
                 sweep_model=("resnet18", 224), rounds_sweep=[1, 10, 50, 100], rounds_images=256, rounds_batch=64,
                 images_sweep=[64, 128, 256, 512, 1024], images_rounds=5, images_batch=64, sweep_repeats=3,
                 threads=None, in_process=False),
}


# --- models and data -------------------------------------------------------------------------------------

def _build(name: str, resolution: int, device: str):
    import timm
    import torch

    torch.manual_seed(0)
    kwargs = {"img_size": resolution} if name.startswith("vit") else {}
    return timm.create_model(name, pretrained=False, **kwargs).eval().to(device)


def _batches(images: int, batch_size: int, resolution: int, classes: int, device: str, seed: int = 0):
    """`images` random N(0,1) images (nested: the first n are the same for every count) in batches."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(images, 3, resolution, resolution, generator=generator)
    y = torch.randint(0, classes, (images,), generator=generator)
    return [(x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)) for i in range(0, images, batch_size)]






# --- workers (each in a fresh subprocess, except under --smoke) ---------------------------------------------

def cost_worker(spec: dict) -> dict:
    """Peak memory and time of one call ("forward" or "px") of one model; for "px" also interleaved ratios."""
    import torch

    import hf_px

    device, repeats = spec["device"], spec["repeats"]
    model = _build(spec["model"], spec["resolution"], device)
    batches = _batches(spec["images"], spec["batch_size"], spec["resolution"], model.num_classes, device)

    def forward():
        with torch.no_grad():
            for x, _ in batches:
                model(x)

    def px():
        hf_px.score(model, batches, method="px")

    calls = {"forward": forward, "px": px}
    call = calls[spec["call"]]
    gc.collect()
    rss_before, peak_before = _current_rss(), _peak_rss()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    first = common.timed(call, device)          # the memory measurement, and the warm-up
    peak = _peak_rss()
    result = {"call": spec["call"], "first_s": first, "rss_before_mb": rss_before / 2**20,
              "peak_rss_mb": peak / 2**20, "rss_increase_mb": (peak - rss_before) / 2**20,
              "peak_rss_before_call_mb": peak_before / 2**20,
              "params": sum(p.numel() for p in model.parameters()),
              "param_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
              "threads": torch.get_num_threads(), "loadavg_start": os.getloadavg()[0]}
    if cuda:
        result["cuda_increase_mb"] = (torch.cuda.max_memory_allocated() - cuda_before) / 2**20
        result["cuda_model_mb"] = cuda_before / 2**20
    if spec["call"] == "forward":
        times = [common.timed(forward, device) for _ in range(repeats)]
        result.update(times_s=times, median_s=statistics.median(times))
    else:
        common.timed(forward, device)             # warm the forward too before pairing
        paired = {"px": [], "forward": []}
        for _ in range(repeats):
            for name in paired:
                paired[name].append(common.timed(calls[name], device))
        result.update(times_s=paired["px"], median_s=statistics.median(paired["px"]),
                      forward_times_s=paired["forward"], forward_median_s=statistics.median(paired["forward"]),
                      ratio_interleaved=statistics.median(a / b for a, b in zip(paired["px"], paired["forward"])))
    result["loadavg_end"] = os.getloadavg()[0]
    return result


def sweep_worker(spec: dict) -> dict:
    """Total hf_px.prune time for each value of spec["vary"] ("rounds" or "images"), interleaved."""
    import torch

    import hf_px

    device, name, resolution = spec["device"], spec["model"], spec["resolution"]
    model = _build(name, resolution, device)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    values = spec["values"]
    max_images = max(values) if spec["vary"] == "images" else spec["images"]
    every = _batches(max_images, spec["batch_size"], resolution, model.num_classes, device)

    def case(value):
        rounds = value if spec["vary"] == "rounds" else spec["rounds"]
        images = value if spec["vary"] == "images" else spec["images"]
        if images % spec["batch_size"]:
            raise SystemExit(f"{images} images is not a multiple of the batch size {spec['batch_size']}")
        return rounds, every[:images // spec["batch_size"]]

    densities = {}

    def run(value):
        rounds, batches = case(value)
        model.load_state_dict(state)
        common.sync(device)
        start = time.perf_counter()
        masks = hf_px.prune(model, batches, method="px", sparsity=SPARSITY, rounds=rounds)
        common.sync(device)
        seconds = time.perf_counter() - start
        densities[value] = float(hf_px.global_density(masks))
        return seconds

    run(min(values))                        # warm-up
    times = {v: [] for v in values}
    for repeat in range(spec["repeats"]):
        for value in (values if repeat % 2 == 0 else values[::-1]):
            times[value].append(run(value))
    load = os.getloadavg()[0]
    rows = [{"part": spec["vary"], "model": name, "resolution": resolution, "value": v,
             "rounds": case(v)[0], "images": len(case(v)[1]) * spec["batch_size"], "batch_size": spec["batch_size"],
             "times_s": times[v], "median_s": statistics.median(times[v]), "density": densities[v],
             "threads": torch.get_num_threads(), "loadavg_end": load} for v in values]
    return {"rows": rows, "fit": fit_line([v for v in values], [statistics.median(times[v]) for v in values])}


def fit_line(xs: list[float], ys: list[float]) -> dict:
    """Least squares y = intercept + slope * x, with R²."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    total = sum((y - my) ** 2 for y in ys)
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    return {"slope": slope, "intercept": intercept, "r2": 1.0 - residual / total if total > 0 else float("nan")}


WORKERS = {"cost": cost_worker, "sweep": sweep_worker}


def run_worker(spec: dict, in_process: bool) -> dict:
    """Run a worker in a fresh subprocess (STEADY_MALLOC, its own thread count), or here under --smoke."""
    if in_process:
        import torch
        threads = torch.get_num_threads()
        try:
            if spec.get("threads"):
                torch.set_num_threads(spec["threads"])
            return WORKERS[spec["job"]](spec)
        finally:
            torch.set_num_threads(threads)
    env = dict(os.environ, **STEADY_MALLOC)
    if spec.get("threads"):
        env.update(OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"worker {spec} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the study ---------------------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    args = parse_args(argv)
    setting = "smoke" if args.smoke else "full" if args.full else "quick"
    config = dict(SETTINGS[setting])
    import torch
    device = args.device or ("cuda" if setting == "full" and torch.cuda.is_available() else "cpu")
    if args.threads is not None:
        config["threads"] = args.threads
    if device.startswith("cuda"):
        config["threads"] = None
    config.update(device=device, sparsity=SPARSITY, malloc="in-process" if config["in_process"] else STEADY_MALLOC)
    out = Path(args.out) if args.out else (
        Path(tempfile.gettempdir()) / f"{STUDY}_smoke.json" if setting == "smoke"
        else RESULTS / f"{STUDY}{'_full' if setting == 'full' else ''}.json")
    record = start_record(STUDY, setting, config)
    if config["threads"]:   # machine() saw this process's thread count; the workers run with config["threads"]
        record["machine"]["threads"] = config["threads"]
    record["loadavg_before"] = list(os.getloadavg())
    began = time.perf_counter()
    common = {"device": device, "threads": config["threads"]}

    for name, resolution in config["models"]:
        row = {"part": "cost", "model": name, "family": "vit" if name.startswith("vit") else "cnn",
               "resolution": resolution, "images": config["images"], "batch_size": config["batch_size"]}
        for call in ("forward", "px"):
            print(f"  {name} @ {resolution} px: {call} ...", file=sys.stderr, flush=True)
            row[call] = run_worker({"job": "cost", "call": call, "model": name, "resolution": resolution,
                                    "images": config["images"], "batch_size": config["batch_size"],
                                    "repeats": config["repeats"], **common}, config["in_process"])
        fwd, px = row["forward"], row["px"]
        row.update(params=px["params"], param_mb=px["param_mb"], forward_s=px["forward_median_s"],
                   px_s=px["median_s"], ratio=px["ratio_interleaved"], ratio_separate=px["median_s"] / fwd["median_s"],
                   forward_rss_mb=fwd["rss_increase_mb"], px_rss_mb=px["rss_increase_mb"],
                   memory_ratio=px["rss_increase_mb"] / fwd["rss_increase_mb"] if fwd["rss_increase_mb"] > 0 else None)
        if "cuda_increase_mb" in px:
            row.update(forward_cuda_mb=fwd["cuda_increase_mb"], px_cuda_mb=px["cuda_increase_mb"],
                       cuda_memory_ratio=px["cuda_increase_mb"] / fwd["cuda_increase_mb"])
        print(f"    PX round / forward {row['ratio']:.2f}x (separate {row['ratio_separate']:.2f}x), "
              f"RSS +{row['px_rss_mb']:.0f} MB vs +{row['forward_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
        record["rows"].append(row)

    name, resolution = config["sweep_model"]
    fits = {}
    for vary, values, fixed in (("rounds", config["rounds_sweep"], {"images": config["rounds_images"],
                                                                    "batch_size": config["rounds_batch"]}),
                                ("images", config["images_sweep"], {"rounds": config["images_rounds"],
                                                                    "batch_size": config["images_batch"]})):
        print(f"  prune time vs {vary} {values} ({name} @ {resolution} px) ...", file=sys.stderr, flush=True)
        done = run_worker({"job": "sweep", "vary": vary, "values": values, "model": name, "resolution": resolution,
                           "repeats": config["sweep_repeats"], **fixed, **common}, config["in_process"])
        record["rows"] += done["rows"]
        fits[vary] = done["fit"]
        print(f"    slope {done['fit']['slope']:.4f} s per {vary[:-1]}, intercept {done['fit']['intercept']:.3f} s, "
              f"R² {done['fit']['r2']:.3f}", file=sys.stderr, flush=True)
    fits["seconds_per_image_round"] = fits["images"]["slope"] / config["images_rounds"]
    # the images line's intercept is what the rounds cost with no images: per-round work on the weights alone
    # (global threshold, mask update, finiteness checks), plus the one-off setup
    fits["image_free_seconds_per_round"] = fits["images"]["intercept"] / config["images_rounds"]
    same = [r for r in record["rows"] if r["part"] == "cost" and (r["model"], r["resolution"]) == (name, resolution)
            and r["images"] == config["rounds_images"] and r["batch_size"] == config["rounds_batch"]]
    if same:   # the sweep's per-round slope against one hf_px.score round of the same model and images
        fits["slope_over_score_round"] = fits["rounds"]["slope"] / same[0]["px_s"]
    record["fits"] = fits
    record["loadavg_after"] = list(os.getloadavg())
    record["seconds"] = time.perf_counter() - began
    write_json(record, out)
    print(f"wrote {out} ({record['seconds']:.0f} s)", file=sys.stderr)
    images = out.parent if setting == "smoke" else IMAGES     # the smoke run never touches docs/img
    print(report(record, images=images))
    return record


# --- report --------------------------------------------------------------------------------------------------------

def _prefix(results: dict) -> str:
    return STUDY if results["setting"] == "quick" else f"{STUDY}_{results['setting']}"


def _plots(results: dict, images: Path) -> dict:
    cost = [r for r in results["rows"] if r["part"] == "cost"]
    paths = {}
    fig = figure(10, 4)
    if fig is not None:
        left, right = fig.subplots(1, 2)
        for family, marker in (("cnn", "o"), ("vit", "s")):
            rows = [r for r in cost if r["family"] == family]
            if not rows:
                continue
            xs = [r["params"] / 1e6 for r in rows]
            left.plot(xs, [r["ratio"] for r in rows], marker=marker, label=f"{family.upper()} time")
            for r in rows:
                left.annotate(r["model"].split("_patch")[0], (r["params"] / 1e6, r["ratio"]), fontsize=7,
                              textcoords="offset points", xytext=(4, 4))
            # in units of the weights' memory: the forward pass's own increase is tiny at few small images
            right.plot(xs, [r["px_rss_mb"] / r["param_mb"] for r in rows], marker=marker,
                       label=f"{family.upper()} peak RSS")
            if rows[0].get("px_cuda_mb") is not None:
                right.plot(xs, [r["px_cuda_mb"] / r["param_mb"] for r in rows], marker=marker, linestyle="--",
                           label=f"{family.upper()} CUDA peak")
        for axis, title in ((left, "PX round time / forward time"),
                            (right, "PX round peak memory increase / weight memory")):
            axis.set_xscale("log")
            axis.xaxis.set_major_formatter("{x:g}")
            axis.xaxis.set_minor_formatter("{x:g}")
            axis.set_xlabel("parameters (millions)")
            axis.set_title(title, fontsize=10)
            axis.set_ylim(bottom=0)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
        paths["ratio"] = save_figure(fig, f"{_prefix(results)}_ratio.png", images)
    for vary, label in (("rounds", "rounds"), ("images", "scoring images")):
        rows = [r for r in results["rows"] if r["part"] == vary]
        fig = figure(5, 3.6)
        if fig is None or not rows:
            continue
        axis = fig.subplots()
        for r in rows:
            axis.scatter([r["value"]] * len(r["times_s"]), r["times_s"], s=10, color="grey", alpha=0.6)
        axis.plot([r["value"] for r in rows], [r["median_s"] for r in rows], "o", label="median")
        fit = results["fits"][vary]
        top = max(r["value"] for r in rows)
        axis.plot([0, top], [fit["intercept"], fit["intercept"] + fit["slope"] * top], "-",
                  label=f"fit: {fit['slope']:.3g} s per {vary[:-1]} (R² {fit['r2']:.3f})")
        fixed = f"{rows[0]['images']} images" if vary == "rounds" else f"{rows[0]['rounds']} rounds"
        axis.set_title(f"hf_px.prune total time vs {label}\n{rows[0]['model']} @ {rows[0]['resolution']} px, "
                       f"{fixed}", fontsize=9)
        axis.set_xlabel(label)
        axis.set_ylabel("seconds")
        axis.set_xlim(left=0)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        paths[vary] = save_figure(fig, f"{_prefix(results)}_{vary}.png", images)
    return paths


def _range(values: list[float], digits: int = 1) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    low, high = min(values), max(values)
    return f"{low:.{digits}f}" if round(low, digits) == round(high, digits) else f"{low:.{digits}f}–{high:.{digits}f}"


def report(results: dict, images: Path = IMAGES) -> str:
    """The markdown section for docs/results.md, from the JSON alone (writes the plots under `images`)."""
    config, machine, fits = results["config"], results["machine"], results["fits"]
    cost = [r for r in results["rows"] if r["part"] == "cost"]
    cuda = any("px_cuda_mb" in r for r in cost)
    plots = _plots(results, Path(images))
    threads = config.get("threads") or machine.get("threads")
    lines = [f"## Cost: a PX round against a forward pass, and total pruning time ({results['setting']})", "",
             f"`{results['command']}` — {results['seconds'] / 60:.1f} min on {machine.get('cpu') or 'cpu'} "
             f"({machine.get('cpus')} CPUs, {threads} torch thread(s)), device {config['device']}, "
             f"torch {machine.get('torch')}, commit {machine.get('commit')}; load average "
             f"{results['loadavg_before'][0]:.1f} before, {results['loadavg_after'][0]:.1f} after "
             "(a shared machine: timings are medians of interleaved repeats).", ""]

    cnn = [r["ratio"] for r in cost if r["family"] == "cnn"]
    vit = [r["ratio"] for r in cost if r["family"] == "vit"]
    mem = [r["memory_ratio"] for r in cost if r.get("memory_ratio")]
    weights = [r["px_rss_mb"] / r["param_mb"] for r in cost]
    sentences = [f"A PX round costs {_range(cnn)} forward passes over the same images on the CNNs and "
                 f"{_range(vit)} on the ViTs (median of paired ratios, {config['repeats']} repeats)"
                 + (f"; its peak memory increase is {_range(mem)}× that of the forward pass" if mem else "")
                 + f", or {_range(weights)}× the memory of the weights themselves "
                 f"(up to {max(r['px_rss_mb'] for r in cost):.0f} MB for {max(cost, key=lambda r: r['params'])['model']})."]
    rounds_fit, images_fit = fits["rounds"], fits["images"]
    shape = ("linear" if rounds_fit["r2"] >= 0.98 else "roughly linear" if rounds_fit["r2"] >= 0.9
             else "not clearly linear")
    sentence = (f"Total `hf_px.prune` time is {shape} in the number of rounds: {rounds_fit['slope']:.3g} s per "
                f"round (R² {rounds_fit['r2']:.3f}), intercept {rounds_fit['intercept']:.2g} s")
    if "slope_over_score_round" in fits:
        sentence += (f"; a round inside `prune` costs {fits['slope_over_score_round']:.2f}× one `hf_px.score` "
                     "round of the same model and images (mask update included)")
    sentences.append(sentence + ".")
    sentences.append(f"It grows with the scoring images at {images_fit['slope']:.3g} s per image over "
                     f"{config['images_rounds']} rounds, i.e. {fits['seconds_per_image_round'] * 1e3:.3g} ms per "
                     f"image per round (R² {images_fit['r2']:.3f}); extrapolated to zero images a round still costs "
                     f"{fits['image_free_seconds_per_round']:.2g} s (work on the weights alone: global threshold, "
                     "mask update, checks; one-off setup included).")
    lines += [" ".join(sentences), ""]

    lines += [f"Per model: {config['images']} random images in batches of {config['batch_size']}, 1000-class "
              "timm models with pretrained=False; forward = one `torch.no_grad()` pass over all images, PX = one "
              "`hf_px.score(model, batches, method=\"px\")`; memory = peak RSS increase of the first call in a fresh "
              "process" + (" and CUDA peak allocated increase" if cuda else "") + " (over the memory once model and data "
              "are built); weights = float32 parameter memory.", ""]
    header = ("| model | res (px) | params (M) | forward s | PX round s | PX / forward | (separate processes) "
              "| forward peak +MB | PX peak +MB | memory ratio | PX peak / weights |")
    rule = "|---|---|---|---|---|---|---|---|---|---|---|"
    if cuda:
        header += " forward CUDA +MB | PX CUDA +MB | CUDA ratio |"
        rule += "---|---|---|"
    lines += [header, rule]
    for r in cost:
        line = (f"| {r['model']} | {r['resolution']} | {r['params'] / 1e6:.1f} | {r['forward_s']:.3f} | "
                f"{r['px_s']:.3f} | **{r['ratio']:.2f}×** | {r['ratio_separate']:.2f}× | {r['forward_rss_mb']:.0f} | "
                f"{r['px_rss_mb']:.0f} | " + (f"{r['memory_ratio']:.1f}× |" if r.get("memory_ratio") else "– |")
                + f" {r['px_rss_mb'] / r['param_mb']:.1f}× |")
        if cuda:
            line += f" {r['forward_cuda_mb']:.0f} | {r['px_cuda_mb']:.0f} | {r['cuda_memory_ratio']:.1f}× |"
        lines.append(line)
    lines.append("")
    if plots.get("ratio"):
        lines += [f"![PX round / forward pass against model size]({plots['ratio']})", ""]

    for vary, label in (("rounds", "rounds"), ("images", "scoring images")):
        rows = [r for r in results["rows"] if r["part"] == vary]
        fit = fits[vary]
        fixed = (f"{rows[0]['images']} images in batches of {rows[0]['batch_size']}" if vary == "rounds"
                 else f"{rows[0]['rounds']} rounds, batches of {rows[0]['batch_size']}")
        lines += [f"Total `hf_px.prune(method=\"px\", sparsity={config['sparsity']})` time against {label} "
                  f"({rows[0]['model']} @ {rows[0]['resolution']} px, {fixed}; {config['sweep_repeats']} "
                  f"interleaved repeats):", "",
                  f"| {label} | median s | min s | max s | fit s | kept density |", "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['value']} | {r['median_s']:.2f} | {min(r['times_s']):.2f} | {max(r['times_s']):.2f} | "
                         f"{fit['intercept'] + fit['slope'] * r['value']:.2f} | {r['density']:.4f} |")
        lines.append("")
        if plots.get(vary):
            lines += [f"![prune time against {label}]({plots[vary]})", ""]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny sizes, workers in-process (for the test)")
    size.add_argument("--full", action="store_true", help="224 px, 256 images, for a GPU")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/study_cost.json; "
                        "study_cost_full.json with --full; a temp file with --smoke)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda with --full when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default 1)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.worker:
        spec = json.loads(arguments.worker)
        if spec.get("threads"):
            import torch
            torch.set_num_threads(spec["threads"])
        print(json.dumps(WORKERS[spec["job"]](spec)))
    else:
        main()
