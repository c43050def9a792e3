"""Write docs/results.md from the studies' JSON results: nothing in it is typed in by hand.

    python benchmarks/study_pai.py && python benchmarks/study_transformers.py && python benchmarks/study_cost.py
    python benchmarks/bench_px.py --models resnet20,resnet20-authors,vit6,vitb,hf-vitb-sdpa,hf-vitb-eager \\
        --json benchmarks/results/bench_px_cpu.json
    python benchmarks/report.py            # reads benchmarks/results/*.json, writes docs/results.md

Each study module renders its own section (`report(results)`); this file adds the header, the machines,
and "Defaults, and what supports them", computed from the same numbers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_px  # noqa: E402
import common  # noqa: E402
import gpu_check  # noqa: E402
import study_pai  # noqa: E402
import study_transformers  # noqa: E402
from hf_px.pruning import AUTO_FOR_CNNS, AUTO_FOR_TRANSFORMERS, describe_choice  # noqa: E402

# (key, module that renders it, its JSON file's stem, the command that writes it); transfer first: the
# toolkit's own use case
STUDIES = [("transfer", "study_transfer", "study_transfer", "python benchmarks/study_transfer.py --grid"),
           ("transfer_cnn", "study_transfer", "study_transfer_cnn",
            "python benchmarks/study_transfer.py --cnn"),
           ("transfer_channels", "study_transfer", "study_transfer_channels",
            "python benchmarks/study_transfer.py --channels"),
           ("transfer_auto_cnn", "study_transfer", "study_transfer_auto_cnn",
            "python benchmarks/study_transfer.py --auto-cnn"),
           ("transfer_quick", "study_transfer", "study_transfer_quick", "python benchmarks/study_transfer.py"),
           ("transfer_second_vit", "study_transfer", "study_transfer_second_vit",
            "python benchmarks/study_transfer.py --second-vit"),
           ("transfer_budget", "study_transfer", "study_transfer_budget", "python benchmarks/study_transfer.py --budget"),
           ("pai", "study_pai", "study_pai", "python benchmarks/study_pai.py"),
           ("pai_converged", "study_pai", "study_pai_converged", "python benchmarks/study_pai.py --converged"),
           ("transformers", "study_transformers", "study_transformers", "python benchmarks/study_transformers.py"),
           ("cost", "study_cost", "study_cost", "python benchmarks/study_cost.py"),
           ("batchnorm", "study_batchnorm", "study_batchnorm", "python benchmarks/study_batchnorm.py")]


# the engine benchmarks: (key, JSON file); gpu_check.json exists only once a GPU session has run it; and
# study 4's layer diagnoses (`study_transfer.py --layers`, with `--cnn` for the 64 px grid), each rendered
# inside the section of the study it diagnoses (`LAYERS`)
BENCHMARKS = [("bench", "bench_px_cpu"), ("gpu", "gpu_check"), ("transfer_layers", "study_transfer_layers"),
              ("transfer_cnn_layers", "study_transfer_cnn_layers")]
LAYERS = {"transfer": "transfer_layers", "transfer_cnn": "transfer_cnn_layers"}


def load_results(directory: Path = common.RESULTS) -> dict[str, dict]:
    found = {}
    for key, stem in [(key, stem) for key, _, stem, _ in STUDIES] + BENCHMARKS:
        path = directory / f"{stem}.json"
        if path.is_file():
            found[key] = json.loads(path.read_text())
    return found


def defaults_section(results: dict[str, dict]) -> str:
    """What the numbers say about hf_px's defaults (method per architecture, rounds, PX options), computed."""
    from hf_px.criteria import make_criterion

    px, exact = make_criterion("px"), make_criterion("px-exact")
    lines = ["## Defaults, and what supports them", "",
             f"`hf-px prune` defaults to `--method auto`: **{describe_choice(AUTO_FOR_TRANSFORMERS)}** for models "
             "whose forward pass computes softmax attention (ViT, DeiT, Swin, text encoders) and "
             f"**{describe_choice(AUTO_FOR_CNNS)}** for the rest (`hf_px.auto_choice`), with a per-tensor floor; "
             "the Python API (`hf_px.prune`, "
             "`hf_px.score`) defaults to `method=\"auto\"` too. px "
             f"runs {px.default_rounds} rounds with head=`{px.head}`, batchnorm=`{px.batchnorm}`, "
             f"batchnorm_activation=`{px.batchnorm_activation}`, layernorm=`{px.layernorm}`, "
             f"gate_only=`{px.gate_only}`; px-exact {exact.default_rounds} rounds of {exact.probes} probes. What the "
             "studies say, computed from the tables below (quick settings: few seeds, short or no training, small "
             "evaluation sets):", ""]
    pai, transformers, transfer = results.get("pai"), results.get("transformers"), results.get("transfer")
    # study 4 (the toolkit's use case) first, then the studies without fine-tuning or from initialisation
    grids = [grid for grid in (transfer, results.get("transfer_cnn"), results.get("transfer_second_vit")) if grid]
    for grid in grids:
        for model, (family, choice) in TRANSFER_FAMILIES.items():
            if model in grid["config"]["models"]:
                lines += _transfer_method(grid, model, family, choice)
    converged = results.get("pai_converged")
    if converged:   # study 1 second: from initialisation, but trained to convergence
        lines += _converged_method(converged, AUTO_FOR_CNNS["method"])
    if transformers:
        lines += _transformers_method(transformers, AUTO_FOR_TRANSFORMERS)
    if pai:
        lines += _cnn_method(pai, transformers, AUTO_FOR_CNNS["method"])
        lines += _rounds(pai, px.default_rounds)
    if transformers:
        lines += _options(transformers)
    lines += _api_default(pai, transformers, *grids, converged=converged)
    lines += _where_px_loses(pai, transformers, *grids, converged=converged)
    if "transfer_auto_cnn" in results:
        lines += _auto_ticket(results["transfer_auto_cnn"], [results[k] for k in ("transfer", "transfer_cnn")
                                                            if k in results])
    lines += _narrowing([results[key] for key in LAYERS.values() if key in results])
    if "transfer_channels" in results:
        lines += _keeping_width(results["transfer_channels"], [results[k] for k in ("transfer", "transfer_cnn")
                                                               if k in results])
    return "\n".join(lines + [""])


