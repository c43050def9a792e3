"""Smoke run of study 1 (benchmarks/study_pai.py) at tiny sizes, so that the benchmark code cannot rot."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import study_pai  # noqa: E402


@pytest.mark.needs_fashion_mnist   # see conftest.py
def test_smoke_run_writes_rows_report_and_plots(tmp_path, capsys, monkeypatch):
    # rows are resumed only from a run of the same code: pin the fingerprint the runs record
    monkeypatch.setattr(study_pai.common, "code_fingerprint", lambda study_file=None: "abc1234")
    out = tmp_path / "study_pai.json"
    assert study_pai.main(["--smoke", "--out", str(out), "--threads", "1"]) == 0
    results = json.loads(out.read_text())
    config = results["config"]
    grid = len(config["models"]) * len(config["seeds"]) * (1 + len(config["methods"]) * len(config["densities"]))
    ablation = len(config["seeds"]) * len(config["rounds_ablation"]["rounds"])
    longer = len(config["models"]) * len(config["seeds"]) * len(config["longer"]["cases"]) * len(config["longer"]["densities"])
    assert len(results["rows"]) == grid + ablation + longer
    assert sum(r.get("schedule") == "longer" and r["train"] == config["longer"]["train"] for r in results["rows"]) == longer
    for row in results["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0
        if row["method"] == "dense":
            assert row["global_density"] == 1.0 and row["collapsed"] == []
        else:   # kept_count(density, N) weights kept: the achieved density is within one weight
            total = sum(1 for _ in row["layer_densities"])
            assert total > 0 and abs(row["global_density"] - row["density"]) < 1e-3
        assert row["min_layer_density"] == min(row["layer_densities"].values())
    # the same seed gives every method the same initial weights and sample: dense runs differ across seeds
    dense = [r for r in results["rows"] if r["method"] == "dense" and r["model"] == "resnet20"]
    assert len({r["seed"] for r in dense}) == len(config["seeds"])

    text = study_pai.report(results)
    assert "| **px** |" in text and "| random |" in text and "best mean is" in text
    assert "PX rounds at 20.0% density" in text
    assert "Longer-training check (vgg)" in text and "| px (3 rounds) |" in text and "| magnitude |" in text
    for path in results["plots"].values():
        assert (tmp_path / Path(path).name).is_file()      # smoke plots land beside the JSON, not in docs/

    # a rerun of the same code resumes: no row is computed twice
    assert study_pai.main(["--smoke", "--out", str(out), "--threads", "1"]) == 0
    rerun = json.loads(out.read_text())
    assert rerun["rows"] == results["rows"]
    assert rerun["earlier_runs"][0]["rows"] == grid + ablation + longer   # the first run, kept in the history

    # other code measures everything again (as --fresh does): no earlier run is kept
    monkeypatch.setattr(study_pai.common, "code_fingerprint", lambda study_file=None: "def5678")
    assert study_pai.main(["--smoke", "--out", str(out), "--threads", "1"]) == 0
    again = json.loads(out.read_text())
    assert "earlier_runs" not in again and len(again["rows"]) == grid + ablation + longer
    capsys.readouterr()


def test_rows_join_only_runs_of_the_same_clean_commit():
    same_code = study_pai.common.same_code
    assert same_code({"commit": "abc", "dirty": False}, {"commit": "abc", "dirty": False})
    assert not same_code({"commit": "abc", "dirty": False}, {"commit": "def", "dirty": False})
    assert not same_code({"commit": "abc", "dirty": True}, {"commit": "abc", "dirty": False})
    assert not same_code({"commit": "abc", "dirty": False}, {"commit": "abc", "dirty": True})
    assert not same_code({"commit": None, "dirty": False}, {"commit": None, "dirty": False})
    assert not same_code({"commit": "abc"}, {"commit": "abc", "dirty": False})   # records from before the flag


def test_rows_join_runs_of_the_same_code_fingerprint(tmp_path):
    same_code = study_pai.common.same_code
    # the fingerprint decides where both records have one, whatever the commits say
    assert same_code({"code": "f1", "commit": "abc", "dirty": True}, {"code": "f1", "commit": "def", "dirty": False})
    assert not same_code({"code": "f1", "commit": "abc", "dirty": False}, {"code": "f2", "commit": "abc", "dirty": False})
    # another torch or another kind of device measures afresh
    cpu = {"code": "f1", "torch": "2.14.1", "device": "cpu"}
    assert same_code(cpu, dict(cpu)) and not same_code(cpu, {**cpu, "device": "NVIDIA H200"})
    assert not same_code(cpu, {**cpu, "torch": "2.15.0"})
    # the fingerprint covers the study's own file: another script, another fingerprint
    fingerprint = study_pai.common.code_fingerprint
    other = tmp_path / "study.py"
    other.write_text("x = 1\n")
    first = fingerprint(other)
    assert fingerprint(other) == first and len(first) == 16
    other.write_text("x = 2\n")
    assert fingerprint(other) != first


def test_rows_of_other_code_are_adopted_only_when_reproduced(tmp_path):
    adopt_rows = study_pai.common.adopt_rows
    out = tmp_path / "study.json"
    machine = {"code": "old", "commit": "abc", "torch": "2.14.1", "device": "cpu", "threads": 1}
    rows = [{"case": "px", "accuracy": 0.8}, {"case": "magnitude", "accuracy": 0.7}]
    with pytest.raises(ValueError, match="does not exist"):
        adopt_rows({}, out, ("epochs",), None)
    out.write_text(json.dumps({"study": "pai", "setting": "quick", "config": {"epochs": 3}, "machine": machine,
                               "rows": rows, "seconds": 60}))

    def record(**changes):
        return {"study": "pai", "setting": "quick", "config": {"epochs": 3}, "rows": [],
                "machine": {**machine, "code": "new", "commit": "def", **changes}}

    asked = []

    def reproduced(found):
        asked.append(found)
        return ["px"], []

    now = record()
    adopt_rows(now, out, ("epochs",), reproduced)
    assert now["rows"] == rows and asked == [rows]
    assert now["earlier_runs"] == [{"commit": "abc", "code": "old", "seconds": 60, "rows": 2,
                                    "adopted_after_reproducing": ["px"]}]
    # nothing checked (a model the run cannot load, say) refuses too
    with pytest.raises(ValueError, match="no row could be measured again"):
        adopt_rows(record(), out, ("epochs",), lambda found: ([], []))
    # one differing number refuses, and the rows stay out
    refused = record()
    with pytest.raises(ValueError, match="does not reproduce .*accuracy 0.8 then, 0.79 now"):
        adopt_rows(refused, out, ("epochs",), lambda found: (["px"], ["px: accuracy 0.8 then, 0.79 now"]))
    assert refused["rows"] == []
    # another thread count, torch or setting refuses before measuring anything
    asked.clear()
    with pytest.raises(ValueError, match="--threads"):
        adopt_rows(record(threads=2), out, ("epochs",), reproduced)
    with pytest.raises(ValueError, match="--threads"):
        adopt_rows(record(cpu="another CPU"), out, ("epochs",), reproduced)
    with pytest.raises(ValueError, match="config keys differing: epochs"):
        adopt_rows({**record(), "config": {"epochs": 9}}, out, ("epochs",), reproduced)
    with pytest.raises(ValueError, match="not study 'transfer'"):
        adopt_rows({**record(), "study": "transfer"}, out, ("epochs",), reproduced)
    assert asked == []
    # the same code resumes without a check
    same = record(code="old")
    adopt_rows(same, out, ("epochs",), reproduced)
    assert same["rows"] == rows and asked == [] and "adopted_after_reproducing" not in same["earlier_runs"][0]
    # a study's section says which rows were adopted, and after how many checks
    summary = study_pai.common.run_summary({**now, "command": "python s.py", "seconds": 120})
    assert summary.endswith("commit def; the rows of commit abc adopted after 1 of them came out the same with "
                            "this code")


def test_budget_check_of_the_converged_setting():
    config = study_pai.SETTINGS["converged"]
    assert config["longer"]["cases"] == [["dense", 0]] and config["longer"]["epochs"] == 3 * config["epochs"]

    def row(accuracy, seed, schedule="grid"):
        extra = {"schedule": schedule, "train": 20000, "epochs": 9} if schedule == "longer" else {}
        return {"model": "resnet20", "method": "dense", "density": 1.0, "seed": seed, "rounds": 0,
                "accuracy": accuracy, **extra}

    results = {"config": config, "rows": [row(0.90, 0), row(0.92, 1), row(0.91, 2, "longer"), row(0.93, 3, "longer")]}
    check = study_pai.budget_check(results, "resnet20")
    assert check["short"] == [0.90, 0.92] and check["long"] == [0.91, 0.93] and check["converged"]
    results["rows"][-1]["accuracy"] = 0.95                     # long mean 0.93: two points above
    assert not study_pai.budget_check(results, "resnet20")["converged"]
    assert study_pai.budget_check({"config": config, "rows": results["rows"][:2]}, "resnet20") is None


def test_fingerprint_ignores_the_settings_table_only(tmp_path):
    """Adding a case to a study's SETTINGS keeps its finished rows; any change to how a row is measured does not."""
    fingerprint = study_pai.common.code_fingerprint
    study = tmp_path / "study.py"
    base = 'SETTINGS = {"quick": dict(cases=["px"], epochs=3)}\nRECIPE = dict(lr=0.1)\n\n\ndef run():\n    return 1\n'
    study.write_text(base)
    before = fingerprint(study)
    study.write_text(base.replace('cases=["px"]', 'cases=["px", "magnitude"]') + "# a comment\n")
    assert fingerprint(study) == before
    study.write_text(base.replace("lr=0.1", "lr=0.2"))
    assert fingerprint(study) != before
    study.write_text(base.replace("return 1", "return 2"))
    assert fingerprint(study) != before


