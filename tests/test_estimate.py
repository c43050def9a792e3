"""`hf-px prune` says what it will cost before it starts: known answers for the estimate, the warning for a long
CPU run (from a mocked and from a measured forward pass), and the refinement from measured rounds."""

import pytest
import torch

from hf_px import estimate
from hf_px.cli import main
from hf_px.criteria import make_criterion
from hf_px.estimate import Measurement, estimate_prune, refine


def _model():
    return torch.nn.Linear(100, 10)    # 1010 float32 parameters: 4040 bytes


def test_estimate_known_answers():
    measured = Measurement(seconds=2.0, batch_size=10, kept_bytes=1000)
    exact = estimate_prune(make_criterion("px-exact"), 20, measured, 1000, _model(), "cpu")
    # 0.2 s per image per forward, 1 + 2 x 8 probes = 17 forwards per image, 1000 images, 20 rounds
    assert exact.round_seconds == pytest.approx(0.2 * 17 * 1000)
    assert exact.seconds == pytest.approx(0.2 * 17 * 1000 * 20)
    assert exact.peak_bytes == 3 * 4040 + 1000
    px = estimate_prune(make_criterion("px"), 100, measured, 1000, _model(), "cpu")
    assert px.seconds == pytest.approx(0.2 * 3 * 1000 * 100)
    # auto's transformer pick: a px round, then px-exact's 17 forwards for the weights on no path
    gated = estimate_prune(make_criterion("px", gate_only="px-exact"), 20, measured, 1000, _model(), "cpu")
    assert gated.seconds == pytest.approx(0.2 * (3 + 17) * 1000 * 20)
    magnitude = estimate_prune(make_criterion("magnitude"), 1, measured, 1000, _model(), "cpu")
    assert magnitude.seconds == pytest.approx(2.0)     # data-free: about one batch's forward per round
    unknown = estimate_prune(make_criterion("px"), 1, Measurement(2.0, 10, None), 10, _model(), "cpu")
    assert unknown.peak_bytes is None and "peak memory" not in unknown.lines()[0]


def test_warning_only_for_a_long_cpu_run():
    measured = Measurement(seconds=2.0, batch_size=10, kept_bytes=0)
    long_cpu = estimate_prune(make_criterion("px-exact"), 20, measured, 1000, _model(), "cpu").lines()
    assert len(long_cpu) == 2 and long_cpu[1].startswith("warning")
    for cheaper in ("--rounds", "--examples-per-class", "--method px", "GPU"):
        assert cheaper in long_cpu[1]
    assert "h for 20 rounds" in long_cpu[0]                    # 68,000 s: shown in hours
    assert len(estimate_prune(make_criterion("px-exact"), 20, measured, 1000, _model(), "cuda").lines()) == 1
    short = estimate_prune(make_criterion("px"), 10, measured, 100, _model(), "cpu")   # 600 s exactly: no warning
    assert short.seconds == pytest.approx(estimate.LONG_CPU_RUN_S) and len(short.lines()) == 1


def test_refine_uses_the_last_round_for_the_rest():
    first = estimate_prune(make_criterion("px"), 100, Measurement(1.0, 10, 0), 10, _model(), "cpu")
    refined = refine(first, done=2, elapsed=7.0, last_round=4.0)
    assert refined.seconds == pytest.approx(7.0 + 98 * 4.0) and refined.rounds == 100
    assert "measured: 2 rounds" in refined.lines()[0]


def test_measure_forward_times_and_leaves_no_gradients():
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    measured = estimate.measure_forward(model, torch.randn(32, 64))
    assert measured.seconds > 0 and measured.batch_size == 32
    assert measured.kept_bytes is None or measured.kept_bytes >= 0
    assert all(p.grad is None for p in model.parameters())
    # the timed pass comes after an untimed one (a first pass at a new shape pays a set-up no round pays)
    grad_enabled = []
    model[1].register_forward_hook(lambda *args: grad_enabled.append(torch.is_grad_enabled()))
    estimate.measure_forward(model, torch.randn(32, 64))
    assert grad_enabled == [False, True]


@pytest.mark.needs_fashion_mnist
def test_cli_prints_the_estimate_and_warns_for_a_long_cpu_run(vit_folder, dataset, tmp_path, capsys, monkeypatch):
    args = ["prune", str(vit_folder), "--dataset", str(dataset), "--dry-run", "--method", "px-exact",
            "--examples-per-class", "2", "--eval-examples", "10", "--device", "cpu", "--no-progress"]
    assert main(args) == 0                       # measured on the tiny ViT: seconds, no warning
    printed = capsys.readouterr().out
    assert "estimate  about" in printed and "20 rounds" in printed and "warning" not in printed
    # the same configuration with a forward pass measured at 5 s per image: 20 images x 17 x 20 rounds
    monkeypatch.setattr("hf_px.job.measure_forward", lambda model, images: Measurement(5.0 * len(images), len(images), 0))
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "about 9.4 h for 20 rounds" in printed
    assert "warning   this CPU run is expected to take about 9.4 h" in printed and "--method px" in printed