def _narrowing(diagnoses: list[dict]) -> list[str]:
    """From study 4's layer diagnoses: at each model's lowest density, the share of output channels px and
    magnitude remove entirely (every weight of the channel pruned), over all targets and in the kind of tensor
    where the two differ most. A ticket that keeps its density but loses channels is a narrower network."""
    cells = []
    for layers in diagnoses:
        for model in dict.fromkeys(r["model"] for r in layers["rows"]):
            rows = [r for r in layers["rows"] if r["model"] == model and "dead_channels" in r]
            density = min((r["density"] for r in rows), default=None)
            by_case = {r["case"]: r["dead_channels"] for r in rows if r["density"] == density}
            if "px" not in by_case or "magnitude" not in by_case:
                continue

            def share(case, groups=None):
                counts = [c for g, c in by_case[case].items() if groups is None or g in groups]
                return 100 * sum(removed for removed, _ in counts) / max(1, sum(total for _, total in counts))

            widest = max(by_case["px"], key=lambda g: abs(share("px", [g]) - share("magnitude", [g])))
            cells.append((f"{model} at {density:.0%}: px {share('px'):.0f}%, magnitude {share('magnitude'):.0f}% "
                          f"(`{widest}`: {share('px', [widest]):.0f}% vs {share('magnitude', [widest]):.0f}%)",
                          share("px") > share("magnitude")))
    if not cells:
        return []
    narrower = sum(px_narrower for _, px_narrower in cells)
    return ["- **How the tickets differ in width** (study 4's layer diagnosis, seed 0, before fine-tuning): the "
            "share of output channels a ticket removes entirely, over all its target tensors and in the kind of "
            "tensor where px and magnitude differ most: " + "; ".join(text for text, _ in cells) + ". PX ranks a "
            "weight by the paths through it, which favours the weights of channels already on many paths: its "
            f"ticket is the narrower network in {narrower} of these {len(cells)} cases, at the same density."]


def _auto_ticket(measured: dict, references: list[dict]) -> list[str]:
    """auto's own ticket (the study's case with auto's floor, `--auto-cnn`) where the floor binds, against the
    case without it (measured beside it where the setting runs it, seed by seed; else the grid's rows) and
    against the grid's px."""
    import study_transfer

    case = next(c for c in measured["config"]["cases"] if c in study_transfer.VARIANTS)   # not the grid's own
    method = study_transfer.VARIANTS[case]["method"]
    cells, tied = [], []
    for model in measured["config"]["models"]:
        reference = next((r for r in references if model in r["config"]["models"]), None)
        for density in measured["config"]["densities"] if reference else []:
            mine = _by_seed(measured, model, case, density)
            plain = _by_seed(measured, model, method, density) or _by_seed(reference, model, method, density)
            px = study_transfer._values(reference, model, "px", density)
            if not (mine and plain and px):
                continue
            (m, ms), (p, ps), (x, _) = (common.mean_std(v) for v in (list(mine.values()), list(plain.values()), px))
            tied.append(study_transfer.ties(max((m, ms), (p, ps)), min((m, ms), (p, ps))))
            verdict = "ties it" if tied[-1] else f"{100 * abs(m - p):.1f} points {'below' if m < p else 'above'} it"
            paired = [100 * (mine[seed] - plain[seed]) for seed in mine if seed in plain]
            differences = (f"; seed by seed, with minus without: {', '.join(f'{d:+.1f}' for d in paired)}, "
                           f"below in {sum(d < 0 for d in paired)} of {len(paired)}" if paired else "")
            cells.append(f"{model} at {density:.0%} ({len(mine)} seeds): {100 * m:.1f} ± {100 * ms:.1f} against "
                         f"`{method}`'s {100 * p:.1f} ± {100 * ps:.1f} without the floor ({verdict}{differences}), "
                         f"and {100 * (m - x):+.1f} against px")
    if not cells:
        return []
    cost = ("it ties the ticket without the floor wherever measured, so the guard costs nothing the seeds resolve"
            if all(tied) else "this is what the guard costs where it binds")
    return [f"- **auto's own CNN ticket, measured where its floor binds** (`{case}`, study 4's section on it): "
            + "; ".join(cells) + f". `--method auto` keeps the floor on CNNs too, as the guard against emptied "
            f"tensors at extreme sparsity: {cost}."]


def _by_seed(results: dict, model: str, case: str, density: float) -> dict[int, float]:
    """{seed: fine-tuned accuracy} of one case and density, at the setting's epochs."""
    import study_transfer

    return {r["seed"]: r["finetuned"] for r in study_transfer._rows(results, model, case, density)
            if r["finetuned"] is not None}