def test_verdicts_wait_for_every_seed_of_every_method():
    """A partial cell (px alone so far) names no best method; a complete one names the best mean, the cases
    within one standard deviation of it, how far px is behind, and runs at chance, which tie nothing."""
    def row(method, seed, accuracy):
        return {"model": "m", "method": method, "density": 0.05, "seed": seed, "rounds": 20 if method == "px" else 1,
                "accuracy": accuracy, "collapsed": []}

    results = {"config": {"densities": [0.05], "methods": ["px", "random", "magnitude"], "seeds": [0, 1],
                          "rounds": 20, "rounds_ablation": {"model": "other", "density": 0.05, "rounds": [1]}},
               "rows": [row("px", 0, 0.8), row("px", 1, 0.82)]}
    assert study_pai._verdicts(results, "m")[0] == ("- at 5.0% density: 2 of 6 runs so far; no verdict until "
                                                    "every method has all its seeds")
    # px 81 ± 1.4; magnitude 84 ± 1.4 (px 3 points behind); random 47.5 ± 53: within one std of the best only
    # through its collapsed seed
    results["rows"] += [row("magnitude", 0, 0.83), row("magnitude", 1, 0.85), row("random", 0, 0.85),
                        row("random", 1, 0.10)]
    assert study_pai._verdicts(results, "m")[0] == (
        "- at 5.0% density the best mean is **magnitude** (84.0%); no other case ties it; px is 3.0 points behind; "
        "at chance (collapsed; counted in the mean, ties nothing): random seed 1 (10.0%)")
    results["rows"][1]["accuracy"] = 0.86   # px 83 ± 4.2: a tie
    assert study_pai._verdicts(results, "m")[0] == (
        "- at 5.0% density the best mean is **magnitude** (84.0%); tied (within one standard deviation): px; "
        "at chance (collapsed; counted in the mean, ties nothing): random seed 1 (10.0%)")


