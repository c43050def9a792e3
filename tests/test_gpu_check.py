"""benchmarks/gpu_check.py --smoke: the script a GPU session runs once, exercised here on the CPU at toy sizes.

It checks the script (every part runs, the JSON is written and complete, the parity and mask checks hold),
not the GPU; the figures it records on the CPU are not judged.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def _module():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_run_writes_every_part(tmp_path, no_network):
    record = _module().main(["--smoke", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == json.loads(json.dumps(record, default=str))
    parts = record["parts"]
    assert list(parts) == ["a_parity", "c_vitb", "d_finetune", "b_bench"]
    for name, part in parts.items():
        assert "error" not in part, f"{name}: {part.get('error')}"
        assert part["ok"] and part["seconds"] > 0, name

    rows = parts["a_parity"]["rows"]
    assert {(r["model"], r["method"]) for r in rows} >= {("plain_cnn", "px"), ("hf_vit_sdpa", "px")}
    assert all(r["identical"] and r["agreement"] == 1.0 for r in rows)   # CPU against CPU: must be identical

    vitb = parts["c_vitb"]
    for call in ("forward", "train", "px", "px-masked"):
        assert vitb["peak_mb"][call] >= 0 and len(vitb["times_s"][call]) == 3
    runs = {(r["method"], r["tf32"]): r for r in vitb["prune"]}
    assert set(runs) == {("px", False), ("px-exact", False), ("px", True)}
    for run in runs.values():
        assert run["rounds_run"] == run["rounds"] and run["density"] == pytest.approx(0.1, abs=1e-3)
    assert runs[("px", True)]["agreement_with_float32"] == 1.0     # TF32 is a no-op on the CPU

    tuned = {r["precision"]: r for r in parts["d_finetune"]["runs"]}
    assert parts["d_finetune"]["prune_exit"] == 0
    assert tuned["bf16"]["masks_identical"] and tuned["bf16"]["pruned_exactly_zero"] and tuned["bf16"]["finite"]
    assert "needs a GPU" in tuned["fp16"]["skipped"]

    bench = json.loads((tmp_path / parts["b_bench"]["json"]).read_text())
    assert list(bench["results"]) == ["resnet20"]
    assert bench["results"]["resnet20"]["ratio_to_forward"]["px"] > 0


def test_a_failing_part_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    module = _module()

    def broken(device, smoke):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(module, "part_parity", broken)
    monkeypatch.setattr(module, "part_bench", lambda device, smoke, out, timeout: {"ok": True})
    record = module.main(["--smoke", "--out", str(tmp_path), "--parts", "a,b"])
    assert "simulated failure" in record["parts"]["a_parity"]["error"] and not record["parts"]["a_parity"]["ok"]
    assert record["parts"]["b_bench"]["ok"]
    assert json.loads((tmp_path / "gpu_check.json").read_text())["parts"]["b_bench"]["ok"]
