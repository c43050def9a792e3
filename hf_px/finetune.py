"""Mask-preserving fine-tuning with 🤗 Accelerate: the step after `hf-px prune`.

The loop is a plain Accelerate loop (prepare → accumulate → backward → step, `gather_for_metrics`,
`save_state`/`load_state`) with one extra rule, visible where it happens: before every optimizer step the
gradients of pruned weights are set to zero. A pruned weight is exactly zero, so with a zero gradient it
gets no update and no optimizer state (SGD momentum and AdamW moments stay zero; decoupled weight decay
of zero is zero). `check_masks_hold` verifies this after every epoch and before any save: a revived weight
stops the run.

The recipe (a YAML file in `recipes/`) and the command-line flags are one schema: `FinetuneConfig`.
"""

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import checkpoint, data, head
from .batches import logits_of
from .batchnorm import batchnorm_layers, recalibrate_batchnorm_
from .config import config_from_mapping, read_mapping
from .distributed import masks_digest
from .errors import ConfigError, DataError, MaskError, MaskViolation, ModelError, TrainingDiverged
from .job import notes
from .masks import check_masks, kept_and_total
from .record import CheckpointRecord, FinetuneRecord

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "step", "cosine")
PRECISIONS = ("no", "bf16", "fp16")
AUGMENTATIONS = ("standard", "none")
RECIPE_REQUIRED = ("optimizer", "lr", "epochs", "batch_size")
# recipe fields that may change between a run and its --resume (everything else must match)
_RESUMABLE = {"epochs", "resume", "overwrite", "push_to_hub", "private", "num_workers", "device", "output",
              "model", "revision", "description", "expected", "eval_every"}


OVERWRITE_STATE_DIR = ".resume.overwrite"   # an --overwrite run's state, until it replaces the old one


