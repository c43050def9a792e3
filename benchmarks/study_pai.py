"""Study 1: pruning at initialisation, then training, on real Fashion-MNIST.

A CIFAR-style ResNet-20 and a small VGG-style CNN, each freshly initialised per seed, are pruned at
initialisation by every method (px, px-exact, random, magnitude, snip, grasp, synflow, ntk-sap) to each
density, trained with the masks fixed (hf-px's mask rule) and evaluated on held-out test images. Every
method of a seed starts from the same initial weights and scores on the same class-balanced sample of
10 train images per class. Reported: test accuracy (mean ± std over seeds), per-layer density profiles,
tensors collapsed to zero. Rows are appended to the JSON as they finish; a rerun skips finished rows.

    python benchmarks/study_pai.py            # quick: 2 models x 8 methods x 3 densities x 3 seeds (~1 h on 2 shared CPU cores)
    python benchmarks/study_pai.py --converged  # ResNet-20 at a budget that converges, 5/1.8/0.5% (~6 h, resumable)
    python benchmarks/study_pai.py --full     # GPU: full data, 4 densities, 5 seeds, 100 rounds, longer training
    python benchmarks/study_pai.py --smoke    # seconds: what the test suite runs
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CHANCE = 0.1   # Fashion-MNIST's 10 classes: the accuracy of a network that predicts one class
METHODS = ["px", "px-exact", "random", "magnitude", "snip", "grasp", "synflow", "ntk-sap"]
SETTINGS = {
    "smoke": dict(models=["resnet20", "vgg"], methods=["px", "random"], densities=[0.2], seeds=[0, 1],
                  train=100, test=100, epochs=1, rounds=2, per_class=2, batch_size=50,
                  rounds_ablation={"model": "resnet20", "density": 0.2, "rounds": [1]},
                  longer=dict(train=200, epochs=2, densities=[0.2], cases=[["px", 3], ["magnitude", 1]])),
    "quick": dict(models=["resnet20", "vgg"], methods=METHODS, densities=[0.36, 0.05, 0.018], seeds=[0, 1, 2],
                  train=1000, test=1000, epochs=2, rounds=20, per_class=10, batch_size=64,
                  rounds_by_method={"px-exact": 5},   # its 20 default rounds cost ~3 min per run on 2 shared cores
                  rounds_ablation={"model": "resnet20", "density": 0.018, "rounds": [1, 5, 100]},
                  # the grid's short training ranks methods noisily: re-check the leaders and PX's default
                  # rounds with 3x the data and 1.5x the epochs (4.5x the steps) at the two lowest densities
                  longer=dict(train=3000, epochs=3, densities=[0.05, 0.018],
                              cases=[["px", 100], ["px", 20], ["px", 1], ["magnitude", 1], ["ntk-sap", 20]])),
    # a budget that converges (the dense network within a point of 3x the epochs: the `longer` dense rows),
    # at the high-sparsity end, with the methods that matter there; ~6 h on 2 CPU cores, resumable. Without
    # augmentation: with crop+flip, 3 epochs ended 5 points below 9 (this setting's first run, commit 22251e0)
    # and 9 still well below 27, which would cost 3x more again
    "converged": dict(models=["resnet20"], methods=["px", "magnitude", "random", "synflow", "ntk-sap"],
                      densities=[0.05, 0.018, 0.005], seeds=[0, 1, 2], train=20000, test=None, epochs=9, rounds=100,
                      rounds_by_method={"ntk-sap": 20}, per_class=10, batch_size=128, augment=False,
                      # PX's best variant on ResNet-20 in the quick setting's longer check: one round
                      rounds_ablation={"model": "resnet20", "density": 0.005, "rounds": [1]},
                      longer=dict(train=20000, epochs=27, densities=[1.0], cases=[["dense", 0]])),
    "full": dict(models=["resnet20", "vgg"], methods=METHODS, densities=[0.36, 0.134, 0.05, 0.018],
                 seeds=[0, 1, 2, 3, 4], train=None, test=None, epochs=30, rounds=100, per_class=10, batch_size=128,
                 rounds_ablation={"model": "resnet20", "density": 0.018, "rounds": [1, 10, 20, 300]}),
}


class SmallVGG(nn.Module):
    """VGG-style: (conv3x3-BN-ReLU) x2 then max-pool, three times (16, 32, 64 channels), global average
    pool, linear head. 72 k parameters."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        layers, cin = [], in_channels
        for cout in (16, 32, 64):
            for _ in range(2):
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


