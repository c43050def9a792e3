"""docs/results.md is exactly what benchmarks/report.py renders from the committed JSON: nothing typed by hand."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import report  # noqa: E402
import study_pai  # noqa: E402


def test_results_page_matches_the_committed_results():
    results = report.load_results()
    assert {"pai", "transformers", "cost", "bench", "batchnorm", "transfer", "transfer_quick"} <= set(results), \
        "a study's JSON is missing from benchmarks/results/"
    page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    assert page == report.render(results), "docs/results.md differs from the JSON: run python benchmarks/report.py"
    for line in page.splitlines():       # every plot the page shows is committed
        if line.startswith("![") and "](img/" in line:
            assert (ROOT / "docs" / line.split("](", 1)[1].rstrip(")")).is_file(), line


def test_readme_claim_is_computed_from_the_results():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert report.with_claim(readme, report.when_to_use_px(report.load_results())) == readme, \
        "the README's claim differs from the JSON: run python benchmarks/report.py"


def _transfer_results():
    """Study 4 on model "m": at 50% px 81 ± 1 and magnitude 81 ± 0 tie; at 10% magnitude leads by 10 points.
    The magnitude ticket of seed 1 at 10% has a tensor at 0.005, below auto's floor of 0.1 x 10%."""
    def row(case, density, seed, accuracy, epochs=30, lowest=0.05):
        return {"model": "m", "case": case, "density": density, "seed": seed, "epochs": epochs,
                "finetuned": accuracy, "probe": 0.5, "collapsed": [], "min_layer_density": lowest,
                "prune_s": 10.0 if case == "px" else 1.0}

    rows = [row("px", 0.5, s, a) for s, a in enumerate((0.80, 0.82))] + \
        [row("magnitude", 0.5, s, a) for s, a in enumerate((0.81, 0.81))] + \
        [row("px", 0.1, s, a) for s, a in enumerate((0.60, 0.61))] + \
        [row("magnitude", 0.1, 0, 0.70), row("magnitude", 0.1, 1, 0.71, lowest=0.005)] + \
        [row("dense", 1.0, s, 0.85, e) for s in range(2) for e in (30, 90)]
    return {"config": {"models": ["m"], "cases": ["px", "magnitude"], "densities": [0.5, 0.1], "seeds": [0, 1],
                       "epochs": {"m": 30}, "longer": 3}, "rows": rows}


def _choice(method: str, rounds: int | None = None, **options) -> dict:
    """An `hf_px.pruning.auto_choice`."""
    return {"method": method, "method_options": options, "rounds": rounds}


def test_transfer_verdicts_on_the_auto_method():
    transfer = _transfer_results()
    [backed] = report._transfer_method(transfer, "m", "CNNs", _choice("magnitude"))
    assert "**CNNs: magnitude, study 4 first**" in backed
    assert "auto's ticket is the study's case `magnitude`, which lacks auto's floor" in backed
    assert ("`magnitude` 2, `px` 1; `magnitude` has the smallest largest gap to a density's best, 0.0 points: "
            "these cells back it") in backed
    assert "50%: `px` 81.0, `magnitude` 81.0; 10%: `magnitude` 70.5, `px` 60.5" in backed
    assert "1 of their 4 tickets have a tensor below it" in backed
    # over both densities: magnitude 75.75 never behind; px 70.75, 10 points behind at 10%
    assert "largest gap to a density's best (points): `magnitude` 75." in backed and "/ 0.0, `px` 70." in backed
    assert "/ 10.0. Pruning one ticket took (mean over the grid's runs, same order): `magnitude` 1 s, `px` 10 s." \
        in backed
    [not_backed] = report._transfer_method(transfer, "m", "CNNs", _choice("px"))
    assert "`px`'s largest gap to a density's best is 10.0 points, `magnitude`'s 0.0: these cells do not back it" \
        in not_backed
    assert "the grid's runs, same order): `magnitude` 1 s, `px` 10 s." in not_backed
    [absent] = report._transfer_method(transfer, "m", "Transformers", _choice("px-exact"))
    assert "`px-exact` is not among the cases run on this model" in absent
    loses = report._where_px_loses(None, None, transfer)[0]
    assert "In 1 of 2 cells" in loses and "study 4 m 10%: magnitude 70.5 vs px 60.5" in loses
    # auto's ticket is the case with auto's floor where the study runs one: that case is judged
    transfer["config"]["cases"].append("px, floor")
    transfer["rows"] += [{**r, "case": "px, floor", "finetuned": r["finetuned"] + 0.002} for r in transfer["rows"]
                         if r["case"] == "magnitude"]
    [floored] = report._transfer_method(transfer, "m", "CNNs", _choice("px"))
    assert "auto's ticket is the study's case `px, floor`, with auto's floor" in floored
    assert "`px, floor` has the smallest largest gap to a density's best, 0.0 points: these cells back it" \
        in floored
    assert "tensor below it" not in floored          # the case has the floor: nothing for auto to change


