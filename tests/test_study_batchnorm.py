"""Smoke run of benchmarks/study_batchnorm.py (BatchNorm recalibration after pruning, no fine-tuning) on a tiny
random BN network: every method runs, each ticket is judged stale and recalibrated with the same masks, the
JSON and the markdown section come out with sane numbers."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_smoke_run(tmp_path):
    import study_batchnorm as study

    out = tmp_path / "study_batchnorm.json"
    returned = study.run("smoke", out, log=lambda line: None)
    saved = json.loads(out.read_text())
    assert saved["rows"] == returned["rows"]
    methods = study.METHODS + [study.EVERY_ROUND]
    assert [row["method"] for row in saved["rows"] if row["batchnorm"] == "recalibrated"] == methods
    assert [row["method"] for row in saved["rows"] if row["batchnorm"] == "stale"] == study.METHODS
    for row in saved["rows"]:
        assert 0.0 <= row["top1"] <= 1.0 and 0.0 <= row["agreement"] <= 1.0 and row["kl"] >= 0.0
    # same masks, other statistics: a stale and a recalibrated judgement differ somewhere
    pairs = [(a, b) for a in saved["rows"] for b in saved["rows"] if a["method"] == b["method"]
             and a["batchnorm"] == "stale" and b["batchnorm"] == "recalibrated"]
    assert len(pairs) == len(study.METHODS) and any(a["kl"] != pytest.approx(b["kl"]) for a, b in pairs)
    section = study.report(saved)
    assert section.startswith("## BatchNorm recalibration") and "| px, recalibrated every round |" in section