@dataclass
class FinetuneConfig:
    """A fine-tuning run as data: a recipe file's keys and `hf-px finetune`'s flags (dashes for underscores).

    batch_size is the effective batch of one optimizer step, over all processes and accumulation steps,
    so that a recipe means the same thing on 1 CPU or 8 GPUs.
    """

    # what to train and where it goes (usually given on the command line)
    model: str | None = None            # a sparse checkpoint: an `hf-px prune --output` folder or Hub repo
    revision: str | None = None
    task: str | None = None             # a named task, or --dataset; neither: the task the checkpoint was pruned on
    dataset: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    split: str | None = None            # train split (default: the task's)
    eval_split: str | None = None       # default: the task's eval split, else rows held out of train
    output: str | None = None
    # the recipe
    optimizer: str | None = None        # "sgd" or "adamw"
    lr: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    momentum: float = 0.9               # SGD
    nesterov: bool = False              # SGD
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])   # AdamW
    weight_decay: float = 0.0           # applied to every parameter (as in the authors' scripts)
    schedule: str = "constant"          # "constant", "step" (x gamma at each milestone epoch), "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: float = 0.0          # linear warm-up from 0, before any schedule
    label_smoothing: float = 0.0
    max_grad_norm: float | None = None  # gradient clipping (None: off)
    gradient_accumulation_steps: int = 1
    precision: str = "no"               # "no" (float32), "bf16" (autocast; also on CPU) or "fp16" (GPU)
    augmentation: str = "standard"      # "standard": random crop (padding 4, or resized crop for large images) + flip
    from_scratch: bool = False          # re-initialise every weight, keep the masks (prune at init, then train)
    recalibrate_bn: bool = True         # BatchNorm statistics re-estimated with the current weights before each eval/save
    eval_every: int = 1                 # epochs between evaluations (with their BatchNorm recalibration); the last always
    channels_last: bool = True          # a model with 2-d convolutions trains in channels-last memory layout (faster)
    calibration_examples: int = 512     # train images (no augmentation, a fixed seeded subset) for that
    train_examples: int | None = None   # a class-balanced subset of train (None: all)
    eval_examples: int | None = None    # a class-balanced subset of the eval split (None: all)
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"                # "auto": what Accelerate picks (GPU if any); "cpu" forces CPU
    resume: bool = False
    overwrite: bool = False
    push_to_hub: str | None = None
    private: bool = False
    # documentation only: what the recipe is for, and the result it should give with where that comes from
    description: str | None = None
    expected: dict | None = None

    def __post_init__(self):
        missing = [name for name in RECIPE_REQUIRED if getattr(self, name) is None]
        if missing:
            raise ConfigError(f"the recipe lacks {', '.join(missing)}; add e.g. `{missing[0]}: ...` to it or pass "
                              f"--{missing[0].replace('_', '-')}")
        for name, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("precision", PRECISIONS),
                              ("augmentation", AUGMENTATIONS)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} {getattr(self, name)!r} is unknown; choose one of {', '.join(choices)}")
        for name in ("epochs", "batch_size", "gradient_accumulation_steps", "eval_every"):
            _check_number(name, getattr(self, name), int, minimum=1)
        for name in ("train_examples", "eval_examples"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name), int, minimum=1)
        _check_number("num_workers", self.num_workers, int, minimum=0)
        _check_number("calibration_examples", self.calibration_examples, int, minimum=1)
        _check_number("seed", self.seed, int, minimum=0)
        _check_number("lr", self.lr, float, minimum=0, strict=True)
        for name in ("momentum", "weight_decay", "gamma", "warmup_epochs", "label_smoothing"):
            _check_number(name, getattr(self, name), float, minimum=0)
        if self.max_grad_norm is not None:
            _check_number("max_grad_norm", self.max_grad_norm, float, minimum=0, strict=True)
        if self.label_smoothing >= 1:
            raise ConfigError(f"label_smoothing {self.label_smoothing} must be below 1")
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2 or not all(
                isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas {self.betas!r} must be two numbers in [0, 1), e.g. [0.9, 0.999]")
        if not isinstance(self.milestones, (list, tuple)) or not all(
                isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in self.milestones):
            raise ConfigError(f"milestones {self.milestones!r} must be a list of positive epoch numbers, e.g. [80, 120]")
        if self.schedule == "step" and not self.milestones:
            raise ConfigError("schedule 'step' needs milestones (the epochs at which the lr is multiplied by gamma)")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs {self.warmup_epochs} exceeds epochs {self.epochs}")
        if self.task is not None and self.dataset is not None:
            raise ConfigError(f"give one of --task ({self.task!r}) and --dataset ({self.dataset!r}), not both")
        if self.expected is not None and not isinstance(self.expected, dict):
            raise ConfigError(f"expected {self.expected!r} must be a mapping, e.g. {{metric: top1, value: 91.5, source: ...}}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, where: str = "the recipe") -> "FinetuneConfig":
        return config_from_mapping(cls, values, where)


def _check_number(name: str, value: Any, kind: type, minimum: float, strict: bool = False) -> None:
    wrong_type = isinstance(value, bool) or not isinstance(value, (int,) if kind is int else (int, float))
    if wrong_type or (value <= minimum if strict else value < minimum) or (kind is float and math.isnan(value)):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ConfigError(f"{name} {value!r} must be {'an integer' if kind is int else 'a number'} {bound}")


RECIPES = Path(__file__).resolve().parent.parent / "recipes"   # the shipped recipes (a source checkout)


def shipped_recipes() -> list[str]:
    """File names of the shipped recipes (none when hf_px is installed without its recipes folder)."""
    return sorted(p.name for p in RECIPES.glob("*.yaml")) if RECIPES.is_dir() else []


def load_recipe(path: str | Path, overrides: dict | None = None) -> FinetuneConfig:
    """A recipe YAML file, with `overrides` (e.g. command-line flags) on top, as a validated `FinetuneConfig`."""
    path = Path(path).expanduser()
    if not path.is_file():   # a shipped recipe's name: "tiny.yaml" or "tiny"
        for candidate in (RECIPES / path.name, RECIPES / f"{path.name}.yaml"):
            if path.parent == Path(".") and candidate.is_file():
                path = candidate
                break
    if not path.is_file():
        names = shipped_recipes()
        raise ConfigError(f"recipe {str(path)!r} does not exist" + (f"; shipped recipes: {', '.join(names)}"
                                                                     if names else ""))
    values = read_mapping(path, f"recipe {str(path)!r}")
    return FinetuneConfig.from_dict({**values, **(overrides or {})}, where=f"recipe {str(path)!r}")


# ------------------------------------------------------------------------------------------ the mask rule


def mask_gradients_(masked: list[tuple[nn.Parameter, Tensor]]) -> None:
    """Zero the gradient of every pruned weight: with it, the optimizer can neither move a pruned weight nor
    give it any state."""
    for param, mask in masked:
        if param.grad is not None:
            param.grad.mul_(mask)


def check_masks_hold(model: nn.Module, masks: dict[str, Tensor], optimizer: torch.optim.Optimizer | None = None,
                     when: str = "") -> None:
    """Raise `MaskViolation` if a pruned weight, or any optimizer state shaped like it, is not exactly zero."""
    try:
        check_masks(model, masks, zeroed=True, where=f" {when}" if when else "",
                    fix="something outside the mask rule changed them (a custom optimizer or hook?); the run stops")
    except MaskError as error:
        raise MaskViolation(str(error)) from None
    params = dict(model.named_parameters())
    state = optimizer.state if optimizer is not None else {}
    for name, mask in masks.items():
        param = params[name]
        pruned = ~mask.to(param.device)
        for key, value in state.get(param, {}).items():
            if isinstance(value, Tensor) and value.shape == param.shape and int(value[pruned].count_nonzero()):
                raise MaskViolation(f"optimizer state {key!r} of {name!r} is non-zero at pruned entries {when}")


# ----------------------------------------------------------------------------------------- model and data


def reinitialise_(model: nn.Module, library: str, seed: int) -> None:
    """Fresh weights from the model's own initialiser (torch's `reset_parameters`, then the library's rules:
    transformers `_init_weights` per module, timm `init_weights`), seeded."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "reset_parameters") and module is not model:
                module.reset_parameters()
        if library == "transformers":
            # weights loaded by from_pretrained are flagged as initialised, and transformers' init functions
            # skip flagged tensors: clear the flags so that its own rules apply
            for tensor in [*model.parameters(), *model.buffers(), *model.modules()]:
                if getattr(tensor, "_is_hf_initialized", False):
                    tensor._is_hf_initialized = False
            for module in model.modules():
                model._init_weights(module)
        elif callable(getattr(model, "init_weights", None)):
            model.init_weights()


class TrainAugmentation:
    """Standard train-time augmentation on PIL images, before the model's own preprocessing: small images
    (<= 64 px, e.g. CIFAR, Fashion-MNIST) get a random crop with 4 pixels of zero padding and a horizontal
    flip; larger ones a random resized crop (scale 0.25-1) and a flip."""

    def __init__(self, kind: str, preprocess):
        self.kind, self.preprocess = kind, preprocess
        self._by_size = {}     # one transform per image size, built once

    def __call__(self, image) -> Tensor:
        if self.kind == "standard":
            size = (image.height, image.width)
            if size not in self._by_size:
                from torchvision.transforms import v2

                crop = (v2.RandomCrop(size, padding=4) if max(size) <= 64
                        else v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True))
                self._by_size[size] = v2.Compose([crop, v2.RandomHorizontalFlip()])
            image = self._by_size[size](image)
        return self.preprocess(image)


def _collate(items):
    images, labels = zip(*items)
    return torch.stack(images), torch.as_tensor(labels, dtype=torch.int64)


def lr_factor(step: int, steps_per_epoch: int, config: FinetuneConfig) -> float:
    """The learning-rate multiplier after `step` optimizer steps (warm-up, then the schedule)."""
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "step":
        epoch = step // steps_per_epoch
        return config.gamma ** sum(epoch >= milestone for milestone in config.milestones)
    if config.schedule == "cosine":
        total = max(1, config.epochs * steps_per_epoch - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / total)))
    return 1.0


def make_optimizer(model: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)


class DivergenceGuard:
    """Stops a run whose training loss is not finite, or stays far above where it started.

    The starting loss is the mean of the first `warmup` batch losses; the run has diverged when a loss is
    NaN/inf, or when `patience` consecutive batch losses exceed `factor` x start + `margin` (in nats, so a
    run that starts near 0 may still wobble). Ordinary fine-tuning noise stays far below that line; a
    learning rate that is too high crosses it within a few dozen steps, well before an epoch ends and its
    model would be saved.
    """

    def __init__(self, factor: float = 2.0, margin: float = 1.0, patience: int = 20, warmup: int = 10):
        self.factor, self.margin, self.patience, self.warmup = factor, margin, patience, warmup
        self.first: list[float] = []
        self.above = 0

    @property
    def start(self) -> float | None:
        return sum(self.first) / len(self.first) if self.first else None

    def check(self, loss: float) -> str | None:
        """None while training looks sane, else why it does not (one clause of the error message)."""
        if not math.isfinite(loss):
            return f"the loss is {loss}"
        if len(self.first) < self.warmup:
            self.first.append(loss)
            return None
        limit = self.factor * self.start + self.margin
        self.above = self.above + 1 if loss > limit else 0
        if self.above >= self.patience:
            return (f"the loss stayed above {limit:.3g} for {self.patience} steps (now {loss:.3g}; it started at "
                    f"{self.start:.3g})")
        return None

    def check_epoch(self, mean_loss: float) -> str | None:
        """At an epoch's end, before its state is saved: its mean loss must be finite and below the line
        (short epochs end before `patience` steps could be counted)."""
        if not math.isfinite(mean_loss):
            return f"the epoch's mean loss is {mean_loss}"
        if self.start is not None and mean_loss > self.factor * self.start + self.margin:
            return (f"the epoch's mean loss {mean_loss:.3g} is above {self.factor * self.start + self.margin:.3g} "
                    f"(it started at {self.start:.3g})")
        return None


# ------------------------------------------------------------------------------------------------- the run


@dataclass
class FinetuneResult:
    model: nn.Module
    masks: dict[str, Tensor]
    history: list[dict]               # one entry per epoch: epoch, step, lr, train_loss, eval_loss, eval_accuracy
    provenance: CheckpointRecord      # the pruned checkpoint's record with this run's `finetune` record
    output: Path | None = None
    pushed_to: str | None = None


def run_finetune(config: FinetuneConfig, command: str | None = None, progress: bool = True, log=print
                 ) -> FinetuneResult:
    """Fine-tune the sparse checkpoint `config.model` on its task, keeping its masks; save to `config.output`."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from tqdm.auto import tqdm

    started = time.perf_counter()
    if not progress:
        from .job import quiet_library_progress_bars
        quiet_library_progress_bars()
    if not config.model:
        raise ConfigError("no model to fine-tune: pass --model with an `hf-px prune --output` folder or Hub repo")
    if not config.output:
        raise ConfigError("no output folder: pass --output DIR (the resume state is kept there too)")
    if config.resume and config.overwrite:
        raise ConfigError("--resume continues the run in --output and --overwrite starts it over; pass one")
    output = Path(config.output).expanduser()
    state_dir = output / checkpoint.STATE_DIR
    _check_output_for_training(output, state_dir, config)
    # --overwrite keeps the old checkpoint and its resume state until the new run completes: the new state
    # is written to a hidden folder (never pushed, never resumed) and swapped in with the new checkpoint
    final_state_dir = state_dir
    if config.overwrite and output.exists():
        state_dir = output / OVERWRITE_STATE_DIR

    if config.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {config.device!r}: use auto, cpu or cuda (Accelerate gives each process its GPU; "
                          "choose GPUs with CUDA_VISIBLE_DEVICES)")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but torch sees no GPU; use --device cpu or auto")
    cpu = config.device == "cpu" or not torch.cuda.is_available()
    if config.precision == "fp16" and cpu:
        raise ConfigError("precision fp16 needs a GPU; on CPU use bf16 (autocast) or no")
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # Accelerate keeps its settings in a process-wide singleton; a second run in the same process (tests,
        # notebooks) with another precision would be refused, so a single-process run starts it afresh
        from accelerate.state import AcceleratorState
        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=cpu, mixed_precision=config.precision,
                              gradient_accumulation_steps=config.gradient_accumulation_steps,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
                              step_scheduler_with_optimizer=False)
    main = accelerator.is_main_process
    log = log if main else (lambda *args, **kwargs: None)
    per_device = _per_device_batch(config, accelerator.num_processes)
    set_seed(config.seed)

    log(f"loading {config.model}")
    with accelerator.main_process_first():    # one process downloads, the others then read the cache
        loaded, masks, record = checkpoint.open_sparse(config.model, config.revision)
        task = _task_of(config, record)
        with notes(log):   # a recipe's image counts capped to a small dataset's
            splits = data.training_splits(task, config.train_examples, config.eval_examples, config.seed)
    model = loaded.model
    if config.from_scratch:
        reinitialise_(model, loaded.library, config.seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in masks:
                    param.mul_(masks[name].to(param.dtype))

    if config.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        # about twice the training throughput of EfficientNet-Lite0 on CPU (its depthwise convolutions'
        # backward is far faster in this layout; benchmarks/bench_channels_last.py); the values are the same,
        # only their order in memory differs
        model.to(memory_format=torch.channels_last)
    train_set = data.ImageDataset(splits.train, task, splits.train_indices, splits.train_codes,
                                  TrainAugmentation(config.augmentation, loaded.preprocess))
    eval_set = data.ImageDataset(splits.eval, task, splits.eval_indices, splits.eval_codes, loaded.preprocess)
    calibration = _calibration_batches(splits, task, loaded.preprocess, config, per_device) if (
        config.recalibrate_bn and batchnorm_layers(model)) else None
    _check_labels(loaded, splits.label_names, eval_set[0][0].unsqueeze(0), config.model)
    # workers kept across epochs: a short run on small images would otherwise pay their start-up every epoch
    loader = dict(num_workers=config.num_workers, collate_fn=_collate, persistent_workers=config.num_workers > 0)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=per_device, shuffle=True, **loader)
    eval_loader = torch.utils.data.DataLoader(eval_set, batch_size=per_device, shuffle=False, **loader)
    optimizer = make_optimizer(model, config)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    steps_per_epoch = math.ceil(len(train_loader) / config.gradient_accumulation_steps)
    # stepped here once per optimizer step (not through accelerate, which would step it once per process)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, config))
    accelerator.register_for_checkpointing(scheduler)

    unwrapped = accelerator.unwrap_model(model)
    params = dict(unwrapped.named_parameters())
    masks = {name: mask.to(params[name].device) for name, mask in masks.items()}
    masked = [(params[name], mask.to(params[name].dtype)) for name, mask in masks.items()]
    check_masks_hold(unwrapped, masks, when="in the checkpoint")
    digest = masks_digest(masks)

    epoch = step = 0
    history: list[dict] = []
    if config.resume:
        epoch, step, history = _load_training_state(accelerator, state_dir, config, digest)
        check_masks_hold(unwrapped, masks, optimizer, when="in the resume state")
        log(f"resumed from {state_dir} after epoch {epoch} (step {step})")
    kept, total = kept_and_total(masks)
    log(f"training {sum(p.numel() for p in unwrapped.parameters()):,} parameters ({kept:,} of {total:,} target weights "
        f"kept) on {len(train_set):,} images of {task.name}, eval on {len(eval_set):,} ({splits.eval_split}); "
        f"{accelerator.num_processes} process(es) on {accelerator.device}, batch {config.batch_size} = "
        f"{per_device} x {accelerator.num_processes} x {config.gradient_accumulation_steps}, "
        f"precision {config.precision}")

    def evaluate_now(epoch: int) -> dict:
        if calibration is not None:
            # precise BatchNorm: the running averages mix statistics of the weights of many past steps, which in
            # a short fine-tuning run are far from the current ones (docs/results.md, "BatchNorm
            # recalibration"); training itself uses batch statistics and is unaffected
            recalibrate_batchnorm_(unwrapped, [(images.to(accelerator.device), None) for images in calibration])
            _same_batchnorm_everywhere(accelerator, unwrapped)
        metrics = evaluate(model, eval_loader, accelerator)
        if not math.isfinite(metrics["eval_loss"]):
            _stop_if_diverged(accelerator, f"the eval loss is {metrics['eval_loss']}", step, epoch, config,
                              state_dir, history)
        return metrics

    guard = DivergenceGuard()
    for epoch in range(epoch, config.epochs):
        model.train()
        train_loader.set_epoch(epoch)
        # augmentation and dropout draw from torch's global RNG: seeded per epoch and process, so a resumed
        # run repeats exactly what an uninterrupted one would have done
        torch.manual_seed(config.seed * 100_003 + epoch * 1_009 + accelerator.process_index)
        running, batches = 0.0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not (progress and main),
                   leave=False)
        for images, labels in bar:
            with accelerator.accumulate(model):
                loss = F.cross_entropy(logits_of(model(images)).float(), labels,
                                       label_smoothing=config.label_smoothing)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    mask_gradients_(masked)      # THE MASK RULE: pruned weights get no update, no optimizer state
                    if config.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if accelerator.sync_gradients:
                if not accelerator.optimizer_step_was_skipped:   # fp16 overflow: the step did not happen
                    scheduler.step()
                step += 1
            value = float(loss.detach())
            running += value
            batches += 1
            bar.set_postfix(loss=f"{running / batches:.3f}")
            _stop_if_diverged(accelerator, guard.check(value), step, epoch, config, state_dir, history)
        _stop_if_diverged(accelerator, guard.check_epoch(running / max(1, batches)), step, epoch, config,
                          state_dir, history)
        check_masks_hold(unwrapped, masks, optimizer, when=f"after epoch {epoch + 1}")
        due = (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs   # the last epoch always
        metrics = evaluate_now(epoch) if due else {}
        entry = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
                 "train_loss": _mean_across(accelerator, running / max(1, batches)), **metrics}
        history.append(entry)
        log(f"epoch {epoch + 1}/{config.epochs}  step {step}  lr {entry['lr']:.3g}  train loss {entry['train_loss']:.4f}"
            + (f"  eval loss {entry['eval_loss']:.4f}  eval accuracy {entry['eval_accuracy']:.2%}" if metrics else ""))
        _save_training_state(accelerator, state_dir, {
            "epoch": epoch + 1, "step": step, "history": history, "masks_sha256": digest,
            "processes": accelerator.num_processes, "config": config.to_dict()})

    if history and "eval_accuracy" not in history[-1]:
        # resumed with --epochs equal to the epochs done, after an epoch that `eval_every` left unevaluated:
        # the saved model is still recalibrated and judged
        history[-1].update(evaluate_now(len(history) - 1))
    check_masks_hold(unwrapped, masks, optimizer, when="before saving")
    rank_digests = _check_ranks_agree(accelerator, unwrapped, masks)
    last = history[-1] if history else {}
    finetuned = FinetuneRecord(
        recipe=config.to_dict(), command=command, task=task.name, dataset=task.dataset_id,
        train_split=task.train_split, eval_split=splits.eval_split, train_examples=len(train_set),
        eval_examples=len(eval_set), from_scratch=config.from_scratch, processes=accelerator.num_processes,
        masks_sha256_per_process=rank_digests, steps=step, history=history, eval_accuracy=last.get("eval_accuracy"),
        eval_loss=last.get("eval_loss"), time_s=round(time.perf_counter() - started, 1))
    probe = record.probe.sparse if record.probe else None
    if probe is not None and finetuned.eval_accuracy is not None and finetuned.eval_accuracy < probe:
        finetuned.below_probe = True
        log(f"warning: fine-tuning ended at {finetuned.eval_accuracy:.2%} eval accuracy, below the {probe:.2%} of "
            f"the pruning-time linear probe ({record.probe.eval_examples} images); try a lower --lr, "
            "--warmup-epochs, more --epochs or more --train-examples")
    final = accelerator.unwrap_model(model, keep_fp32_wrapper=False)   # without Accelerate's autocast wrapper
    final.to(memory_format=torch.contiguous_format)   # the saved tensors in the usual layout
    result = FinetuneResult(final, masks, history, dataclasses.replace(record, finetune=finetuned))
    if main:
        loaded.model = final.eval()
        if state_dir != final_state_dir:   # the new run's state replaces the old one, then save_sparse carries it
            if final_state_dir.exists():
                os.replace(final_state_dir, output / f".{checkpoint.STATE_DIR}.replaced")
            os.replace(state_dir, final_state_dir)
            state_dir = final_state_dir
        result.output = checkpoint.save_with_card(loaded, {n: m.cpu() for n, m in masks.items()}, result.provenance,
                                                  output, overwrite=True)
        log(f"saved {result.output} (resume state in {state_dir})")
        if config.push_to_hub:
            from . import hub

            result.pushed_to = hub.push_folder(result.output, config.push_to_hub, private=config.private)
            log(f"pushed to {result.pushed_to}")
    accelerator.wait_for_everyone()
    return result