def test_a_default_is_judged_by_its_largest_gap_not_by_its_ties():
    """A noisy case ties the best at both densities (its spread covers the gap) but is 5 points behind at 10%;
    a steady one ties only at 10% and is never more than 3 points behind: the steady one is backed."""
    values = {"top": {0.5: (0.83, 0.83), 0.1: (0.60, 0.60)}, "noisy": {0.5: (0.70, 0.94), 0.1: (0.50, 0.80)},
              "steady": {0.5: (0.80, 0.80), 0.1: (0.70, 0.70)}}
    rows = [{"model": "m", "case": case, "density": density, "seed": seed, "epochs": 30, "finetuned": accuracy,
             "probe": 0.5, "collapsed": [], "min_layer_density": 0.5, "prune_s": 1.0}
            for case, cells in values.items() for density, pair in cells.items() for seed, accuracy in enumerate(pair)]
    transfer = {"config": {"models": ["m"], "cases": list(values), "densities": [0.5, 0.1], "seeds": [0, 1],
                           "epochs": {"m": 30}, "longer": 3}, "rows": rows}
    [steady] = report._transfer_method(transfer, "m", "CNNs", _choice("steady"))
    assert "`noisy` 2, `top` 1, `steady` 1;" in steady
    assert "`steady` has the smallest largest gap to a density's best, 3.0 points: these cells back it" in steady
    [noisy] = report._transfer_method(transfer, "m", "CNNs", _choice("noisy"))
    assert "`noisy`'s largest gap to a density's best is 5.0 points, `steady`'s 3.0: these cells do not back it" \
        in noisy
    # gaps equal as printed (0.1 point) are a tie: 3.0 and 3.04 points both back their case
    for row in transfer["rows"]:
        if row["case"] == "noisy":
            row["finetuned"] = {0.5: 0.7996, 0.1: 0.7004}[row["density"]]
    [close] = report._transfer_method(transfer, "m", "CNNs", _choice("noisy"))
    assert "`noisy` has the smallest largest gap to a density's best, 3.0 points: these cells back it" in close


def test_auto_case_is_the_variant_of_the_choice_with_auto_s_floor_where_the_study_runs_one():
    """A choice with options and rounds is judged on the study's variant with the same ones: the one with auto's
    floor first, else the one without (whose tickets lack the floor), else none."""
    choice = _choice("px", 20, gate_only="px-exact")
    plain, floored = "px, gate_only=px-exact, 20 rounds", "px, gate_only=px-exact, 20 rounds, floor"
    transfer = {"config": {"cases": ["px", "px-exact", "px, gate_only=px-exact", plain, floored]}}
    assert report.auto_case(transfer, choice) == (floored, True)
    transfer["config"]["cases"].remove(floored)
    assert report.auto_case(transfer, choice) == (plain, False)
    transfer["config"]["cases"].remove(plain)
    assert report.auto_case(transfer, choice) == (None, False)       # 100 rounds is another case
    assert report.auto_case(transfer, _choice("px-exact")) == ("px-exact", False)


def test_complete_transfer_cells_follow_the_settings():
    """A cell is complete when every case the setting runs on the model has all its seeds; rows of a case the
    setting no longer lists do not count, and a listed case with no rows yet keeps every cell open."""
    transfer = _transfer_results()
    assert [d for d, _ in report.complete_transfer_cells(transfer, "m")] == [0.5, 0.1]
    transfer["rows"].append({**transfer["rows"][0], "case": "synflow", "finetuned": 0.99})   # dropped case
    assert [d for d, _ in report.complete_transfer_cells(transfer, "m")] == [0.5, 0.1]
    transfer["config"]["cases"].append("random")                                          # not run yet
    assert report.complete_transfer_cells(transfer, "m") == []
    transfer["config"]["skip"] = {"m": ["random"]}                                         # not run on "m"
    assert [d for d, _ in report.complete_transfer_cells(transfer, "m")] == [0.5, 0.1]