def _keeping_width(channels: dict, references: list[dict]) -> list[str]:
    """Whether keeping every channel buys PX's accuracy back: `--channels`' floor against px, per model and
    density, the px rows from the grid that ran the model (the same data, recipe, seeds and epochs); a gap
    within one standard deviation is a tie (`study_transfer.ties`), as everywhere on the page."""
    import study_transfer

    [case] = channels["config"]["cases"]
    cells, verdicts = [], []
    for model in channels["config"]["models"]:
        reference = next((r for r in references if model in r["config"]["models"]), None)
        if reference is None:
            continue
        for density in channels["config"]["densities"]:
            floored = study_transfer._values(channels, model, case, density)
            px = study_transfer._values(reference, model, "px", density)
            if floored and px:
                floored, px = common.mean_std(floored), common.mean_std(px)
                tie = study_transfer.ties(max(floored, px), min(floored, px))
                verdicts.append("tie" if tie else "ahead" if floored[0] > px[0] else "behind")
                cells.append(f"{model} {density:.0%} {100 * (floored[0] - px[0]):+.1f}{' (a tie)' if tie else ''}")
    if not cells:
        return []
    fraction = study_transfer.VARIANTS[case]["channel_floor"]
    counts = {verdict: verdicts.count(verdict) for verdict in ("ahead", "tie", "behind")}
    verdict = (f"It is ahead of px in {counts['ahead']} of these {len(cells)} (beyond one standard deviation)"
               if counts["ahead"] else
               f"It is never ahead of px (behind in {counts['behind']}, a tie in {counts['tie']}), so restoring "
               "channels one weight at a time is not what PX lacks (docs/px.md section 2)")
    return [f"- **Does keeping width buy it back?** px with a per-channel floor (`min_channel_density` at {fraction:g} "
            "x the target density: every output channel keeps at least one weight; study 4's section on it), "
            f"minus px, in points of fine-tuned accuracy: {', '.join(cells)}. {verdict}; the floor stays an "
            "option, off by default."]


# study 4's models and the family of `--method auto` each stands for: (family, what auto runs on it)
TRANSFER_FAMILIES = {"vit-mnist": ("Transformers", AUTO_FOR_TRANSFORMERS),
                     "efficientnet-lite0": ("CNNs", AUTO_FOR_CNNS),
                     "efficientnet-lite0-64px": ("CNNs, EfficientNet-Lite0 at 64 px", AUTO_FOR_CNNS),
                     "vit-mnist-deep": ("Transformers, a second ViT", AUTO_FOR_TRANSFORMERS)}


def complete_transfer_cells(transfer: dict, model: str) -> list[tuple[float, list]]:
    """Study 4's (density, ranking) cells of `model` where every case run on it has all the setting's seeds."""
    import study_transfer

    return [(d, study_transfer.ranking(transfer, model, d)) for d in transfer["config"]["densities"]
            if study_transfer.complete(transfer, model, d)]


def _budget_status(transfer: dict, model: str) -> str:
    import study_transfer

    return _status(study_transfer.budget_check(transfer, model))


def _status(check: dict | None) -> str:
    """A `common.budget_check` in three words."""
    return ("budget converged" if check and check["converged"] else
            "budget not converged: provisional" if check else "budget check pending: provisional")


def _transfer_method(transfer: dict, model: str, family: str, choice: dict) -> list[str]:
    """Does study 4 back `choice` (an `auto_choice`) as auto's pick for `family`? Over the complete densities
    of the model that stands for the family, a default must serve whatever sparsity a user asks for: it is
    backed when its largest gap to a density's best fine-tuned accuracy is the smallest of all cases. How
    often each case ties the best is shown beside it."""
    import study_transfer

    cells = complete_transfer_cells(transfer, model)
    if not cells:
        return []
    picked = describe_choice(choice)
    mine, floored = auto_case(transfer, choice)   # the study's case that is auto's ticket
    tied, means = {}, []
    for density, ranked in cells:
        for case in study_transfer.winners(transfer, model, density):
            tied[case] = tied.get(case, 0) + 1
        means.append(f"{density:.0%}: " + ", ".join(f"`{c}` {100 * m:.1f}" for c, m, _, _ in ranked))
    overall, gaps = _over_densities_values(cells)
    shown = {case: round(100 * gap, 1) for case, gap in gaps.items()}   # in points, as printed: equal is a tie
    safest = min(shown, key=shown.get)
    if mine not in gaps:
        verdict = f"`{picked}` is not among the cases run on this model, so study 4 cannot back it"
    elif shown[mine] <= shown[safest]:
        verdict = (f"`{mine}` has the smallest largest gap to a density's best, {shown[mine]:.1f} points: "
                   "these cells back it")
    else:
        verdict = (f"`{mine}`'s largest gap to a density's best is {shown[mine]:.1f} points, `{safest}`'s "
                   f"{shown[safest]:.1f}: these cells do not back it")
    same = "" if mine not in gaps else (f"; auto's ticket is the study's case `{mine}`" + (
        ", with auto's floor" if floored else ", which lacks auto's floor"))
    return [f"- **{family}: {picked}, study 4 first** ({model} pre-trained, pruned, fine-tuned; "
            f"{_budget_status(transfer, model)}{same}). Of the {len(cells)} complete "
            f"densit{'y' if len(cells) == 1 else 'ies'}, the number at which each case "
            "ties the best fine-tuned accuracy (within one standard deviation): "
            + ", ".join(f"`{c}` {n}" for c, n in sorted(tied.items(), key=lambda item: -item[1]))
            + f"; {verdict}. " + _over_densities(transfer, model, overall, gaps) + " Means over seeds (%), best "
            "first: " + "; ".join(means) + "." + (_floor_binds(transfer, model, mine)
                                                  if mine in gaps and not floored else "")]