def _calibration_batches(splits, task, preprocess, config: FinetuneConfig, batch_size: int) -> list[Tensor]:
    """Image batches for BatchNorm recalibration: `calibration_examples` train rows drawn with the run's seed,
    with the eval-time preprocessing (the statistics are those eval mode will meet). Every process gets the
    same images, so every process computes the same statistics."""
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(splits.train_indices), generator=generator)[:config.calibration_examples]
    rows = [splits.train_indices[i] for i in sorted(order.tolist())]
    dataset = data.ImageDataset(splits.train, task, rows, splits.train_codes, preprocess)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return list(images.split(batch_size))


def _same_batchnorm_everywhere(accelerator, model: nn.Module) -> None:
    """Processes may differ in the last bits of their statistics (GPU reductions): take the main process's."""
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast

        for layer in batchnorm_layers(model).values():
            for buffer in (layer.running_mean, layer.running_var):
                buffer.copy_(broadcast(buffer.clone(), from_process=0))


def _stop_if_diverged(accelerator, reason: str | None, step: int, epoch: int, config: FinetuneConfig,
                      state_dir: Path, history: list[dict]) -> None:
    """Raise `TrainingDiverged` on every process if any process saw divergence (`reason` not None)."""
    if accelerator.num_processes > 1:   # all processes stop together, or the others would wait for ever
        flag = torch.tensor([0.0 if reason is None else 1.0], device=accelerator.device)
        if float(accelerator.reduce(flag, "sum")) == 0:
            return
        reason = reason or "another process's loss diverged"
    elif reason is None:
        return
    if state_dir.name == OVERWRITE_STATE_DIR:   # an --overwrite run replaces the old one only when it completes
        shutil.rmtree(state_dir, ignore_errors=True)
        kept = f"{str(state_dir.parent)!r} is unchanged"
    else:
        kept = (f"the last good state (after epoch {history[-1]['epoch']}) stays in {str(state_dir)!r}" if history
                else "no epoch completed, so nothing was saved")
    raise TrainingDiverged(f"training diverged at step {step + 1} (epoch {epoch + 1}): {reason}; {kept}. Lower --lr "
                           f"(now {config.lr:g}), add --warmup-epochs 1 or --max-grad-norm 1, and start over with "
                           "--overwrite")