def test_claim_on_hand_made_transfer_results():
    transfer = _transfer_results()
    rows = transfer["rows"]
    claim = report.when_to_use_px({"transfer": transfer})
    assert "- **m** (2 of 2 densities complete, 2 seeds or more, budget converged): PX (px in any variant, or " \
           "px-exact) ties the best at 50% (px); it is behind at 10% (magnitude 70.5% vs px 60.5%)." in claim
    assert "has not run yet" in report.when_to_use_px({})
    transfer["rows"] = [r for r in rows if not (r["case"] == "magnitude" and r["density"] == 0.1)]
    assert "(1 of 2 densities complete" in report.when_to_use_px({"transfer": transfer})   # 10%: px alone
    transfer["rows"] = rows
    transfer["rows"] = [r for r in rows if r["case"] == "dense"]
    assert "no pruned ticket yet" in report.when_to_use_px({"transfer": transfer})


def _row(part, variant, density, seed, **metrics):
    return {"part": part, "variant": variant, "density": density, "seed": seed, **metrics}


def test_defaults_section_counts_against_hand_made_results():
    """The computed verdicts on a tiny hand-made result set whose answers are known."""
    transformers = {"rows": [
        _row("vit", "px", 0.5, 0, retention=0.90), _row("vit", "px-exact", 0.5, 0, retention=0.95),
        _row("vit", "magnitude", 0.5, 0, retention=0.97), _row("vit", "px layernorm=identity", 0.5, 0, retention=0.91),
        _row("vit", "px", 0.2, 0, retention=0.50), _row("vit", "px", 0.2, 1, retention=0.70),     # mean 0.60
        _row("vit", "px-exact", 0.2, 0, retention=0.80), _row("vit", "magnitude", 0.2, 0, retention=0.30),
        _row("vit", "px layernorm=identity", 0.2, 0, retention=0.55),
        _row("cnn", "px", 0.9, 0, kl=0.5), _row("cnn", "magnitude", 0.9, 0, kl=0.1),
    ]}
    lines = report._transformers_method(transformers, _choice("px-exact"))
    assert len(lines) == 1 and "study 2 (no fine-tuning, so second to study 4): `px-exact`" in lines[0]
    assert "best variant in 1 of 2 (model, density) cells and ahead of px with its default options in 2 of 2" in lines[0]
    assert ("the trained tiny ViT at 50%: 0.950, rank 2 of 4, best magnitude 0.970; the trained tiny ViT at 20%: "
            "0.800, rank 1 of 4)") in lines[0]
    # the choice is found among study 2's variants by its method and options (rounds are the study's own)
    assert "study 2 (no fine-tuning, so second to study 4): `px layernorm=identity`" in report._transformers_method(
        transformers, _choice("px", 20, layernorm="identity"))[0]
    assert report._transformers_method(transformers, _choice("px", gate_only="dense")) == []   # not run
    assert report._options(transformers)[0].endswith("`layernorm=identity` at 1 of 2 densities.")
    loses = report._where_px_loses(None, transformers)[0]
    assert "In 2 of 3 cells" in loses
    assert "the trained tiny ViT 50% (retention): magnitude 0.970 vs px-exact 0.950" in loses
    assert "EfficientNet-Lite0 90% (kl): magnitude 0.100 vs px 0.500" in loses   # lower KL is better


