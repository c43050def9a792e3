"""Smoke run of study 2 (benchmarks/study_transformers.py): pruning a trained transformer with no
fine-tuning. Runs every part at tiny sizes (about 30 s on one CPU thread) and checks the JSON's structure
and that its numbers are sane: the dense rows are the reference (retention 1, KL 0, NTK alignment 1),
achieved densities are exact, KL >= 0, alignments in [0, 1], plots and the markdown section are produced.
The MiniLM and EfficientNet parts are skipped (with the reason in the JSON) where their packages are absent.
"""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

pytestmark = [pytest.mark.needs_fashion_mnist, pytest.mark.slow]

COMMON_KEYS = {"part", "variant", "density", "seed", "accuracy", "retention", "kl", "global_density", "kept", "total",
               "min_layer_density", "min_layer", "collapsed", "layer_densities", "prune_s"}
PART_KEYS = {"vit": {"agreement", "ntk_alignment", "ntk_top_eig_ratio", "ntk_trace_ratio"},
             "text": {"refit_accuracy", "similarity_spearman", "embedding_cosine", "ntk_alignment", "ntk_top_eig_ratio"},
             "cnn": {"agreement"}}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    import study_transformers

    out = tmp_path_factory.mktemp("study_transformers") / "study_transformers_smoke.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        returned = study_transformers.run("smoke", out, log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    return study_transformers, returned, json.loads(out.read_text()), out


def test_record_structure(smoke):
    module, returned, results, _ = smoke
    assert results == json.loads(json.dumps(returned))          # what was returned is what was written
    for key in ("study", "setting", "command", "machine", "started", "seconds", "config", "rows", "parts",
                "skipped", "plots"):
        assert key in results, key
    assert results["study"] == "transformers" and results["setting"] == "smoke"
    assert not any(key.startswith("_") for key in results)
    assert "vit" in results["parts"], "the ViT part needs only Fashion-MNIST and must run"
    assert set(results["parts"]) | set(results["skipped"]) == set(module.PARTS)
    for part, reason in results["skipped"].items():
        assert part in ("text", "cnn") and "pip install" in reason
        assert not module._rows(results, part=part)
    for part in results["parts"]:
        expected = sorted((v, d, s) for v, d, s in module.cases(results["config"][part]))
        got = sorted((r["variant"], r["density"], r["seed"]) for r in module._rows(results, part=part))
        assert got == expected, part
        for row in module._rows(results, part=part):
            assert COMMON_KEYS | PART_KEYS[part] <= set(row), (part, set(COMMON_KEYS | PART_KEYS[part]) - set(row))


def test_dense_rows_are_the_reference(smoke):
    module, _, results, _ = smoke
    for part in results["parts"]:
        (dense,) = module._rows(results, part=part, variant="dense")
        assert dense["retention"] == 1.0 and dense["global_density"] == 1.0 and dense["min_layer_density"] == 1.0
        assert abs(dense["kl"]) < 1e-9
        assert dense["collapsed"] == []
        if "ntk_alignment" in dense:
            assert dense["ntk_alignment"] == pytest.approx(1.0, abs=1e-6)
            assert dense["ntk_trace_ratio"] == pytest.approx(1.0, abs=1e-6)
            assert all(r == pytest.approx(1.0, abs=1e-6) for r in dense["ntk_top_eig_ratio"])
        if part == "text":
            assert dense["similarity_spearman"] == pytest.approx(1.0, abs=1e-9)
            assert results["parts"]["text"]["pooling_check_max_abs_diff"] < 1e-4
        if part == "cnn":
            assert dense["agreement"] == 1.0


def test_values_are_sane(smoke):
    from hf_px.masks import kept_count

    _, _, results, _ = smoke
    assert results["rows"]
    for row in results["rows"]:
        where = (row["part"], row["variant"], row["density"], row["seed"])
        assert row["kl"] >= -1e-12 and math.isfinite(row["kl"]), where
        assert 0.0 <= row["accuracy"] <= 1.0 and row["retention"] >= 0.0, where
        # exact achieved density: kept_count(density, N) weights kept
        assert row["kept"] == kept_count(row["density"], row["total"]), where
        assert row["global_density"] == pytest.approx(row["kept"] / row["total"], rel=1e-12), where
        assert abs(row["global_density"] - row["density"]) <= 1.0 / row["total"], where
        assert 0.0 <= row["min_layer_density"] <= row["global_density"] + 1e-12, where
        assert row["min_layer_density"] == min(row["layer_densities"].values()), where
        assert (row["min_layer_density"] == 0.0) == bool(row["collapsed"]), where
        if "ntk_alignment" in row:
            assert -1e-9 <= row["ntk_alignment"] <= 1.0 + 1e-9, where
            assert all(r >= 0.0 and math.isfinite(r) for r in row["ntk_top_eig_ratio"]), where
            assert len(row["ntk_top_eig_ratio"]) == 5 or row["part"] == "text", where
        if "similarity_spearman" in row:
            assert -1.0 <= row["similarity_spearman"] <= 1.0, where
        if row["variant"] != "dense" and "ntk_alignment" in row:
            assert row["ntk_alignment"] < 1.0 - 1e-9, ("pruning must move the NTK", where)
    # pruning a trained ViT to 20% without fine-tuning changes its predictions
    pruned = [r for r in results["rows"] if r["part"] == "vit" and r["density"] == 0.2]
    assert pruned and all(r["kl"] > 0.0 for r in pruned)


def test_report_and_plots(smoke):
    module, _, results, out = smoke
    text = module.report(results)
    assert text.startswith("## Study 2")
    for part in results["parts"]:
        assert f"### {module.TITLES[part]}" in text
    assert text.count("| **px** |") == sum(len(results["config"][p]["densities"]) for p in results["parts"])
    for part, reason in results["skipped"].items():
        assert reason in text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    for part in results["parts"]:
        path = results["plots"][part]
        assert "smoke" in path and (out.parent / Path(path).name).is_file(), "the smoke run draws beside its JSON"