# a resumed run keeps the rows measured with these settings equal
_SAME = ("train", "test", "epochs", "per_class", "batch_size", "augment")


def _rounds(config: dict, method: str) -> int:
    """Rounds of `method` in the grid: single-shot methods 1, iterative ones the setting's (or their own)."""
    from hf_px.criteria import make_criterion

    if make_criterion(method).default_rounds == 1:
        return 1
    return config.get("rounds_by_method", {}).get(method, config["rounds"])


def build(name: str, seed: int) -> nn.Module:
    from hf_px.testing import resnet20

    torch.manual_seed(seed)
    return resnet20(num_classes=10, in_channels=1) if name == "resnet20" else SmallVGG()


def run(setting: str, out: Path, fresh: bool = False, shard: tuple[int, int] = (0, 1)) -> dict:
    """Measure every case of `setting` not already in `out` (resuming an interrupted run of the same code).
    `shard` (index, count): measure only every count-th run of `jobs` from the index-th, so that `count`
    processes started together share the work; each takes the others' rows into `out` as it writes."""
    import hf_px

    config = SETTINGS[setting]
    record = common.start_record("pai", setting, config, study_file=__file__)
    device = common.device()
    if not fresh:   # resume: keep the finished rows measured with the same code, data and training
        common.resume_rows(record, out, _SAME)
    longer = config.get("longer")
    if longer:   # longer-training rows of other sizes are stale
        record["rows"] = [r for r in record["rows"] if r.get("schedule", "grid") == "grid"
                          or (r["train"], r["epochs"]) == (longer["train"], longer["epochs"])]
    done = {_key(r) for r in record["rows"]}
    save = common.write_json if shard[1] == 1 else functools.partial(common.write_shared, same=_SAME, key=_key)
    started = time.perf_counter()
    x_train, y_train, x_test, y_test = (t.to(device) for t in common.fashion_mnist_tensors(
        config["train"], config["test"], seed=0))
    schedules = {"grid": (x_train, y_train, config["epochs"])}
    if longer:
        x_long, y_long, _, _ = (t.to(device) for t in common.fashion_mnist_tensors(
            longer["train"], config["test"], seed=0))
        schedules["longer"] = (x_long, y_long, longer["epochs"])
    for model_name in config["models"]:
        starts = {}   # seed -> (initial weights, scoring batches), shared by every method of that seed
        for index, (schedule, method, density, rounds, seed) in enumerate(jobs(config, model_name)):
            x_fit, y_fit, epochs = schedules[schedule]
            key = (model_name, method, density, seed, rounds, schedule)
            if key in done or index % shard[1] != shard[0]:
                continue
            if seed not in starts:
                starts[seed] = (build(model_name, seed).to(device),
                                common.scoring_batches(x_train, y_train, config["per_class"], seed))
            initial, batches = starts[seed]
            done.add(key)
            model = copy.deepcopy(initial)
            t0 = time.perf_counter()
            if method == "dense":
                params = dict(model.named_parameters())
                masks = {n: torch.ones_like(params[n], dtype=torch.bool) for n in hf_px.prunable_weights(model)}
            else:
                masks = hf_px.prune(model, batches, method=method, sparsity=1 - density, rounds=rounds, seed=seed)
            prune_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            losses = common.train_masked(model, masks, x_fit, y_fit, epochs, seed=seed,
                                         batch_size=config["batch_size"], augment=config.get("augment", True))
            train_s = time.perf_counter() - t0
            densities = hf_px.layer_densities(masks)
            row = {"model": model_name, "method": method, "density": density, "seed": seed, "rounds": rounds,
                   "accuracy": common.accuracy(model, x_test, y_test), "final_train_loss": losses[-1],
                   "global_density": hf_px.global_density(masks), "layer_densities": densities,
                   "collapsed": [n for n, d in densities.items() if d == 0.0],
                   "min_layer_density": min(densities.values()), "prune_s": round(prune_s, 2),
                   "train_s": round(train_s, 2)}
            if schedule != "grid":
                row.update(schedule=schedule, train=len(x_fit), epochs=epochs)
            record["rows"].append(row)
            record["seconds"] = round(time.perf_counter() - started, 1)
            save(record, out)
            print(f"{model_name:<8} {schedule:<6} seed {seed} {method:<9} density {density:6.2%} rounds {rounds:>3}: accuracy "
                  f"{row['accuracy']:.2%}, {len(row['collapsed'])} tensors at zero, prune {prune_s:.1f}s, "
                  f"train {train_s:.1f}s", flush=True)
    record["seconds"] = round(time.perf_counter() - started, 1)
    # the smoke run draws beside its JSON, so that it never touches the committed plots in docs/img
    save(record, out)   # first the other shards' rows, which the plots draw too
    record["plots"] = plots(record, common.IMAGES if setting != "smoke" else out.parent)
    save(record, out)
    return record