def _converged_results():
    """Study 1's converged setting on two seeds: at 0.5% px 80/82 (81 ± 1.4), px at 1 round 85/85 and magnitude
    84/84; at 5% magnitude 90/90 and px 88/88, but magnitude's second seed at 1.8% is still missing."""
    config = dict(study_pai.SETTINGS["converged"], methods=["px", "magnitude"], densities=[0.05, 0.018, 0.005],
                  seeds=[0, 1])

    def row(method, density, seed, accuracy, rounds=None, schedule="grid"):
        rounds = study_pai._rounds(config, method) if rounds is None else rounds
        extra = {"schedule": schedule, "train": 20000, "epochs": 27} if schedule == "longer" else {}
        return {"model": "resnet20", "method": method, "density": density, "seed": seed, "rounds": rounds,
                "accuracy": accuracy, "collapsed": [], **extra}

    rows = [row("dense", 1.0, s, 0.90, 0) for s in (0, 1)] + [row("dense", 1.0, 0, 0.91, 0, "longer")]
    rows += [row("px", 0.005, 0, 0.80), row("px", 0.005, 1, 0.82), row("magnitude", 0.005, 0, 0.84),
             row("magnitude", 0.005, 1, 0.84), row("px", 0.005, 0, 0.85, 1), row("px", 0.005, 1, 0.85, 1)]
    rows += [row("px", 0.018, s, 0.86) for s in (0, 1)] + [row("magnitude", 0.018, 0, 0.87)]
    rows += [row(m, 0.05, s, a) for s in (0, 1) for m, a in (("px", 0.88), ("magnitude", 0.90))]
    return {"setting": "converged", "config": config, "rows": rows}


def test_converged_study_1_ranks_complete_densities_only():
    converged = _converged_results()
    cells = study_pai.complete_cells(converged, "resnet20")
    assert [density for density, _ in cells] == [0.005, 0.05]          # 1.8% waits for magnitude's seed 1
    means = cells[0][1]
    assert set(means) == {"px", "magnitude", "px (1 round)"}
    assert means["px"][0] == pytest.approx(0.81) and means["px"][1] == pytest.approx(0.01414, abs=1e-4)
    [line] = report._converged_method(converged, "magnitude")
    assert "dense 90.0% vs 91.0% at 3x the epochs (1 of 2 seeds so far), converged" in line
    assert "2 of 3 densities complete; 0.5%: px (1 round) 85.0 ± 0.0, magnitude 84.0 ± 0.0, px 81.0 ± 1.4" in line
    assert "5.0%: magnitude 90.0 ± 0.0, px 88.0 ± 0.0" in line
    # at 0.5% magnitude's 84 ± 0 is a point below px at 1 round's 85 ± 0 (a tie allows half a point at least)
    assert ("`magnitude` has the best mean at 1 of 2, ties the best at 1 of 2 and is at most 1.0 points behind the "
            "best; PX (any rounds) has the best mean at 1 of 2 and ties the best at 1 of 2") in line
    assert "at chance" not in line
    # the README's claim: px at 1 round ties the best at 0.5% (it is the best); at 5% px is 2 points behind
    [claim] = report._converged_claim(converged)
    assert "PX ties the best at 0.5% (px (1 round)); it is behind at 5.0% (magnitude 90.0% vs px 88.0%)" in claim
    loses = report._where_px_loses(None, None, converged=converged)[0]
    assert "In 1 of 2 cells" in loses and "study 1 converged resnet20 5.0%: magnitude 90.0 vs px 88.0" in loses


def test_converged_study_1_without_a_complete_density_says_so():
    converged = _converged_results()
    converged["rows"] = converged["rows"][:4]
    [line] = report._converged_method(converged, "magnitude")
    assert line.endswith("4 runs so far; no density has every seed of every method yet.")
    assert report._converged_claim(converged) == []
    # a pick the setting does not run is named, not ranked
    assert "`snip` is not among its methods; PX (any rounds) has the best mean at 1 of 2" in report._converged_method(
        _converged_results(), "snip")[0]


def test_converged_study_1_ties_and_runs_at_chance_are_named():
    converged = _converged_results()
    for row in converged["rows"]:
        if row["method"] == "px" and row["density"] == 0.05:
            row["accuracy"] = 0.896
        if row["method"] == "magnitude" and row["density"] == 0.005 and row["seed"] == 1:
            row["accuracy"] = 0.100   # collapsed: 84 and 10 average 47 ± 52
    [line] = report._converged_method(converged, "magnitude")
    assert "0.5%: px (1 round) 85.0 ± 0.0, px 81.0 ± 1.4, magnitude 47.0 ± 52.3" in line
    # 5%: px 89.6 is within half a point of magnitude's 90.0, a tie; 0.5%: magnitude 38 points behind
    # magnitude's 47.0 ± 52.3 is within one std of 85.0, but a collapsed run's spread is no seed noise: no tie
    assert ("`magnitude` has the best mean at 1 of 2, ties the best at 1 of 2 and is at most 38.0 points behind "
            "the best; PX (any rounds) has the best mean at 1 of 2 and ties the best at 2 of 2") in line
    assert line.endswith("; runs at chance (a collapsed network, counted in the means, and its case ties nothing): "
                         "magnitude seed 1 at 0.5% (10.0%).")
    assert report.study_pai.runs_at_chance(converged, "resnet20") == {(0.005, "magnitude"): [(1, 0.100)]}
    converged["rows"][0]["accuracy"] = converged["rows"][4]["accuracy"] = 0.095   # a diverged dense run; px at 0.5%
    assert report.study_pai.runs_at_chance(converged, "resnet20") == {
        (1.0, "dense"): [(0, 0.095)], (0.005, "px"): [(1, 0.095)], (0.005, "magnitude"): [(1, 0.100)]}
    # px at 0.5%, 44.8 ± 50.0, is within one std of px at 1 round's 85.0 but collapsed: only px at 1 round ties
    assert "PX ties the best at 0.5% (px (1 round)), 5.0% (px);" in report._converged_claim(converged)[0]


