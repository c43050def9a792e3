"""What the evidence studies share: the machine record, JSON output, spread over seeds, Fashion-MNIST
tensors, a mask-preserving training loop on in-memory tensors, and plot helpers.

Conventions every study follows (benchmarks/report.py relies on them):
- `python benchmarks/study_X.py [--smoke | --full] [--out PATH]`; the default is the quick CPU setting and
  writes `benchmarks/results/study_X.json` plus PNG plots under `docs/img/`.
- the JSON holds {"study", "setting", "command", "machine", "started", "seconds", "config", "rows", ...};
  each row is one measured case (a method, density, seed, ...) with its numbers.
- the study module defines `report(results: dict) -> str`: its markdown section for docs/results.md,
  computed from the JSON alone (tables with mean ± std over seeds, the plots, the command).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
IMAGES = ROOT / "docs" / "img"
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


def machine() -> dict:
    """Where the numbers were measured."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    try:
        info["cpu"] = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                            if line.startswith("model name")), None)
    except OSError:
        info["cpu"] = None
    try:
        info["commit"] = _git("rev-parse", "--short", "HEAD") or None
        # uncommitted changes to the code make the commit an incomplete record of what ran (not the results:
        # a resumed study has rewritten its own committed JSON)
        info["dirty"] = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "hf_px", "benchmarks",
                                  ":(exclude)benchmarks/results"))
    except (OSError, subprocess.SubprocessError):
        info["commit"], info["dirty"] = None, True
    return info


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()