def jobs(config: dict, model_name: str) -> list[tuple[str, str, float, int, int]]:
    """The runs of one model as (schedule, method, density, rounds, seed), in the order that makes a partial
    run useful soonest: the dense rows, the first seed's budget check (a budget that fails shows within the
    first rows), then density by density from the sparsest (the end where PX is claimed to lead), every seed
    of a cell before the next cell, the rounds ablation right after its density, and the rest of the
    longer-training check last. Each row is seeded by itself, so the order moves no number."""
    seeds, ablation = config["seeds"], config["rounds_ablation"]
    longer = config.get("longer") or {"densities": [], "cases": []}
    checks = [("longer", m, d, r, s) for s in seeds for d in longer["densities"] for m, r in longer["cases"]]
    first = [job for job in checks if job[1] == "dense" and job[4] == seeds[0]]
    order = [("grid", "dense", 1.0, 0, s) for s in seeds] + first
    for density in sorted(config["densities"]):
        order += [("grid", m, density, _rounds(config, m), s) for s in seeds for m in config["methods"]]
        if model_name == ablation["model"] and density == ablation["density"]:   # how many rounds PX needs
            order += [("grid", "px", density, r, s) for s in seeds for r in ablation["rounds"]]
    return order + [job for job in checks if job not in first]


# ------------------------------------------------------------------------------------------------ report


def _key(row: dict) -> tuple:
    return row["model"], row["method"], row["density"], row["seed"], row["rounds"], row.get("schedule", "grid")


def _rows(results, schedule="grid", **where):
    """Rows matching `where` of one training schedule ("grid" or "longer"); of the grid, its main rows
    (not the rounds ablation's) unless `rounds` is given."""
    config = results["config"]
    rows = [r for r in results["rows"] if r.get("schedule", "grid") == schedule
            and all(r[k] == v for k, v in where.items())]
    if schedule != "grid":
        return rows
    if "rounds" not in where:     # the grid's rows (not the rounds ablation's, nor rows of other settings)
        rows = [r for r in rows if r["method"] == "dense" or r["rounds"] == _rounds(config, r["method"])]
    return rows


def plots(results: dict, directory: Path) -> dict:
    """Accuracy vs density per model; per-layer density profiles at the lowest density (first seed).
    Returns {name: path relative to docs/}."""
    config, paths = results["config"], {}
    prefix = "study_pai" if results["setting"] == "quick" else f"study_pai_{results['setting']}"
    colours = dict(zip(METHODS, ["#d62728", "#ff7f0e", "#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b",
                                 "#e377c2"]))
    for model in config["models"]:
        fig = common.figure(6.5, 4.2)
        if fig is None:
            return {}
        axes = fig.subplots()
        for method in config["methods"]:
            means, stds = [], []
            for density in config["densities"]:
                mean, std = common.mean_std([r["accuracy"] for r in _rows(results, model=model, method=method,
                                                                          density=density)])
                means.append(100 * mean)
                stds.append(100 * std)
            axes.errorbar([100 * d for d in config["densities"]], means, yerr=stds, label=method, marker="o",
                          capsize=3, color=colours.get(method), lw=2.2 if method == "px" else 1.2)
        dense, _ = common.mean_std([r["accuracy"] for r in _rows(results, model=model, method="dense")])
        axes.axhline(100 * dense, color="black", ls="--", lw=1, label="dense")
        axes.set_xscale("log")
        axes.minorticks_off()
        axes.set_xticks([100 * d for d in config["densities"]], [f"{100 * d:g}%" for d in config["densities"]])
        axes.set_xlabel("density (weights kept, log scale)")
        axes.set_ylabel("test accuracy (%)")
        axes.set_title(f"{model}: prune at init, then train (Fashion-MNIST)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, ncol=2)
        paths[f"accuracy_{model}"] = common.save_figure(fig, f"{prefix}_accuracy_{model}.png", directory)

        lowest = min(config["densities"])
        fig = common.figure(7.5, 4.2)
        axes = fig.subplots()
        seed = config["seeds"][0]
        for method in config["methods"]:
            row = _rows(results, model=model, method=method, density=lowest, seed=seed)
            if row:
                values = list(row[0]["layer_densities"].values())
                axes.plot(range(len(values)), [100 * v for v in values], marker=".", label=method,
                          color=colours.get(method), lw=2.2 if method == "px" else 1.0)
        axes.set_yscale("symlog", linthresh=0.1)
        axes.set_xlabel("layer (input to output)")
        axes.set_ylabel("density (%)")
        axes.set_title(f"{model}: per-layer density at {lowest:.1%} (seed {seed})")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, ncol=2)
        paths[f"layers_{model}"] = common.save_figure(fig, f"{prefix}_layers_{model}.png", directory)
    return paths