def auto_case(transfer: dict, choice: dict) -> tuple[str | None, bool]:
    """Study 4's case that `--method auto` reproduces when it runs `choice` (an `auto_choice`), and whether
    that case has auto's per-tensor floor: the study's variant of the choice with the floor where it runs one
    (e.g. "px, floor"), else the case of the choice alone, whose tickets lack the floor (`_floor_binds` says
    whether that changes them); (None, False) when the study runs neither."""
    import study_transfer
    from hf_px.pruning import AUTO_MIN_LAYER_DENSITY

    def settings(case):   # (the case's method, options and rounds as an `auto_choice`, its floor)
        options = dict(study_transfer.VARIANTS.get(case, {"method": case}))
        floor = options.pop("floor", 0.0)
        return {"method_options": {}, "rounds": None, **options}, floor

    cases = [case for case in transfer["config"]["cases"] if settings(case)[0] == choice]
    floored = [case for case in cases if settings(case)[1] == AUTO_MIN_LAYER_DENSITY]
    plain = [case for case in cases if settings(case)[1] == 0.0]
    return (floored[0], True) if floored else (plain[0], False) if plain else (None, False)


def _over_densities_values(cells: list[tuple[float, list]]) -> tuple[dict, dict]:
    """Each case's mean accuracy over the complete densities, and its largest gap to a density's best mean
    (what using it at every sparsity costs)."""
    gaps, means = {}, {}
    for _, ranked in cells:
        best = ranked[0][1]
        for case, mean, _, _ in ranked:
            gaps[case] = max(gaps.get(case, 0.0), best - mean)
            means.setdefault(case, []).append(mean)
    return {case: sum(values) / len(values) for case, values in means.items()}, gaps


def _over_densities(transfer: dict, model: str, overall: dict, gaps: dict) -> str:
    """`_over_densities_values` as text, best mean first, with the time pruning one ticket took."""
    order = sorted(overall, key=lambda case: -overall[case])
    text = ("Over those densities, mean (%) and largest gap to a density's best (points): " + ", ".join(
        f"`{c}` {100 * overall[c]:.1f} / {100 * gaps[c]:.1f}" for c in order) + ".")

    def seconds(case):
        times = [r["prune_s"] for r in transfer["rows"] if r["model"] == model and r["case"] == case]
        return sum(times) / len(times)

    return text + (" Pruning one ticket took (mean over the grid's runs, same order): "
                   + ", ".join(f"`{c}` {seconds(c):.0f} s" for c in order) + ".")


def _floor_binds(transfer: dict, model: str, case: str) -> str:
    """How often auto's per-tensor floor would have changed the case's masks (a tensor below it)."""
    from hf_px.pruning import AUTO_MIN_LAYER_DENSITY

    rows = [r for r in transfer["rows"] if r["model"] == model and r["case"] == case]
    if not rows:
        return ""
    below = sum(r["min_layer_density"] < AUTO_MIN_LAYER_DENSITY * r["density"] for r in rows)
    return (f" `--method auto` adds a per-tensor floor of {AUTO_MIN_LAYER_DENSITY:g} x the density, which the "
            f"study's `{case}` runs lack: {below} of their {len(rows)} tickets have a tensor below it"
            + (" (elsewhere auto's masks are the same)." if below else ", so auto's masks are the same."))


# per part of study 2: the metric that judges it, whether higher is better (the study's own), and its name
_PART_METRIC = {part: (*study_transformers.MAIN_METRIC[part], label) for part, label in
                (("vit", "the trained tiny ViT"), ("text", "MiniLM"), ("cnn", "EfficientNet-Lite0"))}


def _part_means(results: dict, part: str, density: float) -> dict[str, float]:
    metric = _PART_METRIC[part][0]
    variants = sorted({r["variant"] for r in results["rows"] if r["part"] == part} - {"dense"})
    means = {v: study_transformers._mean(results, metric, part=part, variant=v, density=density) for v in variants}
    return {v: m for v, m in means.items() if m == m}


def _densities(results: dict, part: str) -> list[float]:
    return sorted({r["density"] for r in results["rows"] if r["part"] == part and r["variant"] != "dense"},
                  reverse=True)


def _ordered(means: dict[str, float], higher: bool) -> list[str]:
    return sorted(means, key=lambda v: -means[v] if higher else means[v])


def _transformers_method(results: dict, choice: dict) -> list[str]:
    """Study 2's word on auto's transformer pick `choice` (pruned, not fine-tuned): its rank in each cell."""
    label = next((name for name, (method, options) in study_transformers.VARIANTS.items()
                  if method == choice["method"] and options == choice["method_options"]), None)
    cells, best, ahead = [], 0, 0
    for part in ("vit", "text"):
        metric, higher, name = _PART_METRIC[part]
        for density in _densities(results, part):
            means = _part_means(results, part, density)
            if label not in means or "px" not in means:
                continue
            order = _ordered(means, higher)
            best += order[0] == label
            ahead += order.index(label) < order.index("px")
            cells.append(f"{name} at {density:.0%}: {means[label]:.3f}, rank {order.index(label) + 1} of "
                         f"{len(order)}" + ("" if order[0] == label else f", best {order[0]} {means[order[0]]:.3f}"))
    if not cells:
        return []
    return [f"- **Transformers, study 2 (no fine-tuning, so second to study 4): `{label}`.** On the trained "
            "transformers of study 2 (pruned, not fine-tuned, at that study's rounds; ViT by accuracy retention, "
            "MiniLM by similarity ρ) it is the best "
            f"variant in {best} of {len(cells)} (model, density) cells and ahead of px with its default options in "
            f"{ahead} of {len(cells)} (" + "; ".join(cells) + "). Study 4 decides where the two disagree: users "
            "fine-tune what they prune."]


