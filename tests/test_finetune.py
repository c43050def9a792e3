"""Mask-preserving fine-tuning: pruned weights and their optimizer state stay exactly zero, resume repeats an
uninterrupted run, an interrupted run keeps its last complete state, recipes validate, bad input fails in
one line. Offline: a tiny transformers ResNet pruned with PX on real Fashion-MNIST images."""

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import hf_px
from hf_px import finetune as ft
from hf_px.cli import main
from hf_px.data import FASHION_MNIST_CLASSES

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, dataset):
    """A tiny transformers ResNet with Fashion-MNIST's classes, pruned to 80% with PX."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                             layer_type="basic", num_labels=10, id2label=dict(enumerate(FASHION_MNIST_CLASSES)))
    root = tmp_path_factory.mktemp("model")
    tf.ResNetForImageClassification(config).save_pretrained(root / "dense")
    tf.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.286] * 3,
                         image_std=[0.353] * 3).save_pretrained(root / "dense")
    code = main(["prune", str(root / "dense"), "--dataset", str(dataset), "--sparsity", "0.8", "--method", "px",
                 "--rounds", "3", "--examples-per-class", "2", "--eval-examples", "10", "--output", str(root / "pruned"),
                 "--no-progress"])
    assert code == 0
    return root / "pruned"


def _config(pruned, output, **changes):
    values = dict(model=str(pruned), output=str(output), optimizer="sgd", lr=0.05, epochs=2, batch_size=8,
                  weight_decay=1e-3, train_examples=32, eval_examples=10, augmentation="standard", seed=0)
    return ft.FinetuneConfig(**{**values, **changes})


def _quiet(*args, **kwargs):
    pass


def _pruned_entries_zero(model, masks):
    params = dict(model.named_parameters())
    return all(int(params[n].detach()[~m.to(params[n].device)].count_nonzero()) == 0 for n, m in masks.items())


@pytest.mark.parametrize("optimizer, precision, extra", [
    ("sgd", "no", {"momentum": 0.9, "nesterov": True}),
    ("adamw", "no", {"weight_decay": 0.05}),
    ("sgd", "bf16", {"gradient_accumulation_steps": 2, "max_grad_norm": 0.5}),   # bf16 autocast on CPU
    ("adamw", "bf16", {"label_smoothing": 0.1, "schedule": "cosine", "warmup_epochs": 0.5}),
])
def test_pruned_weights_and_optimizer_state_stay_zero(pruned, dataset, tmp_path, optimizer, precision, extra):
    before, masks = hf_px.load_sparse(str(pruned))
    kept_before = {n: int(m.sum()) for n, m in masks.items()}
    config = _config(pruned, tmp_path / "out", optimizer=optimizer, precision=precision, **extra)
    result = ft.run_finetune(config, progress=False, log=_quiet)

    assert result.history[-1]["step"] == 2 * 32 // 8    # 4 optimizer steps per epoch, whatever the accumulation
    after, saved_masks = hf_px.load_sparse(str(tmp_path / "out"))
    assert all(torch.equal(saved_masks[n], masks[n]) for n in masks)
    assert _pruned_entries_zero(after, masks)
    assert {n: int(m.sum()) for n, m in saved_masks.items()} == kept_before
    # training happened: kept weights moved
    old, new = dict(before.named_parameters()), dict(after.named_parameters())
    assert any(not torch.equal(old[n][m], new[n][m]) for n, m in masks.items())

    # the optimizer state saved for resuming: every tensor shaped like a pruned weight is zero there
    state = torch.load(tmp_path / "out" / "resume" / "optimizer.bin", weights_only=False)["state"]
    names = [n for n, p in after.named_parameters() if p.requires_grad]
    checked = 0
    for index, entries in state.items():
        name = names[index]
        if name not in masks:
            continue
        for key, value in entries.items():
            if torch.is_tensor(value) and value.shape == masks[name].shape:
                assert int(value[~masks[name]].count_nonzero()) == 0, (name, key)
                assert int(value[masks[name]].count_nonzero()) > 0, (name, key)   # and alive where kept
                checked += 1
    assert checked >= len(masks)

    record = json.loads((tmp_path / "out" / "hf_px.json").read_text())
    assert record["finetune"]["recipe"]["optimizer"] == optimizer
    assert record["finetune"]["steps"] == 8 and record["method"] == "px"
    card = (tmp_path / "out" / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    accuracy = header["model-index"][0]["results"][0]["metrics"][0]["value"]
    assert accuracy == round(record["finetune"]["eval_accuracy"], 4)


def test_without_the_mask_rule_weights_revive_and_the_check_stops_the_run(pruned, tmp_path, monkeypatch):
    monkeypatch.setattr(ft, "mask_gradients_", lambda masked: None)
    with pytest.raises(ft.MaskViolation, match="pruned weights of .* after epoch 1 are not zero"):
        ft.run_finetune(_config(pruned, tmp_path / "out"), progress=False, log=_quiet)
    assert not (tmp_path / "out" / "hf_px.json").exists()      # nothing final was written


def test_check_masks_hold_sees_weights_and_optimizer_state():
    model = torch.nn.Linear(3, 2)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    with torch.no_grad():
        model.weight.mul_(mask)
    masks = {"weight": mask}
    ft.check_masks_hold(model, masks)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.weight.grad = torch.ones_like(model.weight)
    optimizer.step()       # no mask rule: the momentum buffer and the weight at pruned entries become non-zero
    with pytest.raises(ft.MaskViolation, match="'weight' are not zero"):
        ft.check_masks_hold(model, masks, optimizer)
    with torch.no_grad():
        model.weight.mul_(mask)
    with pytest.raises(ft.MaskViolation, match="optimizer state 'momentum_buffer'"):
        ft.check_masks_hold(model, masks, optimizer)


def test_channels_last_trains_the_same_weights_and_saves_the_usual_layout(pruned, tmp_path, monkeypatch):
    # a layout, not a change of arithmetic: the same run either way, to float rounding (kernels sum in other orders)
    layouts = []
    real_mask_gradients = ft.mask_gradients_

    def spy(masked):   # called at every optimizer step: which layout the conv weights train in
        layouts.append(any(p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
                           for p, _ in masked))
        real_mask_gradients(masked)

    monkeypatch.setattr(ft, "mask_gradients_", spy)
    fast = ft.run_finetune(_config(pruned, tmp_path / "cl", channels_last=True), progress=False, log=_quiet)
    trained_channels_last, layouts[:] = all(layouts), []
    plain = ft.run_finetune(_config(pruned, tmp_path / "plain", channels_last=False), progress=False, log=_quiet)
    assert trained_channels_last and layouts and not any(layouts)
    a, b = dict(fast.model.named_parameters()), dict(plain.model.named_parameters())
    assert all(torch.allclose(a[n], b[n], atol=1e-4, rtol=1e-3) for n in a)
    assert [h["step"] for h in fast.history] == [h["step"] for h in plain.history]
    assert all(p.is_contiguous() for p in fast.model.parameters())   # the saved tensors in the usual layout
    assert _pruned_entries_zero(fast.model, fast.masks)
    reloaded, masks = hf_px.load_sparse(str(tmp_path / "cl"))
    saved = dict(reloaded.named_parameters())
    assert all(torch.equal(saved[n], a[n].cpu()) for n in a)


def test_eval_every_evaluates_on_schedule_and_always_last(pruned, tmp_path):
    result = ft.run_finetune(_config(pruned, tmp_path / "out", epochs=3, eval_every=2), progress=False, log=_quiet)
    assert [("eval_accuracy" in h) for h in result.history] == [False, True, True]   # epoch 2, then the last
    assert result.provenance.finetune.eval_accuracy == result.history[-1]["eval_accuracy"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| 1 | " in card and "| – | – |" in card                                # the epoch without an eval
    with pytest.raises(hf_px.ConfigError, match="eval_every"):
        _config(pruned, tmp_path / "bad", eval_every=0)
    # resumed with --epochs equal to the epochs done, after an epoch eval_every skipped: still judged once
    ft.run_finetune(_config(pruned, tmp_path / "cut", epochs=1, eval_every=2, schedule="constant"), progress=False,
                    log=_quiet)
    progress = json.loads((tmp_path / "cut" / "resume" / "progress.json").read_text())
    progress["history"][-1] = {k: v for k, v in progress["history"][-1].items() if not k.startswith("eval_")}
    (tmp_path / "cut" / "resume" / "progress.json").write_text(json.dumps(progress))
    resumed = ft.run_finetune(_config(pruned, tmp_path / "cut", epochs=1, eval_every=2, schedule="constant",
                                      resume=True), progress=False, log=_quiet)
    assert "eval_accuracy" in resumed.history[-1] and resumed.provenance.finetune.eval_accuracy is not None


def test_resume_repeats_an_uninterrupted_run(pruned, tmp_path):
    whole = ft.run_finetune(_config(pruned, tmp_path / "whole", epochs=3), progress=False, log=_quiet)
    ft.run_finetune(_config(pruned, tmp_path / "parts", epochs=2), progress=False, log=_quiet)
    progress = json.loads((tmp_path / "parts" / "resume" / "progress.json").read_text())
    assert progress["epoch"] == 2 and progress["step"] == 8
    resumed = ft.run_finetune(_config(pruned, tmp_path / "parts", epochs=3, resume=True), progress=False, log=_quiet)
    assert [h["step"] for h in resumed.history] == [4, 8, 12]
    assert resumed.history == whole.history
    first, second = dict(whole.model.named_parameters()), dict(resumed.model.named_parameters())
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert all(torch.equal(whole.masks[n], resumed.masks[n]) for n in whole.masks)


def _interrupt_at_second_evaluation(monkeypatch):
    """Make the second call of `finetune.evaluate` (the end of epoch 2) raise KeyboardInterrupt; returns the real
    evaluate and the list of calls so far (a test may reset it)."""
    real_evaluate, calls = ft.evaluate, []

    def evaluate_then_interrupt(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args)

    monkeypatch.setattr(ft, "evaluate", evaluate_then_interrupt)
    return real_evaluate, calls


def test_interrupted_run_keeps_the_last_complete_state(pruned, tmp_path, monkeypatch):
    output = tmp_path / "out"
    real_evaluate, calls = _interrupt_at_second_evaluation(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        ft.run_finetune(_config(pruned, output, epochs=3), progress=False, log=_quiet)
    assert sorted(p.name for p in output.iterdir()) == ["resume"]     # no half-written model at the top
    assert json.loads((output / "resume" / "progress.json").read_text())["epoch"] == 1
    monkeypatch.setattr(ft, "evaluate", real_evaluate)
    with pytest.raises(hf_px.ConfigError, match="pass --resume to continue"):
        ft.run_finetune(_config(pruned, output, epochs=3), progress=False, log=_quiet)
    result = ft.run_finetune(_config(pruned, output, epochs=3, resume=True), progress=False, log=_quiet)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    hf_px.load_sparse(str(output))


def test_from_scratch_reinitialises_and_keeps_masks(pruned, tmp_path):
    model, masks = hf_px.load_sparse(str(pruned))
    fresh = ft.run_finetune(_config(pruned, tmp_path / "a", from_scratch=True, lr=1e-12, epochs=1),
                            progress=False, log=_quiet)
    old, new = dict(model.named_parameters()), dict(fresh.model.named_parameters())
    changed = [n for n, m in masks.items() if not torch.allclose(old[n][m], new[n][m])]
    assert changed == list(masks)                 # every kept weight was drawn afresh
    assert _pruned_entries_zero(fresh.model, masks)


def test_reinitialise_uses_the_library_rule_on_loaded_weights(pruned):
    """transformers flags loaded weights as initialised and its init skips them; ResNet's rule is kaiming
    normal with fan_out (std sqrt(2 / fan_out)), not torch's default (std sqrt(1 / (3 fan_in)))."""
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(pruned.parent / "dense")
    ft.reinitialise_(model, "transformers", seed=3)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    conv = max(convs, key=lambda m: m.weight.numel())
    fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
    assert float(conv.weight.detach().std()) == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)