def report(results: dict) -> str:
    config = results["config"]
    budget = " at a budget that converges" if results["setting"] == "converged" else ""
    lines = [f"## Study 1{budget}: pruning at initialisation, then training (Fashion-MNIST)", "",
             common.run_summary(results)
             + "".join(f"; resumed from a run at commit {run['commit']} that measured {run['rows']} rows in "
                       f"{(run['seconds'] or 0) / 60:.0f} min" for run in results.get("earlier_runs", []))
             + f"). Seeds {config['seeds']}: each seed draws the "
             f"initial weights (shared by all methods) and the scoring sample ({config['per_class']} train images "
             f"per class). Training: {config['train'] or 'all'} train images, {config['epochs']} epochs of SGD "
             f"(momentum 0.9, lr 0.1 cosine, batch {config['batch_size']}"
             f"{', crop+flip' if config.get('augment', True) else ', no augmentation'}), masks fixed; accuracy on "
             f"{config['test'] or 'all'} test images. Iterative methods use {config['rounds']} rounds"
             + "".join(f" ({m}: {n})" for m, n in config.get("rounds_by_method", {}).items()) + "; the head "
             "stays dense (hf-px's default). Accuracy in %, mean ± std over seeds.", ""]
    for model in config["models"]:
        dense = common.fmt_pm([r["accuracy"] for r in _rows(results, model=model, method="dense")])
        lines += [f"### {model} (dense: {dense})", "",
                  "| method | " + " | ".join(f"{d:.1%}" for d in config["densities"]) + " | tensors at zero (all runs) |",
                  "|---|" + "---:|" * len(config["densities"]) + "---:|"]
        for method in config["methods"]:
            cells = [common.fmt_pm([r["accuracy"] for r in _rows(results, model=model, method=method, density=d)])
                     for d in config["densities"]]
            collapsed = sum(len(r["collapsed"]) for r in _rows(results, model=model, method=method))
            lines.append(f"| {'**px**' if method == 'px' else method} | " + " | ".join(cells) + f" | {collapsed} |")
        lines.append("")
        lines += _verdicts(results, model)
        ablation = config["rounds_ablation"]
        if model == ablation["model"]:
            rounds = sorted(set(ablation["rounds"]) | {config["rounds"]})
            cells = [common.fmt_pm([r["accuracy"] for r in _rows(results, model=model, method="px",
                                                                  density=ablation["density"], rounds=n)])
                     for n in rounds]
            seconds = [common.mean_std([r["prune_s"] for r in _rows(results, model=model, method="px",
                                                                    density=ablation["density"], rounds=n)])[0]
                       for n in rounds]
            lines += [f"PX rounds at {ablation['density']:.1%} density ({model}): accuracy and pruning time", "",
                      "| rounds | " + " | ".join(str(n) for n in rounds) + " |",
                      "|---|" + "---:|" * len(rounds) + "",
                      "| accuracy (%) | " + " | ".join(cells) + " |",
                      "| pruning time (s) | " + " | ".join(f"{t:.1f}" if t == t else "–" for t in seconds) + " |", ""]
        check = budget_check(results, model)
        if check:
            lines += [common.budget_sentence(check, config["epochs"], config["longer"]["epochs"]), ""]
        elif _rows(results, "longer", model=model):
            lines += _longer_report(results, model)
        for key in (f"accuracy_{model}", f"layers_{model}"):
            if results.get("plots", {}).get(key):
                lines += [f"![{key}]({results['plots'][key]})", ""]
    return "\n".join(lines)