def evaluate(model: nn.Module, loader, accelerator) -> dict:
    """Top-1 accuracy and mean cross-entropy over the whole eval set (gathered over processes)."""
    model.eval()
    correct, loss, count = 0, 0.0, 0
    with torch.no_grad():
        for images, labels in loader:
            logits = logits_of(model(images)).float()
            losses = F.cross_entropy(logits, labels, reduction="none")
            predicted, labels, losses = accelerator.gather_for_metrics((logits.argmax(-1), labels, losses))
            correct += int((predicted == labels).sum())
            loss += float(losses.double().sum())
            count += labels.numel()
    return {"eval_loss": loss / max(1, count), "eval_accuracy": correct / max(1, count), "eval_count": count}


def _mean_across(accelerator, value: float) -> float:
    return float(accelerator.reduce(torch.tensor(value, device=accelerator.device, dtype=torch.float64), "mean"))


def _per_device_batch(config: FinetuneConfig, processes: int) -> int:
    parts = processes * config.gradient_accumulation_steps
    if config.batch_size % parts:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by {processes} process(es) x "
                          f"{config.gradient_accumulation_steps} accumulation step(s); choose a multiple of {parts}")
    return config.batch_size // parts


def _task_of(config: FinetuneConfig, record: CheckpointRecord) -> data.Task:
    """The task asked for, else the one the checkpoint was pruned on (its record)."""
    task, dataset = config.task, config.dataset
    columns = (config.image_column, config.label_column, config.split)
    if task is None and dataset is None:
        if record.task in data.TASKS:
            task = record.task
        elif record.dataset:
            dataset = record.dataset
        else:
            raise ConfigError("the checkpoint does not say which data it was pruned on; pass --task or --dataset")
        # and with the columns and split it was read with, unless given
        columns = tuple(given if given is not None else getattr(record, key)
                        for given, key in zip(columns, ("image_column", "label_column", "split")))
    return data.resolve_task(task, dataset, *columns, config.eval_split)


