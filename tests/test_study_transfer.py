"""benchmarks/study_transfer.py (study 4: pre-trained -> pruned -> fine-tuned): the smoke run goes through the
real job functions on the real EfficientNet-Lite0 and the small ViT pre-trained on MNIST digits, and the
budget check and the winners' rule give known answers on hand-built rows."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import study_transfer as study  # noqa: E402
from hf_px.testing import efficientnet_lite0_weights  # noqa: E402


def _row(model, case, density, seed, epochs, finetuned, probe=0.5):
    return {"model": model, "case": case, "density": density, "seed": seed, "epochs": epochs,
            "finetuned": finetuned, "probe": probe, "collapsed": []}


def _results(rows, epochs=10, longer=3):
    return {"config": {"models": ["m"], "cases": ["px", "magnitude", "random"], "densities": [0.1],
                       "epochs": {"m": epochs}, "longer": longer}, "rows": rows}


def test_budget_check_known_answer():
    rows = [_row("m", "dense", 1.0, s, 10, a) for s, a in enumerate((0.80, 0.82, 0.84))]
    rows += [_row("m", "dense", 1.0, s, 30, a) for s, a in enumerate((0.83, 0.83, 0.83))]
    check = study.budget_check(_results(rows), "m")
    assert check["gap"] == pytest.approx(0.01) and check["converged"]   # 0.83 - 0.82: one point, the limit
    rows[-1]["finetuned"] = 0.86                                        # long mean 0.84: two points
    check = study.budget_check(_results(rows), "m")
    assert check["gap"] == pytest.approx(0.02) and not check["converged"]
    assert study.budget_check(_results(rows[:3]), "m") is None          # no longer run yet: no verdict


def test_case_options_known_answers():
    assert study.case_options("px, floor", 0.1, {}) == {"sparsity": pytest.approx(0.9), "method": "px",
                                                        "min_layer_density": pytest.approx(0.01), "rounds": None}
    assert study.case_options("synflow", 0.2, {"synflow": 20}) == {"sparsity": pytest.approx(0.8),
                                                                   "method": "synflow", "rounds": 20}
    assert study.case_options("magnitude", 0.2, {}) == {"sparsity": pytest.approx(0.8), "method": "magnitude"}
    assert study.case_options("px, 1 round", 0.05, {"px": 20})["rounds"] == 1          # the variant's own
    assert study.case_options("dense", 1.0, {}) == {"method": "magnitude", "sparsity": study.DENSE_SPARSITY}


def test_winners_are_ties_with_the_best():
    rows = [_row("m", "px", 0.1, s, 10, a) for s, a in enumerate((0.70, 0.72, 0.74))]       # 0.72 ± 0.02
    rows += [_row("m", "magnitude", 0.1, s, 10, a) for s, a in enumerate((0.69, 0.70, 0.71))]  # 0.70 ± 0.01
    rows += [_row("m", "random", 0.1, s, 10, a) for s, a in enumerate((0.50, 0.51, 0.52))]
    rows += [_row("m", "px", 0.1, s, 30, 0.99) for s in range(3)]      # another budget: not in the grid's cells
    results = _results(rows)
    assert [case for case, *_ in study.ranking(results, "m", 0.1)] == ["px", "magnitude", "random"]
    assert study.winners(results, "m", 0.1) == ["px", "magnitude"]      # 2 points apart, std 2 points: a tie
    results["config"]["seeds"] = [0, 1, 2]
    assert study.complete(results, "m", 0.1)
    results["rows"] = [r for r in results["rows"] if not (r["case"] == "random" and r["seed"] == 2)]
    assert not study.complete(results, "m", 0.1)                        # a seed missing: no ties are shown
    assert study.at_chance(results, "m") == []
    results["rows"][-1]["finetuned"] = 0.105                            # 10 classes: within a point of chance
    assert study.at_chance(results, "m") == [results["rows"][-1]] and study.at_chance(results, "other") == []


def test_the_second_vit_is_another_vit_judged_on_auto_s_own_ticket():
    """`--second-vit`: another depth and head count, pre-trained from another seed, with the grid's recipe
    and budget check at 3x the grid's epochs (the grid's 90 did not converge on it); among its cases, the one
    `--method auto` reproduces (auto's choice with auto's floor)."""
    import report

    from hf_px.pruning import AUTO_FOR_TRANSFORMERS

    config, grid = study.SETTINGS["second-vit"], study.SETTINGS["grid"]
    assert set(config) == set(grid) - {"skip"}
    model = study.vit_mnist("vit-mnist-deep", 0)
    assert len(model.blocks) == 6 and model.blocks[0].attn.num_heads == 8
    assert len(study.vit_mnist("vit-mnist", 0).blocks) == 4
    assert config["pretrain"]["seed"] != grid["pretrain"].get("seed", 0)
    assert study.RECIPES["vit-mnist-deep"] == study.RECIPES["vit-mnist"]
    assert config["epochs"]["vit-mnist-deep"] == 3 * grid["epochs"]["vit-mnist"]
    # the same images and budget check (its cases set their own rounds)
    same = [k for k in study._SAME if k not in ("epochs", "pretrain", "rounds")]
    assert {k: config[k] for k in same} == {k: grid[k] for k in same}
    assert report.auto_case({"config": config}, AUTO_FOR_TRANSFORMERS) == ("px, gate_only=px-exact, 20 rounds, floor",
                                                                             True)


def test_quick_setting_is_the_grid_s_deciding_cells_measured_again():
    """The two-hour default re-measures a subset of the grid with the grid's settings: on each model auto's own
    case, px, magnitude and random; so every quick row has a grid row to equal, which `agreement` counts."""
    import report

    from hf_px.pruning import AUTO_FOR_CNNS, AUTO_FOR_TRANSFORMERS

    quick, grid = study.SETTINGS["quick"], study.SETTINGS["grid"]
    assert {k: quick[k] for k in study._SAME} == {k: grid[k] for k in study._SAME}
    assert set(quick["cases"]) < set(grid["cases"]) and set(quick["densities"]) < set(grid["densities"])
    assert quick["seeds"] == grid["seeds"] and quick["models"] == grid["models"]
    for model, choice in (("vit-mnist", AUTO_FOR_TRANSFORMERS), ("efficientnet-lite0", AUTO_FOR_CNNS)):
        cases = study.listed_cases(quick, model, has_batchnorm=model != "vit-mnist")
        auto, _ = report.auto_case({"config": {**quick, "cases": cases}}, choice)
        assert auto in cases and {"px", "magnitude", "random"} <= set(cases)

    grid_rows = [_row("m", "px", 0.1, s, 10, a, probe=0.4) for s, a in enumerate((0.70, 0.72, 0.74))]
    quick_rows = [dict(r) for r in grid_rows[:2]] + [_row("m", "px", 0.1, 0, 30, 0.9)]   # no grid row at 30 epochs
    quick_rows[1]["finetuned"] = 0.735
    text = study.agreement({"rows": quick_rows}, {"rows": grid_rows})
    assert "1 of the quick run's 2 runs gave the grid's fine-tuned accuracy and probe exactly" in text
    assert "largest difference in fine-tuned accuracy is 1.5 points" in text
    assert "no" in study.agreement({"rows": quick_rows[2:]}, {"rows": grid_rows}).lower()


@pytest.mark.skipif(efficientnet_lite0_weights() is None, reason="EfficientNet-Lite0 weights not installed "
                    "(bash scripts/setup.sh)")
def test_smoke_run_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "study_transfer.json"
    returned = study.run("smoke", out, workdir=tmp_path / "work")
    saved = json.loads(out.read_text())
    assert saved["rows"] == returned["rows"]
    config = study.SETTINGS["smoke"]
    models = study.available_models("smoke")
    assert set(saved["skipped"]) == set(config["models"]) - set(models)
    expected = {(m, "dense", 1.0, 0, e) for m in models for e in (1, 3)}
    expected |= {(m, c, 0.2, 0, 1) for m in models for c in config["cases"] if c not in config["skip"].get(m, [])}
    assert {study._key(r) for r in saved["rows"]} == expected
    tests = 10 * config["test_per_class"]
    for row in saved["rows"]:
        # judged on every test image of the dataset folder, after loading the fine-tuned checkpoint back
        assert row["finetuned"] * tests == pytest.approx(round(row["finetuned"] * tests))
        assert 0.0 <= row["probe"] <= 1.0 and row["method"] in ("px", "magnitude", "px-exact")
        if row["case"] == "dense":
            assert row["method"] == "magnitude" and row["collapsed"] == [] and row["min_layer_density"] > 0.99
    for model in models:
        assert study.budget_check(saved, model) is not None
        assert f"### {model}" in study.report(saved) and "**Budget check**" in study.report(saved)
    if "vit-mnist" in models:
        assert saved["pretraining"]["train_digits"] == 10 * config["pretrain"]["digits_per_class"]

    # `--method auto` is the study's case of its choice with auto's floor (docs/results.md, "Defaults"): the
    # same ticket, on each kind of model (at 2 rounds: the smoke setting's)
    from hf_px.pruning import AUTO_FOR_CNNS, AUTO_FOR_TRANSFORMERS, AUTO_MIN_LAYER_DENSITY

    folders = study.prepare("smoke", tmp_path / "work")["folders"]
    for model in models:
        choice = AUTO_FOR_TRANSFORMERS if model == "vit-mnist" else AUTO_FOR_CNNS
        rounds = 2 if choice["method"] == "px" else None
        monkeypatch.setitem(study.VARIANTS, "auto", dict(method="auto", rounds=rounds))
        monkeypatch.setitem(study.VARIANTS, "chosen", dict(method=choice["method"], rounds=rounds,
                                                           method_options=choice["method_options"],
                                                           floor=AUTO_MIN_LAYER_DENSITY))
        auto, chosen = (study.prune_case(model, folders, case, 0.2, 0, config, tmp_path / case)
                        for case in ("auto", "chosen"))
        assert (auto.provenance.method, auto.provenance.method_options) == (choice["method"],
                                                                            choice["method_options"])
        assert study.ticket_fields(auto)["masks_sha256"] == study.ticket_fields(chosen)["masks_sha256"]

    # rows of other code are adopted once this code reproduces their sample: here, the same numbers again
    saved["machine"]["code"] = "other code"
    out.write_text(json.dumps(saved))
    adopted = study.run("smoke", out, workdir=tmp_path / "work", adopt=True)
    assert adopted["rows"] == saved["rows"]
    checked = adopted["earlier_runs"][-1]["adopted_after_reproducing"]
    assert sum(label.endswith("epochs") for label in checked) == 2 * len(models)  # a dense and a pruned row each
    pruned = [label for label in checked if label.endswith("pruned")]            # and every case pruned again
    assert len(pruned) == len({(r["model"], r["case"]) for r in saved["rows"] if r["case"] != "dense"})
    assert all(len(r["masks_sha256"]) == 16 for r in saved["rows"])
    assert json.loads(out.read_text())["earlier_runs"] == adopted["earlier_runs"]
    saved = json.loads(out.read_text())
    # and a number this code does not reproduce is named, as is a model it cannot load
    row = next(r for r in saved["rows"] if r["case"] == "magnitude")
    folders = study.prepare("smoke", tmp_path / "work")["folders"]
    _, differences = study.reproduce([{**row, "probe": row["probe"] + 0.5}], folders, config, tmp_path / "work", {})
    assert len(differences) == 2     # the row re-run in full, and its ticket pruned again
    assert all(f"probe {row['probe'] + 0.5!r} then, {row['probe']!r} now" in d for d in differences)
    checked, differences = study.reproduce([{**row, "model": "gone"}], folders, config, tmp_path / "work", {})
    assert checked == [] and differences == ["gone: not available in this run, so its rows cannot be checked"]

    # a rerun of the same code measures nothing again
    def no_more_runs(*args, **kwargs):
        raise AssertionError("a finished row was measured again")

    monkeypatch.setattr(study, "one_run", no_more_runs)
    assert study.run("smoke", out, workdir=tmp_path / "work")["rows"] == saved["rows"]


def test_tensor_groups_pool_blocks_and_count_exactly():
    import torch

    assert study.tensor_group("blocks.3.attn.qkv.weight") == "blocks.*.attn.qkv.weight"
    assert study.tensor_group("blocks.1.0.conv_pw.weight") == "blocks.*.*.conv_pw.weight"
    assert study.tensor_group("conv_stem.weight") == "conv_stem.weight"
    masks = {"blocks.0.fc.weight": torch.tensor([True, False, False, False]),
             "blocks.1.fc.weight": torch.tensor([True, True]), "head.weight": torch.tensor([False, True, True])}
    assert study.group_densities(masks) == {"blocks.*.fc.weight": [3, 6], "head.weight": [2, 3]}
    # output channels (first dimension) with nothing kept: [removed, total] per group
    conv = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 1]]], dtype=torch.bool)   # channel 1 removed
    linear = torch.tensor([[False, False], [False, False]])                                        # both rows removed
    assert study.group_dead_channels({"blocks.0.conv.weight": conv, "blocks.1.conv.weight": conv[:2],
                                      "head.weight": linear}) == {"blocks.*.conv.weight": [2, 5], "head.weight": [2, 2]}


@pytest.mark.skipif(efficientnet_lite0_weights() is None, reason="EfficientNet-Lite0 weights not installed "
                    "(bash scripts/setup.sh)")
def test_layers_diagnosis_accounts_for_every_kept_weight(tmp_path):
    layers = study.where_the_weights_go("smoke", tmp_path / "layers.json", workdir=tmp_path / "work")
    config = study.SETTINGS["smoke"]
    assert {(r["model"], r["case"]) for r in layers["rows"]} == {
        (m, c) for m in study.available_models("smoke") for c in config["cases"]
        if c not in config["skip"].get(m, [])}
    for row in layers["rows"]:
        kept = sum(k for k, _ in row["groups"].values())
        total = sum(t for _, t in row["groups"].values())
        # the groups partition the targets: together they keep the target density (one global threshold)
        assert kept / total == pytest.approx(row["density"], abs=0.01), row["case"]
        assert row["dead_channels"].keys() == row["groups"].keys()
        assert all(0 <= removed <= channels for removed, channels in row["dead_channels"].values())
    text = study.layers_report(json.loads((tmp_path / "layers.json").read_text()))
    assert "| `blocks.*.attn.qkv.weight` |" in text or "vit-mnist" not in study.available_models("smoke")
    assert "Output channels each case removes entirely" in text
    assert "Not measured yet" in study.layers_report({"rows": []})


def test_budget_setting_is_the_grid_s_efficientnet_reference_at_3x_its_epochs():
    """`--budget` re-checks the grid's dense EfficientNet-Lite0 (same data, recipe, pre-training) at 3x the grid's
    epochs, and the page renders it as a budget check alone (no case table, no plot)."""
    budget, grid = study.SETTINGS["budget"], study.SETTINGS["grid"]
    same = [k for k in study._SAME if k != "epochs"]
    assert {k: budget[k] for k in same} == {k: grid[k] for k in same}
    assert budget["epochs"]["efficientnet-lite0"] == grid["longer"] * grid["epochs"]["efficientnet-lite0"]
    assert budget["cases"] == [] and budget["models"] == ["efficientnet-lite0"]
    rows = [_row("efficientnet-lite0", "dense", 1.0, 0, e, a) for e, a in ((270, 0.81), (810, 0.827))]
    results = {"setting": "budget", "config": budget, "rows": rows, "command": "python s.py --budget",
               "machine": {"commit": "abc", "cpu": "CPU", "threads": 1}, "seconds": 60}
    text = study.report(results)
    assert "dense 81.0% after 270 epochs, 82.7% after 810: +1.7 points, more than 1 point apart" in text
    assert "| case |" not in text and study.plots(results, Path("/nonexistent")) == {}


def test_cnn_setting_is_the_grid_s_efficientnet_at_64_px():
    """`--cnn` runs the grid's EfficientNet-Lite0 flow (data, recipe, scoring sample, budget check) at 64 px
    inputs, sparsest density first; its model key names the input size, so its rows and cells never mix with
    the 32 px grid's."""
    cnn, grid = study.SETTINGS["cnn"], study.SETTINGS["grid"]
    same = [k for k in study._SAME if k != "epochs"]
    assert {k: cnn[k] for k in same} == {k: grid[k] for k in same}
    assert cnn["models"] == ["efficientnet-lite0-64px"] and study.EFFICIENTNET_SIZES["efficientnet-lite0-64px"] == 64
    assert study.RECIPES["efficientnet-lite0-64px"] == study.RECIPES["efficientnet-lite0"]
    assert cnn["densities"] == sorted(grid["densities"]) and set(cnn["cases"]) <= set(grid["cases"])
    assert {"px", "magnitude", "random"} <= set(cnn["cases"])