def _converged_method(converged: dict, method: str) -> list[str]:
    """Study 1 at a budget that converges: does it back `method` (auto's CNN pick) at its complete densities?"""
    config, out = converged["config"], []
    for model in config["models"]:
        check = study_pai.budget_check(converged, model)
        budget = ("budget pending" if check is None else
                  f"dense {100 * common.mean_std(check['short'])[0]:.1f}% vs {100 * common.mean_std(check['long'])[0]:.1f}% "
                  f"at 3x the epochs ({len(check['long'])} of {len(config['seeds'])} seeds so far), "
                  + ("converged" if check["converged"] else "not converged: provisional"))
        cells = study_pai.complete_cells(converged, model)
        head = (f"- **CNNs, study 1 at a budget that converges ({model} from initialisation, {config['epochs']} "
                f"epochs on {config['train']} images; {budget}).**")
        if not cells:
            out.append(f"{head} {len(converged['rows'])} runs so far; no density has every seed of every method yet.")
            continue
        wins, ties, gaps, best_px, px_ties, texts = 0, 0, [], 0, 0, []
        chance = study_pai.runs_at_chance(converged, model)
        for density, means, best, tied in study_pai.cell_ties(converged, model):
            order = _ordered({case: mean for case, (mean, _) in means.items()}, True)
            wins += best == method
            if method in means:   # auto's CNN pick, where the setting runs it
                gaps.append(means[best][0] - means[method][0])
                ties += method in tied
            best_px += _is_px(best)
            px_ties += any(_is_px(case) for case in tied)
            texts.append(f"{density:.1%}: " + ", ".join(f"{case} {100 * means[case][0]:.1f} ± {100 * means[case][1]:.1f}"
                                                         for case in order))
        n = len(cells)
        out.append(f"{head} {n} of {len(config['densities'])} densities complete; " + "; ".join(texts)
                   + (f". `{method}` has the best mean at {wins} of {n}, ties the best at {ties} of {n} and is at "
                      f"most {100 * max(gaps):.1f} points behind the best" if gaps
                      else f". `{method}` is not among its methods")
                   + f"; PX (any rounds) has the best mean at {best_px} of {n} and ties the best at {px_ties} of {n} "
                   "(a tie: within one standard deviation over seeds, as in study 4)"
                   + ("; runs at chance (a collapsed network, counted in the means, and its case ties nothing): "
                      + ", ".join(f"{case} seed {seed} at {density:.1%} ({100 * accuracy:.1f}%)"
                                  for (density, case), runs in sorted(chance.items()) for seed, accuracy in runs)
                      if chance else "") + ".")
    return out


def _cnn_method(pai: dict, transformers: dict | None, method: str) -> list[str]:
    config = pai["config"]
    longer_gap = None
    ranks = {m: [] for m in config["methods"]}
    wins = total = 0
    for model in config["models"]:
        for density in config["densities"]:
            means = {m: common.mean_std([r["accuracy"] for r in study_pai._rows(pai, model=model, method=m,
                                                                                 density=density)])[0]
                     for m in config["methods"]}
            means = {m: v for m, v in means.items() if v == v}
            if method not in means:
                continue
            total += 1
            order = _ordered(means, True)
            wins += order[0] == method
            for m in order:
                ranks[m].append(order.index(m) + 1)
    mean_rank = {m: sum(r) / len(r) for m, r in ranks.items() if r}
    by_rank = sorted(mean_rank, key=mean_rank.get)
    out = [f"- **CNNs, studies 1 and 2: `{method}`.** Study 1 (pruning at initialisation, then training), short-training grid: "
           f"{method} has the best mean accuracy in {wins} of {total} (model, density) cells; mean rank over the "
           "cells: " + ", ".join(f"{m} {mean_rank[m]:.1f}" for m in by_rank) + f" (of {len(mean_rank)})."]
    longer = config.get("longer")
    if longer:
        checks, winners, longer_gap = [], {}, None
        for model in config["models"]:
            for density in longer["densities"]:
                ranking = study_pai.longer_ranking(pai, model, density)
                if ranking:
                    winners[ranking[0][0]] = winners.get(ranking[0][0], 0) + 1
                    mine = [mean for label, mean, _, _ in ranking if label == method]
                    if mine:
                        longer_gap = max(longer_gap or 0.0, ranking[0][1] - mine[0])
                    spread = 100 * max(case[2] for case in ranking)
                    checks.append(f"{model} {density:.1%}: " + ", ".join(f"{label} {100 * mean:.1f}"
                                                                         for label, mean, _, _ in ranking)
                                  + f" (std up to {spread:.1f})")
        if checks:
            out.append(f"  With {longer['epochs']} epochs on {longer['train']} images (the longer-training check): "
                       + "; ".join(checks) + ". Best there: " + ", ".join(
                           f"{label} in {n} of {len(checks)} cells" for label, n in winners.items()) + ".")
    pretrained_wins = pretrained_cells = 0
    if transformers and _densities(transformers, "cnn"):
        cells = []
        for density in _densities(transformers, "cnn"):
            means = _part_means(transformers, "cnn", density)
            order = _ordered(means, False)
            pretrained_cells += 1
            pretrained_wins += order[0] == method
            shown = [v for v in dict.fromkeys((method, "px", "px-exact", "magnitude")) if v in means]
            cells.append(f"{density:.0%}: best {order[0]}; " + ", ".join(f"{v} {means[v]:.3f}" for v in shown))
        out.append("  On the trained EfficientNet-Lite0 with no fine-tuning (KL to the dense model, lower is "
                   "better): " + "; ".join(cells) + ".")
    if pretrained_cells:
        backed = pretrained_wins > pretrained_cells / 2
        out.append(f"  For {method} here: `hf-px prune` takes pre-trained checkpoints, and {method} is the best variant on "
                   f"the one pre-trained CNN here at {pretrained_wins} of {pretrained_cells} densities"
                   + ("" if backed else " (not a majority: these results do not back it there)")
                   + f"; at initialisation it has mean rank {mean_rank.get(method, float('nan')):.1f} in the grid"
                   + (f" and is at most {100 * longer_gap:.1f} points behind the best in the longer check"
                      if longer_gap is not None else "") + ".")
    return out