def budget_check(results: dict, model: str) -> dict | None:
    """The dense network's accuracy with the grid's training and with the longer schedule (means over seeds),
    where the setting measures it (a `longer` case "dense")."""
    return common.budget_check([r["accuracy"] for r in _rows(results, model=model, method="dense")],
                               [r["accuracy"] for r in _rows(results, "longer", model=model, method="dense")])


def complete_cells(results: dict, model: str) -> list[tuple[float, dict[str, tuple[float, float]]]]:
    """(density, {case: (mean, std)}) of the grid's densities, sparsest first, where every method has all the
    setting's seeds: the methods by name, and at the rounds ablation's density its px runs as 'px (1 round)'
    (each once it too has every seed). A density still running has no cell: a partial one ranks nothing."""
    config, cells = results["config"], []
    ablation = config["rounds_ablation"]
    for density in sorted(config["densities"]):
        runs = {m: [r["accuracy"] for r in _rows(results, model=model, method=m, density=density)]
                for m in config["methods"]}
        if model == ablation["model"] and density == ablation["density"]:
            runs.update({_case_label("px", n): [r["accuracy"] for r in _rows(
                results, model=model, method="px", density=density, rounds=n)] for n in ablation["rounds"]
                if n != _rounds(config, "px")})
        complete = {case: values for case, values in runs.items() if len(values) == len(config["seeds"])}
        if all(m in complete for m in config["methods"]):
            cells.append((density, {case: common.mean_std(values) for case, values in complete.items()}))
    return cells


def _case_label(method: str, rounds: int) -> str:
    """'magnitude' for a one-shot method; 'px (100 rounds)' for an iterative one."""
    from hf_px.criteria import make_criterion

    if method == "dense":
        return method
    if make_criterion(method).default_rounds == 1 and rounds == 1:
        return method
    return f"{method} ({rounds} round{'s' if rounds > 1 else ''})"


def longer_ranking(results: dict, model: str, density: float) -> list[tuple[str, float, float, int]]:
    """The longer-training check at one density: (case label, mean, std, runs), best mean first."""
    ranking = []
    for method, rounds in results["config"]["longer"]["cases"]:
        values = [r["accuracy"] for r in _rows(results, "longer", model=model, method=method, density=density,
                                               rounds=rounds)]
        if values:
            ranking.append((_case_label(method, rounds), *common.mean_std(values), len(values)))
    return sorted(ranking, key=lambda case: -case[1])


def _longer_report(results: dict, model: str) -> list[str]:
    config, longer = results["config"], results["config"]["longer"]
    steps = longer["train"] * longer["epochs"] / ((config["train"] or 1) * config["epochs"])
    lines = [f"Longer-training check ({model}): the grid's leaders and PX's default rounds again, trained on "
             f"{longer['train']} images for {longer['epochs']} epochs ({steps:.1f}x the grid's steps), same seeds, "
             "initial weights and scoring sample. Accuracy in %, mean ± std over seeds.", "",
             "| method | " + " | ".join(f"{d:.1%}" for d in longer["densities"]) + " |",
             "|---|" + "---:|" * len(longer["densities"])]
    cells = {d: {label: f"{100 * mean:.1f} ± {100 * std:.1f}" for label, mean, std, _ in
                 longer_ranking(results, model, d)} for d in longer["densities"]}
    for method, rounds in longer["cases"]:    # in the order the setting lists them
        label = _case_label(method, rounds)
        if any(label in by_label for by_label in cells.values()):
            lines.append(f"| {label} | " + " | ".join(cells[d].get(label, "–") for d in longer["densities"]) + " |")
    lines.append("")
    for density in longer["densities"]:
        ranking = longer_ranking(results, model, density)
        if not ranking:
            continue
        best, spread = ranking[0], max(case[2] for case in ranking)
        order = ", ".join(f"{label} {100 * mean:.1f}" for label, mean, _, _ in ranking)
        lines.append(f"- at {density:.1%}: {order} (std up to {100 * spread:.1f}); best **{best[0]}**")
    return lines + [""]