def test_shards_split_the_runs_and_together_measure_every_one(tmp_path, monkeypatch):
    """Two shards of one setting into one JSON: no run measured twice, none left out (the budget check's dense
    runs at both budgets, then every case, density and seed), and neither shard drops the other's rows."""
    if "vit-mnist" not in study.available_models("smoke"):
        pytest.skip("MNIST digits not installed (bash scripts/setup.sh)")
    monkeypatch.setitem(study.SETTINGS, "smoke", dict(study.SETTINGS["smoke"], models=["vit-mnist"],
                                                      cases=["magnitude", "random"]))
    out, config = tmp_path / "shared.json", study.SETTINGS["smoke"]
    first = study.run("smoke", out, workdir=tmp_path / "work", shard=(0, 2))
    study.run("smoke", out, workdir=tmp_path / "work", shard=(1, 2))
    epochs = config["epochs"]["vit-mnist"]
    expected = {("vit-mnist", study.DENSE, 1.0, s, e) for s in config["seeds"] for e in (epochs, 3 * epochs)}
    expected |= {("vit-mnist", c, d, s, epochs) for c in config["cases"] for d in config["densities"]
                 for s in config["seeds"]}
    assert 0 < len(first["rows"]) < len(expected)   # shard 0 measured its share
    rows = json.loads(out.read_text())["rows"]
    assert sorted(study._key(r) for r in rows) == sorted(expected)   # each run once
    with pytest.raises(SystemExit):
        study.main(["--smoke", "--shard", "2/2"])