def _check_labels(loaded, task_names: list[str], example: Tensor, source: str) -> None:
    """The checkpoint's head must predict the task's classes (in the same order)."""
    _, module = head.head_module(loaded.model, example)
    outputs = getattr(module, "out_features", None) or getattr(module, "out_channels", None)
    if head.labels_differ(loaded.label_names, outputs, task_names):
        have = (loaded.label_names or [f"{outputs} unnamed classes"])[:4]
        raise DataError(f"the task's {len(task_names)} labels ({', '.join(task_names[:4])}, ...) do not match the "
                        f"head of {source} ({', '.join(have)}, ...); prune on this task first (hf-px prune ... "
                        "--task/--dataset), which replaces the head")


def _recover_interrupted_swap(state_dir: Path) -> None:
    """A state save interrupted between its two renames leaves the complete state under a hidden name: the
    new one (`.resume.tmp`, if it has its progress file) or the previous one (`.resume.old`)."""
    if state_dir.exists():
        return
    for name in (f".{state_dir.name}.tmp", f".{state_dir.name}.old"):
        candidate = state_dir.parent / name
        if (candidate / checkpoint.PROGRESS_FILE).is_file():
            os.replace(candidate, state_dir)
            return


def _check_output_for_training(output: Path, state_dir: Path, config: FinetuneConfig) -> None:
    _recover_interrupted_swap(state_dir)
    saved = checkpoint.has_training_state(output)
    if config.resume:
        if not saved:
            raise ConfigError(f"--resume: {str(state_dir)!r} holds no complete training state; run without --resume")
        return
    if output.exists() and not config.overwrite:
        hint = "pass --resume to continue its training, " if saved else ""
        raise ConfigError(f"output {str(output)!r} exists; {hint}pass --overwrite to start over, or choose another folder")
    if output.exists():
        checkpoint.check_output(output, overwrite=True)     # only ever replace an hf_px folder
        shutil.rmtree(output / OVERWRITE_STATE_DIR, ignore_errors=True)   # left by an interrupted --overwrite