def runs_at_chance(results: dict, model: str) -> dict[tuple[float, str], list[tuple[int, float]]]:
    """{(density, case label as `complete_cells` names it): [(seed, accuracy)]} of the grid's runs that ended at
    chance (within a point of 10% on Fashion-MNIST's 10 classes): networks that collapsed, which a mean ± std
    alone hides."""
    config, chance = results["config"], {}
    for r in results["rows"]:   # the rounds ablation's too
        if r["model"] == model and r.get("schedule", "grid") == "grid" and r["accuracy"] <= CHANCE + 0.01:
            grid = r["method"] == "dense" or r["rounds"] == _rounds(config, r["method"])
            case = r["method"] if grid else _case_label(r["method"], r["rounds"])
            chance.setdefault((r["density"], case), []).append((r["seed"], r["accuracy"]))
    return chance


def cell_ties(results: dict, model: str) -> list[tuple[float, dict[str, tuple[float, float]], str, list[str]]]:
    """(density, {case: (mean, std)}, the case with the best mean, the cases that tie it) of each complete cell
    (`complete_cells`). A tie is study 4's: within one standard deviation over seeds. A case with a run at chance
    ties nothing, the best included: its spread is the collapse, not seed noise."""
    from study_transfer import ties

    chance, out = runs_at_chance(results, model), []
    for density, means in complete_cells(results, model):
        best = max(means, key=lambda case: means[case][0])
        tied = [case for case in sorted(means, key=lambda c: -means[c][0])
                if ties(means[best], means[case]) and (density, case) not in chance]
        out.append((density, means, best, tied))
    return out


def _verdicts(results: dict, model: str) -> list[str]:
    """Computed sentences, density by density: the best mean, the cases that tie it, how far PX's grid case is
    behind, and the runs that ended at chance."""
    config, out = results["config"], []
    cells = {density: (means, best, tied) for density, means, best, tied in cell_ties(results, model)}
    chance = runs_at_chance(results, model)
    for density in config["densities"]:
        if density not in cells:   # a partial cell ranks nothing
            done = sum(len(_rows(results, model=model, method=m, density=density)) for m in config["methods"])
            if done:
                out.append(f"- at {density:.1%} density: {done} of {len(config['methods']) * len(config['seeds'])} "
                           "runs so far; no verdict until every method has all its seeds")
            continue
        means, best, tied = cells[density]
        others = [case for case in tied if case != best]
        text = (f"- at {density:.1%} density the best mean is **{best}** ({100 * means[best][0]:.1f}%); "
                + (f"tied (within one standard deviation): {', '.join(others)}" if others else "no other case ties it"))
        if "px" in means and "px" not in tied:
            text += f"; px is {100 * (means[best][0] - means['px'][0]):.1f} points behind"
        at_chance = [f"{case} seed {seed} ({100 * accuracy:.1f}%)" for (d, case), runs in sorted(chance.items())
                     if d == density for seed, accuracy in runs]
        if at_chance:
            text += f"; at chance (collapsed; counted in the mean, ties nothing): {', '.join(at_chance)}"
        out.append(text)
    return out + [""]


def replot(path: Path = common.RESULTS / "study_pai.json") -> None:
    """Redraw the plots of a finished run from its JSON (no re-measuring)."""
    results = json.loads(path.read_text())
    results["plots"] = plots(results, common.IMAGES)
    common.write_json(results, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (the test suite's run)")
    group.add_argument("--full", action="store_true", help="full data and schedule (for a GPU)")
    group.add_argument("--converged", action="store_true",
                       help="20,000 images x 3 epochs, densities 5/1.8/0.5%%, with the dense budget check (hours)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/study_pai.json)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is much faster on a machine shared with other jobs)")
    parser.add_argument("--fresh", action="store_true",
                        help="measure every case again (default: resume from the JSON if the same code wrote it)")
    parser.add_argument("--shard", default="0/1", metavar="I/N",
                        help="measure every N-th run from the I-th (0-based): start N processes together, one per "
                             "core, with the same --out; a later plain run measures whatever they left")
    args = parser.parse_args(argv)
    index, _, count = args.shard.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        parser.error(f"--shard {args.shard!r}: give I/N with 0 <= I < N, e.g. --shard 0/2 and --shard 1/2")
    if args.threads:
        torch.set_num_threads(args.threads)
    setting = "smoke" if args.smoke else "full" if args.full else "converged" if args.converged else "quick"
    out = args.out or common.RESULTS / ("study_pai.json" if setting == "quick" else f"study_pai_{setting}.json")
    results = run(setting, out, fresh=args.fresh, shard=(int(index), int(count)))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