def code_fingerprint(study_file: str | Path | None = None) -> str:
    """sha256 (16 hex digits) of what decides a study's numbers: every file of the hf_px package, this file,
    and the study's own script without its `SETTINGS` table. Two runs with the same fingerprint ran the same
    code, whatever the commit. The table is left out because it says which rows to run, not how a row is
    measured: adding a case or a density keeps the finished rows, and the table's values that do decide a row
    (epochs, images, rounds) are compared key by key by `resume_rows`."""
    import hashlib

    files = sorted(p for p in (ROOT / "hf_px").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    files += [Path(__file__).resolve()] + ([Path(study_file).resolve()] if study_file else [])
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
        content = _without_settings(path.read_text()).encode() if study_file and path == Path(study_file).resolve() \
            else path.read_bytes()
        digest.update(str(name).encode() + b"\0" + content + b"\0")
    return digest.hexdigest()[:16]


def _without_settings(source: str) -> str:
    """A study script's code with its module-level `SETTINGS = ...` statement removed (comments and layout
    normalised away by the round trip through the syntax tree)."""
    import ast

    tree = ast.parse(source)
    tree.body = [node for node in tree.body if not (isinstance(node, ast.Assign) and any(
        isinstance(target, ast.Name) and target.id == "SETTINGS" for target in node.targets))]
    return ast.unparse(tree)


def same_code(earlier: dict, now: dict) -> bool:
    """Whether two `machine()` records ran the same code (rows of one may join the other's): the same code
    fingerprint where both have one, else the same clean commit."""
    if earlier.get("code") and now.get("code"):   # and the same torch on the same kind of device
        return all(earlier.get(k) == now.get(k) for k in ("code", "torch", "device"))
    return earlier.get("commit") is not None and earlier.get("commit") == now.get("commit") \
        and not earlier.get("dirty", True) and not now.get("dirty", True)


def resume_rows(record: dict, out: Path, same: tuple[str, ...]) -> None:
    """Carry the finished rows of an earlier run's JSON `out` into `record` when that run measured the same
    setting with the same code and the same values of the config keys `same`; its commit, time and row count
    go into `record["earlier_runs"]`."""
    if not Path(out).exists():
        return
    previous = json.loads(Path(out).read_text())
    if not _setting_differs(previous, record, same) and same_code(previous["machine"], record["machine"]):
        _carry_rows(record, previous)


def adopt_rows(record: dict, out: Path, same: tuple[str, ...], reproduce) -> None:
    """Carry the rows of `out`, measured by other code, into `record` once this code has reproduced a sample
    of them: for a change that should move no number (a report, a docstring, a new case), so that a study of
    hours need not start over. `reproduce(rows)` measures a sample of `rows` again and returns
    (what it checked, every difference); one difference, or nothing checked, refuses the adoption. Fine-tuning
    is deterministic at a fixed torch, device, CPU model and thread count, so those must match as well (each
    moves numbers by itself). Raises ValueError, naming the reason, when the rows cannot be adopted."""
    if not Path(out).exists():
        raise ValueError(f"{out} does not exist: there are no rows to adopt (leave out --adopt to start afresh)")
    previous = json.loads(Path(out).read_text())
    differs = _setting_differs(previous, record, same)
    if differs:
        raise ValueError(f"{out} holds {differs}: nothing to adopt")
    if same_code(previous["machine"], record["machine"]):
        _carry_rows(record, previous)   # the same code: the rows resume without a check
        return
    machine_now = {k: record["machine"].get(k) for k in ("torch", "device", "cpu", "threads")}
    machine_then = {k: previous["machine"].get(k) for k in machine_now}
    if machine_then != machine_now:
        raise ValueError(f"{out} was measured with {machine_then}, this run has {machine_now}: rerun on the same "
                         "machine with the same torch and --threads to adopt its rows")
    checked, differences = reproduce(previous["rows"])
    if differences or (previous["rows"] and not checked):
        what = "; ".join(differences) or "no row could be measured again"
        raise ValueError(f"this code does not reproduce {out}: {what}; rerun with --fresh")
    _carry_rows(record, previous, code=previous["machine"].get("code"), adopted_after_reproducing=checked)


def _setting_differs(previous: dict, record: dict, same: tuple[str, ...]) -> str:
    """How an earlier run's JSON differs from `record` in what its rows mean ('' when it does not): another
    study or setting, or other values of the config keys `same`."""
    keys = [k for k in same if previous["config"].get(k) != record["config"].get(k)]
    if (previous.get("study"), previous.get("setting")) != (record.get("study"), record["setting"]) or keys:
        return (f"study {previous.get('study')!r} setting {previous.get('setting')!r} (config keys differing: "
                f"{', '.join(keys) or 'none'}), not study {record.get('study')!r} setting {record['setting']!r}")
    return ""


def _carry_rows(record: dict, previous: dict, **note) -> None:
    """`previous`'s rows into `record`, with an `earlier_runs` entry: its commit, time, own row count, `note`."""
    record["rows"] = previous["rows"]
    record["earlier_runs"] = previous.get("earlier_runs", []) + [
        {"commit": previous["machine"].get("commit"), **note, "seconds": previous.get("seconds"),
         "rows": len(previous["rows"]) - sum(run["rows"] for run in previous.get("earlier_runs", []))}]


def budget_check(short: list[float], long: list[float]) -> dict | None:
    """The dense reference trained with a study's budget (`short`, one value per seed) and with a longer one:
    converged when the means are within 1 point of each other. None until both are measured."""
    if not short or not long:
        return None
    gap = mean_std(long)[0] - mean_std(short)[0]
    return {"short": short, "long": long, "gap": gap, "converged": abs(gap) <= 0.01 + 1e-9}


def budget_sentence(check: dict, short_epochs: int, long_epochs: int) -> str:
    return (f"**Budget check**: dense {fmt_pm(check['short'])}% after {short_epochs} epochs, "
            f"{fmt_pm(check['long'])}% after {long_epochs}: {100 * check['gap']:+.1f} points, " + (
                "within 1 point: the budget converges." if check["converged"] else
                "more than 1 point apart: the budget does not converge, and the ranking is provisional."))


def sync(device: str) -> None:
    """Wait for the GPU's queued work (a no-op on the CPU), so that a timing covers it."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(call, device: str) -> float:
    """Wall seconds of `call()`, the device's queued work included."""
    sync(device)
    start = time.perf_counter()
    call()
    sync(device)
    return time.perf_counter() - start


def forward_and_train_calls(model: nn.Module, batches) -> dict:
    """The two references engine costs are measured against: one no-grad forward over all `batches`, and one
    training step's forward + backward on the first batch."""
    import torch.nn.functional as F

    from hf_px.batches import logits_of

    def forward():
        with torch.no_grad():
            for x, _ in batches:
                model(x)

    def train():
        x, y = batches[0]
        F.cross_entropy(logits_of(model(x)), y).backward()
        model.zero_grad(set_to_none=True)

    return {"forward": forward, "train": train}


def device() -> torch.device:
    """Where the studies train and score: the GPU when there is one (the --full settings), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def start_record(study: str, setting: str, config: dict, study_file: str | Path | None = None) -> dict:
    """A study's JSON record before its rows; with `study_file`, its machine record carries the code
    fingerprint a resumed run is matched on."""
    info = machine()
    if study_file:
        info["code"] = code_fingerprint(study_file)
    return {"study": study, "setting": setting, "command": "python " + " ".join([_relative(sys.argv[0]), *sys.argv[1:]]),
            "machine": info, "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config": config, "rows": []}


def run_summary(results: dict) -> str:
    """'Command: `...` (setting `quick`, 28 min on CPU, 1 threads, commit abc123' for a study's section;
    the caller closes the parenthesis."""
    machine = results["machine"]
    adopted = [run for run in results.get("earlier_runs", []) if run.get("adopted_after_reproducing")]
    return (f"Command: `{results['command']}` (setting `{results['setting']}`, {results.get('seconds', 0) / 60:.0f} "
            f"min on {machine.get('cpu') or machine['device']}, {machine['threads']} threads, commit "
            f"{machine.get('commit')}" + "".join(
                f"; the rows of commit {run['commit']} adopted after {len(run['adopted_after_reproducing'])} of "
                "them came out the same with this code" for run in adopted)
            + (f"; {results['setting_renamed']}" if results.get("setting_renamed") else ""))


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def write_json(record: dict, path: str | Path) -> Path:
    """Write atomically (temp file, then rename): an interrupted study never leaves a truncated JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(path.suffix + ".tmp")
    scratch.write_text(json.dumps(record, indent=1, sort_keys=False) + "\n")
    os.replace(scratch, path)
    return path


def write_shared(record: dict, path: str | Path, same: tuple[str, ...], key) -> Path:
    """`write_json` for a study run as several processes at once (`--shard`), each measuring its share of the
    rows into the same JSON: under a lock, first take in the rows that the other shards of the run (the same
    setting, code and values of the config keys `same`) have written there, so no shard overwrites another's.
    `key(row)` names a row."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            on_disk = json.loads(path.read_text())
            if not _setting_differs(on_disk, record, same) and same_code(on_disk["machine"], record["machine"]):
                known = {key(row) for row in record["rows"]}
                record["rows"] += [row for row in on_disk["rows"] if key(row) not in known]
        return write_json(record, path)


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt_pm(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """'mean ± std' of `values` x scale (percent by default); the mean alone for one value (a single run
    has no spread to show); '–' when empty."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "–"
    if sum(1 for v in values if v is not None and not math.isnan(v)) == 1:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


# --------------------------------------------------------------------------------------------------- data


def fashion_mnist_tensors(train: int | None, test: int | None, seed: int = 0, size: int = 28):
    """Normalised float tensors [N, 1, size, size] and labels: class-balanced random subsets of the real
    Fashion-MNIST train and test splits (None: all)."""
    from hf_px.data import balanced_indices, load_fashion_mnist

    out = []
    for split, count in (("train", train), ("test", test)):
        images, labels = load_fashion_mnist(split)
        if count is not None:
            index = torch.tensor(balanced_indices(labels, per_class=count // 10, seed=seed))
            images, labels = images[index], labels[index]
        x = (images.float() / 255 - FMNIST_MEAN) / FMNIST_STD
        x = x.unsqueeze(1)
        if size != 28:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        out += [x, labels]
    return out


def scoring_batches(x: torch.Tensor, y: torch.Tensor, per_class: int, seed: int, batch_size: int = 50):
    """The class-balanced scoring sample PX and the data-driven baselines see (disjoint from nothing: it is
    drawn from the train set, as in the product)."""
    from hf_px.data import balanced_indices

    index = torch.tensor(balanced_indices(y, per_class=per_class, seed=seed))
    xs, ys = x[index], y[index]
    return [(xs[i:i + batch_size], ys[i:i + batch_size]) for i in range(0, len(index), batch_size)]


# --------------------------------------------------------------------------------------------- training


def train_masked(model: nn.Module, masks: dict, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 0.1,
                 batch_size: int = 128, weight_decay: float = 1e-4, seed: int = 0, augment: bool = True,
                 optimizer: str = "sgd") -> list[float]:
    """SGD (momentum 0.9) or AdamW, cosine schedule, with hf-px's mask rule; returns the mean train loss per
    epoch and leaves the model in eval mode. `masks={}` trains a dense model.

    The same rule as `hf-px finetune`: pruned gradients are zeroed before each step, and the invariant is
    checked after every epoch (a revived weight raises).
    """
    from hf_px.batches import logits_of
    from hf_px.finetune import check_masks_hold, mask_gradients_

    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    masked = [(params[name], mask.to(params[name].dtype)) for name, mask in masks.items()]
    optimizer = (torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay) if optimizer == "adamw"
                 else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay))
    steps = epochs * math.ceil(len(x) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(x), batch_size):
            index = order[start:start + batch_size]
            images = _augment(x[index], generator) if augment else x[index]
            loss = F.cross_entropy(logits_of(model(images)), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            mask_gradients_(masked)
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(index)
            count += len(index)
        check_masks_hold(model, masks, optimizer, when="during a benchmark run")
        losses.append(total / count)
    model.eval()
    return losses


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with 2 px of zero padding and a horizontal flip, batched."""
    n, _, h, w = images.shape
    padded = F.pad(images, (2, 2, 2, 2), value=float(images.min()))
    dx, dy = torch.randint(0, 5, (2,), generator=generator).tolist()
    out = padded[:, :, dy:dy + h, dx:dx + w]
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    from hf_px.batches import logits_of

    model.eval()
    correct = sum(int((logits_of(model(x[i:i + batch_size])).argmax(-1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


# ------------------------------------------------------------------------------------------------ plots


def figure(width: float = 6.0, height: float = 4.0):
    """A matplotlib Figure with its own Agg canvas (no pyplot state); None without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, name: str, directory: Path = IMAGES) -> str | None:
    """Save as PNG under docs/img/; returns the path relative to docs/ for the markdown, None without a figure."""
    if fig is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    fig.savefig(directory / name, format="png", dpi=110)
    return f"img/{name}"
