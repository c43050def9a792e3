"""Evidence study 3 (cost), smoke setting: the JSON's structure and invariants any valid run must satisfy."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parent.parent / "benchmarks" / "study_cost.py"


def _module():
    sys.path.insert(0, str(STUDY.parent))
    spec = importlib.util.spec_from_file_location("study_cost", STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_line_recovers_a_line():
    fit = _module().fit_line([1, 5, 10, 20], [0.5 + 2 * x for x in (1, 5, 10, 20)])
    assert fit["slope"] == pytest.approx(2.0) and fit["intercept"] == pytest.approx(0.5)
    assert fit["r2"] == pytest.approx(1.0)
    noisy = _module().fit_line([1, 2, 3, 4], [1.0, 3.0, 2.0, 4.0])
    assert 0 < noisy["r2"] < 1


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run of the study, shared by the structure test and the timing benchmark."""
    study = _module()
    tmp_path = tmp_path_factory.mktemp("study_cost")
    out = tmp_path / "study_cost.json"
    record = study.main(["--smoke", "--out", str(out)])
    return study, record, out, tmp_path


@pytest.mark.slow
def test_smoke_run(smoke):
    """What any valid run records, whatever the machine's speed (no wall-clock comparisons here)."""
    study, record, out, tmp_path = smoke
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    for key in ("study", "setting", "command", "machine", "started", "seconds", "config", "rows", "fits"):
        assert key in record
    assert record["study"] == "study_cost" and record["setting"] == "smoke"
    config = record["config"]

    cost = [r for r in record["rows"] if r["part"] == "cost"]
    assert [(r["model"], r["resolution"]) for r in cost] == [tuple(m) for m in config["models"]]
    for r in cost:
        assert r["params"] > 1e6 and r["forward_s"] > 0 and r["px_s"] > 0
        assert r["px_rss_mb"] >= 0 and r["forward_rss_mb"] >= 0
        assert len(r["px"]["times_s"]) == len(r["px"]["forward_times_s"]) == config["repeats"]

    for vary in ("rounds", "images"):
        rows = [r for r in record["rows"] if r["part"] == vary]
        assert [r["value"] for r in rows] == config[f"{vary}_sweep"]
        for r in rows:
            assert r["density"] == pytest.approx(1 - config["sparsity"], abs=1e-4)   # pruning really happened
            assert len(r["times_s"]) == config["sweep_repeats"] and r["median_s"] > 0

    text = study.report(record, images=tmp_path)
    assert text.startswith("## Cost") and "PX / forward" in text and record["command"] in text
    for r in cost:
        assert r["model"] in text
    for name in ("ratio", "rounds", "images"):
        if f"img/study_cost_smoke_{name}.png" in text:        # written when matplotlib is installed
            assert (tmp_path / f"study_cost_smoke_{name}.png").stat().st_size > 0


@pytest.mark.bench
def test_smoke_run_timings(smoke):
    """Wall-clock relations of the smoke run; they hold on a quiet machine, not under any load, hence `bench`."""
    _, record, _, _ = smoke
    for r in (r for r in record["rows"] if r["part"] == "cost"):
        # a PX round runs the model's forward and backward through two surrogates: never cheaper than a forward
        assert r["ratio"] > 1 and r["ratio_separate"] > 1, r
    # total time grows with rounds, roughly in proportion: each round re-scores the whole network
    rounds = {r["value"]: r["median_s"] for r in record["rows"] if r["part"] == "rounds"}
    low, high = min(rounds), max(rounds)
    assert rounds[high] / rounds[low] > 0.5 * high / low, rounds
    fit = record["fits"]["rounds"]
    assert fit["slope"] > 0 and fit["r2"] > 0.9, fit
    assert fit["slope"] * high > 2 * abs(fit["intercept"]), fit   # the rounds, not a fixed cost, dominate
    # a round inside prune is one hf_px.score round plus the mask update, measured on the same model and images
    assert 0.7 < record["fits"]["slope_over_score_round"] < 6, record["fits"]