def test_width_line_counts_removed_channels_at_each_model_s_lowest_density():
    def row(model, case, density, dead):
        return {"model": model, "case": case, "density": density, "seed": 0, "groups": {},
                "dead_channels": dead}

    layers = {"rows": [
        # at 5% (not the lowest density) magnitude would look narrower: only the lowest density counts
        row("cnn", "px", 0.05, {"a": [0, 10], "b": [0, 30]}), row("cnn", "magnitude", 0.05, {"a": [9, 10], "b": [0, 30]}),
        row("cnn", "px", 0.02, {"a": [1, 10], "b": [24, 30]}), row("cnn", "magnitude", 0.02, {"a": [2, 10], "b": [6, 30]}),
        row("cnn", "random", 0.02, {"a": [10, 10], "b": [30, 30]}),
        row("vit", "px", 0.1, {"fc": [1, 4]}), row("vit", "magnitude", 0.1, {"fc": [3, 4]}),
        row("old", "px", 0.1, {}), row("old", "magnitude", 0.1, {})]}
    for old in layers["rows"][-2:]:   # rows measured before the channels were recorded
        del old["dead_channels"]
    (line,) = report._narrowing([layers])
    # cnn at 2%: px (1 + 24) / 40 = 62%, magnitude (2 + 6) / 40 = 20%; group b differs most: 80% vs 20%
    assert "cnn at 2%: px 62%, magnitude 20% (`b`: 80% vs 20%)" in line
    assert "vit at 10%: px 25%, magnitude 75% (`fc`: 25% vs 75%)" in line
    assert "the narrower network in 1 of these 2 cases" in line and "old" not in line
    assert report._narrowing([{"rows": []}]) == []


def test_a_case_beside_the_grid_is_ranked_with_the_grid_s_rows():
    """`--channels` rows sit beside the grid's: at 10% the floor's 70.0 ± 0.7 ties magnitude's 70.5 ± 0.7 (the
    best) and is 9.5 points above px's 60.5; at 50% its 75.0 is 6 points below the best: no tie there."""
    import study_transfer

    grid = _transfer_results()
    rows = [{"model": "m", "case": "px, channel floor", "density": d, "seed": s, "epochs": 30, "finetuned": a,
             "probe": 0.5, "collapsed": [], "min_layer_density": 0.05}
            for d, pair in ((0.5, (0.75, 0.75)), (0.1, (0.695, 0.705))) for s, a in enumerate(pair)]
    channels = {"setting": "channels", "command": "python benchmarks/study_transfer.py --channels", "seconds": 60,
                "machine": {"cpu": "a CPU", "threads": 1, "commit": "abc"}, "rows": rows,
                "config": {"models": ["m"], "cases": ["px, channel floor"], "densities": [0.5, 0.1],
                           "seeds": [0, 1], "epochs": {"m": 30}}}
    text = study_transfer.beside_grid_report(channels, [grid])
    assert "## Study 4, px with a per-channel floor" in text and "commit abc; 4 runs)" in text
    assert "| px (grid) | **81.0 ± 1.4** | 60.5 ± 0.7 |" in text
    assert "| magnitude (grid) | **81.0 ± 0.0** | **70.5 ± 0.7** |" in text
    assert "| px, channel floor | 75.0 ± 0.0 | **70.0 ± 0.7** |" in text
    assert "| the grid's best | 81.0 ± 1.4 (px) | 70.5 ± 0.7 (magnitude) |" in text
    assert "`px, channel floor`'s mean minus `px`'s, in points: 50% -6.0, 10% +9.5." in text
    assert "`px, channel floor` ties the best case on every model at: 10%." in text
    [width] = report._keeping_width(channels, [grid])
    assert ("`min_channel_density` at 0.1 x the target density" in width and "minus px, in points of fine-tuned "
            "accuracy: m 50% -6.0, m 10% +9.5. It is ahead of px in 1 of these 2 (beyond one standard deviation);"
            in width)
    for row in rows:   # behind px everywhere: the page says restoring channels is not what PX lacks
        row["finetuned"] -= 0.2
    assert "It is never ahead of px (behind in 2, a tie in 0), so restoring channels" in \
        report._keeping_width(channels, [grid])[0]
    for row, value in zip(rows[2:], (0.605, 0.615)):   # 10%: 61.0 ± 0.7 against px's 60.5 ± 0.7, a tie
        row["finetuned"] = value
    width = report._keeping_width(channels, [grid])[0]
    assert "m 10% +0.5 (a tie)." in width and "never ahead of px (behind in 1, a tie in 1)" in width