def _rounds(pai: dict, default: int) -> list[str]:
    config = pai["config"]
    ablation = config["rounds_ablation"]
    rounds = sorted(set(ablation["rounds"]) | {config["rounds"]})
    accuracy = {n: common.mean_std([r["accuracy"] for r in study_pai._rows(
        pai, model=ablation["model"], method="px", density=ablation["density"], rounds=n)]) for n in rounds}
    accuracy = {n: v for n, v in accuracy.items() if v[0] == v[0]}
    if not accuracy:
        return []
    text = (f"- **Rounds: {default}.** Short-training grid at {ablation['density']:.1%} density on "
            f"{ablation['model']}: " + ", ".join(f"{n} round{'s' * (n != 1)} {100 * m:.1f} ± {100 * s:.1f}%"
                                                 for n, (m, s) in accuracy.items()) + ".")
    longer = config.get("longer")
    px_rounds = sorted(r for m, r in (longer or {}).get("cases", []) if m == "px")
    if default in px_rounds and len(px_rounds) > 1:
        cells, best_of = [], {}
        for model in config["models"]:
            for density in longer["densities"]:
                ranking = {label: (mean, std) for label, mean, std, _ in study_pai.longer_ranking(pai, model, density)}
                found = {n: ranking[study_pai._case_label("px", n)] for n in px_rounds
                         if study_pai._case_label("px", n) in ranking}
                if len(found) < 2:
                    continue
                best = max(found, key=lambda n: found[n][0])
                best_of[best] = best_of.get(best, 0) + 1
                cells.append(f"{model} {density:.1%}: " + ", ".join(
                    f"{n} → {100 * m:.1f} ± {100 * sd:.1f}" for n, (m, sd) in found.items()))
        collapsed = {n: sum(len(r["collapsed"]) for r in study_pai._rows(pai, "longer", method="px", rounds=n))
                     for n in px_rounds}
        if cells:
            wins = best_of.get(default, 0)
            text += (f" Longer training, px at {', '.join(map(str, px_rounds))} rounds (rounds → accuracy): "
                     + "; ".join(cells) + f". {default} rounds have the best mean in {wins} of {len(cells)} cells ("
                     + ", ".join(f"{_rounds_label(n)}: {best_of.get(n, 0)}" for n in px_rounds if n != default)
                     + "); tensors collapsed to zero over those runs: "
                     + ", ".join(f"{_rounds_label(n)} {c}" for n, c in collapsed.items()) + ".")
            if wins > len(cells) / 2:
                text += f" The results support {default}."
            else:
                text += (f" The results do not single out {default}: it stays the default because it is the "
                         "authors' setting, on which the parity of `px` with their code is defined; fewer rounds "
                         "cost proportionally less and did as well or better in most cells here.")
    return [text]


def _rounds_label(n: int) -> str:
    return f"{n} round{'s' * (n != 1)}"


def _is_px(label: str) -> bool:
    """PX in any of its forms: px with any options or rounds, and px-exact (the quantity PX bounds)."""
    return label == "px" or label.startswith(("px ", "px,", "px-exact"))


def _cells(pai: dict | None, transformers: dict | None, *transfers: dict, converged: dict | None = None):
    """Every (study, model, density) cell of the studies: (name, {variant: mean}, higher is better, scale,
    digits); the complete cells of study 4's grids (`transfers`) first, then those of study 1 at a budget
    that converges (`converged`)."""
    for transfer in transfers:
        for model in transfer["config"]["models"]:
            for density, ranked in complete_transfer_cells(transfer, model):
                yield f"study 4 {model} {density:.0%}", {case: mean for case, mean, _, _ in ranked}, True, 100.0, 1
    for model in converged["config"]["models"] if converged else []:
        for density, means in study_pai.complete_cells(converged, model):
            yield (f"study 1 converged {model} {density:.1%}", {case: mean for case, (mean, _) in means.items()},
                   True, 100.0, 1)
    if pai:
        config = pai["config"]
        for model in config["models"]:
            for density in config["densities"]:
                yield f"study 1 {model} {density:.1%}", {
                    m: v for m in config["methods"] if (v := common.mean_std([r["accuracy"] for r in study_pai._rows(
                        pai, model=model, method=m, density=density)])[0]) == v}, True, 100.0, 1
            for density in (config.get("longer") or {}).get("densities", []):
                yield (f"study 1 longer {model} {density:.1%}",
                       {label: mean for label, mean, _, _ in study_pai.longer_ranking(pai, model, density)},
                       True, 100.0, 1)
    if transformers:
        for part, (metric, higher, label) in _PART_METRIC.items():
            for density in _densities(transformers, part):
                yield (f"{label} {density:.0%} ({metric.replace('_', ' ')})", _part_means(transformers, part, density),
                       higher, 1.0, 3)