def _save_training_state(accelerator, state_dir: Path, progress: dict) -> None:
    """Accelerate's state (model, optimizer, schedule, RNG) plus `progress.json`, written beside the old state and
    swapped in only when complete: an interrupted save leaves the previous state intact."""
    scratch = state_dir.parent / f".{state_dir.name}.tmp"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(scratch))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (scratch / checkpoint.PROGRESS_FILE).write_text(json.dumps(progress, indent=2) + "\n")
            checkpoint._apply_umask(scratch)   # safetensors writes 0600 files whatever the umask
            aside = state_dir.parent / f".{state_dir.name}.old"
            shutil.rmtree(aside, ignore_errors=True)
            if state_dir.exists():
                os.replace(state_dir, aside)
            os.replace(scratch, state_dir)
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        if accelerator.is_main_process and state_dir.exists():   # else scratch may be the only complete state
            shutil.rmtree(scratch, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_training_state(accelerator, state_dir: Path, config: FinetuneConfig, digest: str):
    try:
        progress = json.loads((state_dir / checkpoint.PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{str(state_dir / checkpoint.PROGRESS_FILE)!r} is unreadable ({error}); start over with --overwrite"
                          ) from None
    if progress.get("masks_sha256") != digest:
        raise ModelError(f"the resume state in {str(state_dir)!r} was trained with other masks than {config.model!r}; "
                         "resume with the same --model, or start over with --overwrite")
    before = progress.get("config") or {}
    changed = sorted(k for k, v in config.to_dict().items() if k not in _RESUMABLE and before.get(k, v) != v)
    if changed:
        raise ConfigError(f"--resume with a different {', '.join(changed)} than the saved run "
                          f"({', '.join(f'{k}={before.get(k)!r}' for k in changed)}); use the same recipe and flags, "
                          "or start over with --overwrite")
    done, planned = int(progress["epoch"]), int(before.get("epochs") or config.epochs)
    if config.epochs < done:
        raise ConfigError(f"--epochs {config.epochs} but the saved run has already trained {done} epochs; "
                          f"pass --epochs {done} or more")
    if config.schedule == "cosine" and config.epochs != planned:
        raise ConfigError(f"the cosine schedule was laid out over {planned} epochs; resuming with --epochs "
                          f"{config.epochs} would restart its decay. Resume with --epochs {planned}, or start over")
    if progress.get("processes") != accelerator.num_processes:
        raise ConfigError(f"the resume state was written by {progress.get('processes')} process(es), this run has "
                          f"{accelerator.num_processes}; resume with the same number")
    accelerator.load_state(str(state_dir))
    return int(progress["epoch"]), int(progress["step"]), list(progress.get("history", []))


def _check_ranks_agree(accelerator, model: nn.Module, masks: dict[str, Tensor]) -> list[str]:
    """Every process must end with the same masks and the same weights (DDP keeps them in sync); returns
    each process's masks digest (first 15 hex digits), for the provenance."""
    weights = hashlib.sha256()
    for name, param in model.named_parameters():
        weights.update(param.detach().float().cpu().numpy().tobytes())
    mine = torch.tensor([[int(masks_digest(masks)[:15], 16), int(weights.hexdigest()[:15], 16)]],
                        dtype=torch.int64, device=accelerator.device)
    everyone = accelerator.gather(mine) if accelerator.num_processes > 1 else mine
    if not bool((everyone == everyone[0]).all()):
        raise MaskViolation("the processes ended with different masks or weights; the run is inconsistent")
    return [f"{int(value):015x}" for value in everyone[:, 0].tolist()]