def test_auto_s_own_ticket_is_compared_with_the_case_without_its_floor():
    """`--auto-cnn` rows at 10% against the grid's magnitude, 70.5 ± 0.7, and px, 60.5. A tie is a gap within the
    larger std: 69.0 ± 1.4 is 1.5 points below (1.5 > 1.41), 69.5 ± 0.7 is 1.0 below (> 0.71), 70.0 ± 0 ties."""
    grid = _transfer_results()
    rows = [{"model": "m", "case": "magnitude, floor", "density": 0.1, "seed": s, "epochs": 30, "finetuned": a,
             "probe": 0.5, "collapsed": [], "min_layer_density": 0.01} for s, a in enumerate((0.68, 0.70))]
    measured = {"setting": "auto-cnn", "rows": rows,
                "config": {"models": ["m"], "cases": ["magnitude, floor"], "densities": [0.1], "seeds": [0, 1],
                           "epochs": {"m": 30}}}
    [line] = report._auto_ticket(measured, [grid])
    assert ("m at 10% (2 seeds): 69.0 ± 1.4 against `magnitude`'s 70.5 ± 0.7 without the floor (1.5 points below "
            "it; seed by seed, with minus without: -2.0, -1.0, below in 2 of 2), and +8.5 against px") in line
    assert line.endswith("this is what the guard costs where it binds.")
    rows[0]["finetuned"] = 0.69
    assert "(1.0 points below it;" in report._auto_ticket(measured, [grid])[0]
    rows[0]["finetuned"] = 0.70
    line = report._auto_ticket(measured, [grid])[0]
    assert "(ties it;" in line and line.endswith("so the guard costs nothing the seeds resolve.")
    # magnitude measured beside it (a third seed too): compared with those rows, not the grid's
    measured["config"]["cases"].append("magnitude")
    rows += [{**rows[0], "case": "magnitude", "seed": s, "finetuned": a} for s, a in enumerate((0.72, 0.71, 0.7))]
    rows.append({**rows[0], "seed": 2, "finetuned": 0.73})
    line = report._auto_ticket(measured, [grid])[0]
    assert ("m at 10% (3 seeds): 71.0 ± 1.7 against `magnitude`'s 71.0 ± 1.0 without the floor (ties it; seed by "
            "seed, with minus without: -2.0, -1.0, +3.0, below in 2 of 3)") in line
    import study_transfer

    measured.update(command="python benchmarks/study_transfer.py --auto-cnn", seconds=60,
                    machine={"cpu": "a CPU", "threads": 1, "commit": "abc"})
    text = study_transfer.beside_grid_report(measured, [grid])
    assert "`magnitude` is measured here too, seed by seed beside it on one machine; these rows replace" in text
    assert "| magnitude | **71.0 ± 1.0** |" in text and "magnitude (grid)" not in text
    assert "| magnitude, floor | **71.0 ± 1.7** |" in text and "`magnitude`'s mean minus" not in text
    assert "`magnitude, floor` ties the best case on every model at: 10%." in text
    assert "`magnitude` ties the best case on every model at: 10%." in text