def _where_px_loses(pai: dict | None, transformers: dict | None, *transfers: dict,
                    converged: dict | None = None) -> list[str]:
    """Every cell whose best mean is a method other than PX, with PX's best there."""
    cells, total = [], 0
    for name, means, higher, scale, digits in _cells(pai, transformers, *transfers, converged=converged):
        if not means:
            continue
        total += 1
        order = _ordered(means, higher)
        if not _is_px(order[0]):
            best_px = next((v for v in order if _is_px(v)), None)
            cells.append(f"{name}: {order[0]} {scale * means[order[0]]:.{digits}f}"
                         + (f" vs {best_px} {scale * means[best_px]:.{digits}f}" if best_px else ""))
    if not total:
        return []
    return [f"- **Where PX does not win.** In {len(cells)} of {total} cells the best mean belongs to a method other "
            "than PX (px with any option or rounds, or px-exact): " + ("; ".join(cells) if cells else "none") + "."]


def _is_plain_px(label: str) -> bool:
    """px with its default options, at any number of rounds ('px', 'px (100 rounds)', 'px, 1 round')."""
    import re

    return label == "px" or (label.startswith("px (") and label.endswith(")")) \
        or re.fullmatch(r"px, \d+ rounds?", label) is not None


def _api_default(pai: dict | None, transformers: dict | None, *transfers: dict,
                 converged: dict | None = None) -> list[str]:
    best = total = 0
    for _, means, higher, _, _ in _cells(pai, transformers, *transfers, converged=converged):
        if any(_is_plain_px(v) for v in means):
            total += 1
            best += _is_plain_px(_ordered(means, higher)[0])
    if not total:
        return []
    return [f"- **The API default, `auto`.** `hf_px.prune`/`hf_px.score` recommend as `hf-px prune` does. px with "
            f"its default options (at any number of rounds), the method this package reproduces (parity with the "
            f"authors' code), has the best mean in {best} of the {total} cells where it ran" + (
                ", a majority" if best > total / 2 else ", too few to make it the default") + "; pass "
            "`method=\"px\"` for it as published (no per-tensor floor)."]


def _options(results: dict) -> list[str]:
    """For each part of study 2: which PX option variants beat px with its default options."""
    out, tally = [], {}     # tally: option variant -> [densities ahead of the defaults, densities run]
    for part, (metric, higher, label) in _PART_METRIC.items():
        densities = _densities(results, part)
        options = sorted({r["variant"] for r in results["rows"] if r["part"] == part and r["variant"].startswith("px ")})
        if not options or not densities:
            continue
        wins = {v: 0 for v in options}
        for density in densities:
            means = _part_means(results, part, density)
            for option in options:
                if option in means and "px" in means and (means[option] > means["px"] if higher
                                                          else means[option] < means["px"]):
                    wins[option] += 1
        for option, n in wins.items():
            counts = tally.setdefault(option[3:], [0, 0])
            counts[0], counts[1] = counts[0] + n, counts[1] + len(densities)
        out.append(f"- **PX options on {label}** (by {metric.replace('_', ' ')}): variants ahead of the defaults: "
                   + (", ".join(f"`{v[3:]}` at {n} of {len(densities)} densities" for v, n in wins.items() if n)
                      or "none") + ".")
    if tally:
        def ahead(option):
            won, run = tally.get(option, (0, 0))
            return f"`{option}` ahead in {won} of {run} cells" + (" (a majority)" if won > run / 2 else "")

        out.append("- **Why the PX options stay as they are.** `head=real` is the authors' convention, which PX's "
                   f"parity with their code rests on ({ahead('head=path')}). `gate_only=magnitude` "
                   f"({ahead('gate_only=px-exact')}): the alternative needs px-exact's backward passes and cannot "
                   "shard across processes, which are the reasons to run px rather than px-exact on a transformer. "
                   f"`layernorm=gate`, the rule of docs/px.md section 5.5 ({ahead('layernorm=identity')}). `batchnorm=eval` "
                   f"({ahead('batchnorm=batch')}) and `batchnorm_activation=abs` ({ahead('batchnorm_activation=one')}). "
                   "An option that beats the default in a majority of cells is one to pass where it helps; the "
                   "recommended methods above are the stronger lever.")
    return out


def render(results: dict[str, dict]) -> str:
    parts = ["# Results: does PX find better tickets than the baselines?", "",
             "Generated by `python benchmarks/report.py` from `benchmarks/results/*.json`; every number below "
             "comes from those files. Regenerate a study with its command (given in its section), then this "
             "page. Quick settings run on a 2-core CPU; `--full` is the GPU setting.", ""]
    for key, _, stem, _ in STUDIES:
        if key in results:
            info = results[key]["machine"]
            parts.append(f"- {stem}: {info.get('cpu') or '?'} ({info.get('cpus')} CPUs, {info.get('threads')} torch "
                         f"threads), device {info.get('device')}, torch {info.get('torch')}, Python "
                         f"{info.get('python')}, commit {info.get('commit')}"
                         + (" with uncommitted changes" if info.get("dirty") else ""))
    parts += ["", defaults_section(results)]
    for key, module, stem, command in STUDIES:
        if key in ("transfer_channels", "transfer_auto_cnn") and key in results:   # beside the grids' own rows
            parts += [importlib.import_module(module).beside_grid_report(
                results[key], [results[k] for k in ("transfer", "transfer_cnn") if k in results]), ""]
        elif key in results:
            parts += [importlib.import_module(module).report(results[key]), ""]
            if LAYERS.get(key) in results:
                parts += [importlib.import_module(module).layers_report(results[LAYERS[key]]), ""]
            if key == "transfer_quick" and "transfer" in results:
                parts += [importlib.import_module(module).agreement(results[key], results["transfer"]), ""]
        else:
            parts += [f"## {stem}: not run yet", "", f"Run `{command}`.", ""]
    if "bench" in results:
        parts += [bench_px.report(results["bench"]), ""]
    parts += [gpu_check.report(results.get("gpu")), ""]
    return "\n".join(parts).rstrip() + "\n"