@pytest.mark.parametrize("setting", sorted(study_pai.SETTINGS))
def test_jobs_run_every_case_once_sparsest_cells_first(setting):
    """The run order covers the setting's cases exactly once (checked against the plain nested loops), and puts
    every seed of a (method, density) cell before the next density, from the sparsest."""
    config = study_pai.SETTINGS[setting]
    ablation, longer = config["rounds_ablation"], config.get("longer") or {"densities": [], "cases": []}
    for model in config["models"]:
        order = study_pai.jobs(config, model)
        expected = {("grid", "dense", 1.0, 0, s) for s in config["seeds"]}
        expected |= {("grid", m, d, study_pai._rounds(config, m), s) for m in config["methods"]
                     for d in config["densities"] for s in config["seeds"]}
        expected |= {("longer", m, d, r, s) for m, r in longer["cases"] for d in longer["densities"]
                     for s in config["seeds"]}
        if model == ablation["model"]:
            expected |= {("grid", "px", ablation["density"], r, s) for r in ablation["rounds"] for s in config["seeds"]}
        assert len(order) == len(set(order)) and set(order) == expected
        grid = [job for job in order if job[0] == "grid" and job[1] != "dense"]
        assert [job[2] for job in grid] == sorted(job[2] for job in grid)
        assert all(job[0] == "grid" and job[1] == "dense" for job in order[:len(config["seeds"])])


def test_shards_together_measure_what_one_run_does(tmp_path, monkeypatch):
    """Two shards of the smoke setting into one JSON hold exactly the rows of an unsharded run, with the same
    accuracies; a shard writing while another's rows are on disk keeps them."""
    monkeypatch.setattr(study_pai.common, "code_fingerprint", lambda study_file=None: "abc1234")
    monkeypatch.setitem(study_pai.SETTINGS, "smoke", dict(study_pai.SETTINGS["smoke"], models=["vgg"]))  # one model
    whole, shared = tmp_path / "whole.json", tmp_path / "shared.json"
    assert study_pai.main(["--smoke", "--out", str(whole), "--threads", "1"]) == 0
    first = study_pai.run("smoke", shared, shard=(0, 2))
    mine = {study_pai._key(r) for r in first["rows"]}
    assert 0 < len(mine) < len(json.loads(whole.read_text())["rows"])
    study_pai.common.write_json(dict(first, rows=[]), shared)     # shard 1 starts before shard 0 has written
    second = study_pai.run("smoke", shared, shard=(1, 2))
    assert not mine & {study_pai._key(r) for r in second["rows"]}      # the shards split the runs
    study_pai.common.write_shared(first, shared, study_pai._SAME, study_pai._key)   # shard 0's last write
    accuracy = {study_pai._key(r): r["accuracy"] for r in json.loads(whole.read_text())["rows"]}
    rows = json.loads(shared.read_text())["rows"]
    assert len(rows) == len(accuracy) and {study_pai._key(r): r["accuracy"] for r in rows} == accuracy


def test_shard_flag_is_checked():
    with pytest.raises(SystemExit):
        study_pai.main(["--smoke", "--shard", "2/2"])