def test_lr_schedules_against_hand_computed_values():
    step = ft.FinetuneConfig(optimizer="sgd", lr=0.1, epochs=160, batch_size=128, schedule="step",
                             milestones=[80, 120])
    assert [ft.lr_factor(e * 10, 10, step) for e in (0, 79, 80, 119, 120, 159)] == \
        [1.0, 1.0, 0.1, 0.1, pytest.approx(0.01), pytest.approx(0.01)]
    cosine = ft.FinetuneConfig(optimizer="adamw", lr=1e-4, epochs=4, batch_size=8, schedule="cosine",
                               warmup_epochs=1)
    assert [ft.lr_factor(s, 10, cosine) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert ft.lr_factor(10, 10, cosine) == 1.0
    assert ft.lr_factor(25, 10, cosine) == pytest.approx(0.5)
    assert ft.lr_factor(40, 10, cosine) == pytest.approx(0.0)


def test_every_shipped_recipe_validates():
    recipes = sorted(RECIPES.glob("*.yaml"))
    assert {"tiny.yaml", "resnet20-cifar10-px.yaml", "resnet50-cifar100-px.yaml",
            "vit-base-cifar100-px.yaml"} <= {p.name for p in recipes}
    for path in recipes:
        config = ft.load_recipe(path)
        if path.name != "tiny.yaml":
            assert config.expected and config.expected.get("source"), path.name
    authors = ft.load_recipe(RECIPES / "resnet20-cifar10-px.yaml")
    assert (authors.optimizer, authors.lr, authors.momentum, authors.weight_decay, authors.epochs,
            authors.milestones, authors.gamma, authors.batch_size, authors.from_scratch) == \
        ("sgd", 0.1, 0.9, 1e-4, 160, [80, 120], 0.1, 128, False)
    transfer = ft.load_recipe(RECIPES / "resnet50-cifar100-px.yaml")
    assert (transfer.optimizer, transfer.lr, transfer.momentum, transfer.weight_decay, transfer.epochs,
            transfer.milestones, transfer.batch_size, transfer.from_scratch) == \
        ("sgd", 0.1, 0.9, 1e-4, 182, [91, 136], 256, False)
    vit = ft.load_recipe(RECIPES / "vit-base-cifar100-px.yaml")
    assert vit.optimizer == "adamw" and vit.schedule == "cosine" and vit.epochs <= 10


def test_tiny_recipe_end_to_end_through_the_cli(pruned, dataset, tmp_path, capsys):
    output = tmp_path / "ft"
    code = main(["finetune", str(RECIPES / "tiny.yaml"), "--model", str(pruned), "--dataset", str(dataset),
                 "--output", str(output), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "epoch 2/2" in printed and "eval accuracy" in printed
    model, masks = hf_px.load_sparse(str(output))
    assert _pruned_entries_zero(model, masks)
    assert "fine-tuned  2 epochs" in hf_px.checkpoint.summarize(str(output))


def _write_recipe(path, **values):
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("recipe, flags, message", [
    ({"optimizer": "sgd", "lr": 0.1, "epochs": 1}, [], "the recipe lacks batch_size"),
    ({"optimizer": "adam", "lr": 0.1, "epochs": 1, "batch_size": 8}, [], "optimizer 'adam' is unknown; choose one of sgd, adamw"),
    ({"optimizer": "sgd", "lr": 0.1, "epochs": 1, "batch_size": 8, "learning_rate": 1}, [], "unknown keys \\['learning_rate'\\]"),
    ({"optimizer": "sgd", "lr": 0.1, "epochs": 1, "batch_size": 8}, ["--precision", "fp16"], "fp16 needs a GPU"),
])
def test_bad_recipes_fail_in_one_line(pruned, tmp_path, capsys, recipe, flags, message):
    path = _write_recipe(tmp_path / "r.yaml", **recipe)
    code = main(["finetune", str(path), "--model", str(pruned), "--output", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "out").exists()


def test_bad_checkpoints_and_labels_fail_in_one_line(pruned, dataset, tmp_path, capsys):
    recipe = str(RECIPES / "tiny.yaml")

    def run(model, *flags):
        code = main(["finetune", recipe, "--model", str(model), "--output", str(tmp_path / "out"), *flags])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert not (tmp_path / "out" / "hf_px.json").exists()
        return err

    no_masks = tmp_path / "no-masks"
    shutil.copytree(pruned, no_masks)
    (no_masks / "hf_px_masks.safetensors").unlink()
    assert "has no hf_px_masks.safetensors" in run(no_masks)

    mismatch = tmp_path / "mismatch"
    shutil.copytree(pruned, mismatch)
    _, masks = hf_px.load_sparse(str(pruned))
    name = next(iter(masks))
    masks[name] = torch.ones(3, 3, dtype=torch.bool)
    hf_px.checkpoint._write_masks(masks, mismatch / "hf_px_masks.safetensors")
    assert "belong to another model" in run(mismatch)

    # other classes than the checkpoint's head: a dataset whose labels are renamed
    import datasets

    other = tmp_path / "other-labels"
    stored = datasets.load_from_disk(str(dataset))
    names = [f"class {i}" for i in range(10)]
    stored.cast_column("label", datasets.ClassLabel(names=names)).save_to_disk(str(other))
    assert "do not match the head" in run(pruned, "--dataset", str(other))
    assert "prune on this task first" in run(pruned, "--dataset", str(other))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_end_with_identical_masks(pruned, dataset, tmp_path):
    """`accelerate launch --multi_gpu` on a machine without GPUs starts 2 gloo processes (Accelerator(cpu=True))."""
    output = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "hf_px", "finetune", str(RECIPES / "tiny.yaml"),
               "--model", str(pruned), "--dataset", str(dataset), "--output", str(output), "--device", "cpu",
               "--no-progress"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("saved ") == 1                  # one writer
    record = json.loads((output / "hf_px.json").read_text())
    assert record["finetune"]["processes"] == 2
    assert record["finetune"]["steps"] == 2 * 40 // 8          # the batch is split over the processes
    model, masks = hf_px.load_sparse(str(output))
    _, original = hf_px.load_sparse(str(pruned))
    assert ft.masks_digest(masks) == ft.masks_digest(original)
    assert record["finetune"]["masks_sha256_per_process"] == [ft.masks_digest(original)[:15]] * 2   # both ranks
    assert _pruned_entries_zero(model, masks)


def test_push_uploads_the_checkpoint_without_the_resume_state(pruned, tmp_path, monkeypatch):
    """--push-to-hub as in prune: one repo creation, one upload of the output folder, resume/ ignored."""
    from huggingface_hub import HfApi, RepoUrl
    from huggingface_hub.utils import filter_repo_objects

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id))
                        or RepoUrl(f"https://huggingface.co/{repo_id}"))

    def upload_folder(self, **kwargs):
        calls.append(("upload", kwargs))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/1"})()

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    result = ft.run_finetune(_config(pruned, tmp_path / "out", epochs=1, push_to_hub="me/tiny-ft"), progress=False,
                             log=_quiet)
    assert result.pushed_to == "https://huggingface.co/me/tiny-ft/commit/1"
    assert [c[0] for c in calls] == ["create", "upload"]
    upload = calls[1][1]
    assert upload["folder_path"] == str(tmp_path / "out")
    files = [str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file()]
    sent = set(filter_repo_objects(files, ignore_patterns=upload["ignore_patterns"]))
    assert "hf_px.json" in sent and "model.safetensors" in sent and "README.md" in sent
    assert not any(f.startswith("resume/") for f in sent) and any(f.startswith("resume/") for f in files)


def test_an_unrelated_resume_folder_is_never_taken_for_a_training_state(pruned, tmp_path, capsys):
    mine = tmp_path / "my-notes"
    (mine / "resume").mkdir(parents=True)
    (mine / "resume" / "cv.pdf").write_bytes(b"%PDF")
    code = main(["finetune", str(RECIPES / "tiny.yaml"), "--model", str(pruned), "--output", str(mine),
                 "--overwrite", "--no-progress"])
    assert code == 2 and "not an hf_px checkpoint" in capsys.readouterr().err
    assert (mine / "resume" / "cv.pdf").read_bytes() == b"%PDF"


def test_resume_refuses_fewer_epochs_and_a_relaid_cosine_and_recovers_an_interrupted_swap(pruned, tmp_path):
    output = tmp_path / "out"
    ft.run_finetune(_config(pruned, output, epochs=2, schedule="cosine"), progress=False, log=_quiet)
    with pytest.raises(hf_px.ConfigError, match="already trained 2 epochs"):
        ft.run_finetune(_config(pruned, output, epochs=1, schedule="cosine", resume=True), progress=False, log=_quiet)
    with pytest.raises(hf_px.ConfigError, match="cosine schedule was laid out over 2 epochs"):
        ft.run_finetune(_config(pruned, output, epochs=3, schedule="cosine", resume=True), progress=False, log=_quiet)
    # a state save interrupted between its two renames: only the hidden previous copy is left
    os.replace(output / "resume", output / ".resume.old")
    result = ft.run_finetune(_config(pruned, output, epochs=2, schedule="cosine", resume=True), progress=False,
                             log=_quiet)
    assert [h["epoch"] for h in result.history] == [1, 2] and (output / "resume" / "progress.json").is_file()


def test_command_line_data_replaces_the_recipes_and_booleans_turn_off(pruned, dataset, tmp_path):
    recipe = _write_recipe(tmp_path / "r.yaml", optimizer="sgd", lr=0.05, epochs=1, batch_size=8, task="cifar10",
                           from_scratch=True, train_examples=16, eval_examples=10)
    code = main(["finetune", str(recipe), "--model", str(pruned), "--dataset", str(dataset), "--no-from-scratch",
                 "--output", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    record = json.loads((tmp_path / "out" / "hf_px.json").read_text())
    assert record["finetune"]["recipe"]["from_scratch"] is False
    assert record["finetune"]["recipe"]["task"] is None and record["finetune"]["dataset"] == str(dataset)


# ------------------------------------------------------------------------------------------ divergence guard


def test_guard_known_answers():
    guard = ft.DivergenceGuard(factor=2.0, margin=1.0, patience=3, warmup=2)
    assert guard.check(1.0) is None and guard.check(3.0) is None      # start = 2.0, line = 2 * 2 + 1 = 5
    assert guard.check(6.0) is None and guard.check(6.0) is None
    assert guard.check(4.0) is None                                    # back below the line: the count restarts
    assert guard.check(5.5) is None and guard.check(7.0) is None
    assert "stayed above 5 for 3 steps" in guard.check(9.0)
    assert "nan" in ft.DivergenceGuard().check(float("nan"))
    assert "inf" in ft.DivergenceGuard().check(float("inf"))
    assert guard.check_epoch(4.9) is None and "above 5" in guard.check_epoch(5.1)
    assert "nan" in guard.check_epoch(float("nan"))


def test_divergence_stops_the_run_and_keeps_the_last_good_state(pruned, dataset, tmp_path, capsys):
    """Epoch 1 trains at lr 0.05; the step schedule then multiplies it by 1e6 (an absurd learning rate)."""
    out = tmp_path / "out"
    code = main(["finetune", str(RECIPES / "tiny.yaml"), "--model", str(pruned), "--dataset", str(dataset),
                 "--output", str(out), "--epochs", "3", "--schedule", "step", "--milestones", "1", "--gamma", "1e6",
                 "--warmup-epochs", "0", "--max-grad-norm", "1e9", "--train-examples", "48", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "training diverged at step" in err[0] and "Lower --lr" in err[0]
    assert "Traceback" not in err[0]
    assert not (out / "hf_px.json").exists() and not (out / "hf_px_masks.safetensors").exists()   # no finished model
    progress = json.loads((out / "resume" / "progress.json").read_text())
    assert progress["epoch"] == 1 and "after epoch 1" in err[0]
    # the kept state is complete: the run continues from it (here with the schedule it was started with)
    assert hf_px.finetune.checkpoint.has_training_state(out)


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not str(p.relative_to(folder)).startswith(".")}


def test_overwrite_replaces_the_old_run_only_when_the_new_one_completes(pruned, dataset, tmp_path, monkeypatch,
                                                                         capsys):
    output = tmp_path / "out"
    ft.run_finetune(_config(pruned, output, epochs=1), progress=False, log=_quiet)
    before = _files(output)
    assert "resume/progress.json" in before
    real_evaluate, calls = _interrupt_at_second_evaluation(monkeypatch)   # epoch 1 completes and saves, epoch 2 stops
    with pytest.raises(KeyboardInterrupt):
        ft.run_finetune(_config(pruned, output, epochs=3, seed=1, overwrite=True), progress=False, log=_quiet)
    assert _files(output) == before          # the old checkpoint and its resume state, byte for byte
    calls.clear()
    calls.append(1)                          # the CLI: interrupted after its first epoch, says what it kept
    code = main(["finetune", str(RECIPES / "tiny.yaml"), "--model", str(pruned), "--dataset", str(dataset),
                 "--output", str(output), "--overwrite", "--seed", "1", "--no-progress"])
    assert code == 130 and f"{output} is unchanged" in capsys.readouterr().err
    assert _files(output) == before

    monkeypatch.setattr(ft, "evaluate", real_evaluate)
    ft.run_finetune(_config(pruned, output, epochs=2, seed=1, overwrite=True), progress=False, log=_quiet)
    progress = json.loads((output / "resume" / "progress.json").read_text())
    assert progress["epoch"] == 2 and progress["config"]["seed"] == 1      # the new run's state, swapped in
    assert sorted(p.name for p in output.iterdir() if p.name.startswith(".")) == []
    hf_px.load_sparse(str(output))


def test_fine_tuned_card_wording(pruned, tmp_path):
    ft.run_finetune(_config(pruned, tmp_path / "out", epochs=1), progress=False, log=_quiet)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "unchanged" not in card and "| Head | trained with the rest of the model |" in card
    assert "(1 process)" in card and "precision fp32" in card and "process(es)" not in card
    assert str(tmp_path) not in card
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert modes == {0o666 & ~_umask()}, modes      # the resume state's safetensors too


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