# the README's "when to use PX" paragraph sits between these markers and is rewritten by main()
CLAIM_START = "<!-- when-to-use-px: generated by benchmarks/report.py from study 4; do not edit by hand -->"
CLAIM_END = "<!-- /when-to-use-px -->"


def when_to_use_px(results: dict[str, dict]) -> str:
    """The README's short claim, from study 4 (pre-trained -> pruned -> fine-tuned) and then study 1 at a budget
    that converges: per model and density, whether PX (its default or a variant) ties the best accuracy, and
    who leads where not."""
    import study_transfer

    transfer = results.get("transfer")
    if not transfer or not transfer["rows"]:
        return ("Study 4 (pre-trained → pruned → fine-tuned, the toolkit's use case) has not run yet; until it has, "
                "[docs/results.md](docs/results.md) has the evidence of the other studies.")
    grids = [grid for grid in (transfer, results.get("transfer_cnn")) if grid]
    lines = [f"When to use PX, from study 4 of [docs/results.md](docs/results.md) (pre-trained model pruned with 10 "
             f"images per class of Fashion-MNIST, then fine-tuned; {sum(len(g['rows']) for g in grids)} runs; "
             "\"ties\": within one standard deviation over seeds of the best fine-tuned accuracy):", ""]
    for grid, model in [(grid, model) for grid in grids for model in grid["config"]["models"]]:
        cells = complete_transfer_cells(grid, model)
        if not cells:
            continue
        status = _budget_status(grid, model)
        seeds = min(n for _, ranked in cells for *_, n in ranked)
        ties, behind = [], []
        for density, ranked in cells:
            winners = study_transfer.winners(grid, model, density)
            px_cases = [c for c in winners if _is_px(c)]
            if px_cases:
                ties.append(f"{density:.0%} ({' / '.join(px_cases)})")
            else:
                best_px = next(((c, m) for c, m, _, _ in ranked if _is_px(c)), None)
                leader = f"{ranked[0][0]} {100 * ranked[0][1]:.1f}%"
                behind.append(f"{density:.0%} ({leader}" + (f" vs {best_px[0]} {100 * best_px[1]:.1f}%" if best_px
                                                              else "") + ")")
        lines.append(f"- **{model}** ({len(cells)} of {len(grid['config']['densities'])} densities complete, {seeds} "
                     f"seed{'s' * (seeds != 1)} or more, {status}): PX (px in any variant, or px-exact) ties the best "
                     "at " + (", ".join(ties) or "no density") + "; it is behind at " + (", ".join(behind) or "no density")
                     + ".")
    lines += _converged_claim(results.get("pai_converged"))
    if len(lines) == 2:   # budget checks only, so far
        return ("Study 4 (pre-trained → pruned → fine-tuned, the toolkit's use case) has measured its dense budget "
                "checks but no pruned ticket yet; until it has, [docs/results.md](docs/results.md) has the evidence "
                "of the other studies.")
    return "\n".join(lines)


def _converged_claim(converged: dict | None) -> list[str]:
    """The claim's line from study 1 at a budget that converges (trained from initialisation, second to study
    4): where PX ties the best (within one standard deviation over seeds, as study 4's ties) and where not."""
    lines = []
    for model in converged["config"]["models"] if converged else []:
        cells = study_pai.complete_cells(converged, model)
        if not cells:
            continue
        status = _status(study_pai.budget_check(converged, model))
        ties, behind = [], []
        for density, means, best, tied in study_pai.cell_ties(converged, model):
            tied = [case for case in tied if _is_px(case)]
            if tied:
                ties.append(f"{density:.1%} ({' / '.join(tied)})")
            else:
                best_px = max((c for c in means if _is_px(c)), key=lambda c: means[c][0], default=None)
                behind.append(f"{density:.1%} ({best} {100 * means[best][0]:.1f}%" + (
                    f" vs {best_px} {100 * means[best_px][0]:.1f}%" if best_px else "") + ")")
        lines.append(f"- **{model} trained from initialisation** (study 1 at a budget that converges, "
                     f"{len(cells)} of {len(converged['config']['densities'])} densities complete, "
                     f"{len(converged['config']['seeds'])} seeds, {status}): PX ties the best at "
                     + (", ".join(ties) or "no density") + "; it is behind at " + (", ".join(behind) or "no density")
                     + ".")
    return lines


def with_claim(readme: str, claim: str) -> str:
    """`readme` with the text between the claim markers replaced by `claim`."""
    head, _, rest = readme.partition(CLAIM_START)
    _, _, tail = rest.partition(CLAIM_END)
    if not rest:
        raise SystemExit(f"README.md lacks the marker {CLAIM_START!r}")
    return f"{head}{CLAIM_START}\n{claim}\n{CLAIM_END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    parser.add_argument("--out", type=Path, default=common.ROOT / "docs" / "results.md")
    args = parser.parse_args(argv)
    results = load_results(args.results)
    if not results:
        print(f"no study results in {args.results}; run the studies first", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results), encoding="utf-8")
    readme = common.ROOT / "README.md"
    readme.write_text(with_claim(readme.read_text(encoding="utf-8"), when_to_use_px(results)), encoding="utf-8")
    print(f"wrote {args.out} and the README's claim from {', '.join(sorted(results))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
