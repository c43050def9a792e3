"""Fine-tune a sparse checkpoint on its task with Accelerate, keeping its masks; save (and push) the result.

Example: hf-px finetune recipes/vit-base-cifar100-px.yaml --model vit-b-px90-c100 --output vit-b-px90-c100-ft
Under several processes: accelerate launch --num_processes 8 -m hf_px finetune RECIPE ...
Every recipe key is also a flag (--lr 0.05, --epochs 3, --precision bf16, --milestones 80 120, ...); a flag
overrides the recipe, and the defaults below apply where neither sets a key.
"""

import argparse
import shlex
import sys
from pathlib import Path

from ..checkpoint import STATE_DIR, has_training_state
from ..data import TASKS
from ..finetune import (
    AUGMENTATIONS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    FinetuneConfig,
    load_recipe,
    run_finetune,
    shipped_recipes,
)
from .flags import add_config_flags

_HELP = {
    "model": "the sparse checkpoint: an `hf-px prune --output` folder or a Hub repo",
    "revision": "branch, tag or commit of --model (Hub repos only)",
    "task": f"a named task: {', '.join(TASKS)} (default: the one the checkpoint was pruned on)",
    "dataset": "a Hub dataset id, a save_to_disk folder or an image folder (instead of --task)",
    "image_column": "the dataset's image column (default: the task's, or 'image')",
    "label_column": "the dataset's label column (default: the task's, or 'label')",
    "split": "the train split (default: the task's)",
    "eval_split": "the eval split (default: the task's, else rows held out of train)",
    "output": "folder for the fine-tuned checkpoint; its resume/ subfolder holds the training state",
    "optimizer": "the optimizer (required in the recipe)",
    "lr": "peak learning rate (required in the recipe)",
    "epochs": "epochs to train (required in the recipe)",
    "batch_size": "effective batch of one optimizer step, over all processes and accumulation steps (required)",
    "momentum": "SGD momentum",
    "nesterov": "SGD with Nesterov momentum",
    "betas": "AdamW betas, two numbers",
    "weight_decay": "weight decay of every parameter",
    "schedule": "learning-rate schedule after the warm-up: constant, step (x gamma at each milestone) or cosine",
    "milestones": "epochs at which the step schedule multiplies the lr by gamma",
    "gamma": "factor of the step schedule",
    "warmup_epochs": "linear warm-up from 0, in epochs (may be fractional)",
    "label_smoothing": "label smoothing of the cross-entropy, in [0, 1)",
    "max_grad_norm": "clip the gradient norm to this (default: no clipping)",
    "gradient_accumulation_steps": "micro-batches per optimizer step",
    "precision": "no (fp32), bf16 (autocast; also on CPU) or fp16 (GPU only)",
    "augmentation": "standard: random crop (padding 4, or resized crop for large images) and flip; none",
    "from_scratch": "re-initialise every weight before training, keeping the masks",
    "eval_every": "evaluate every N epochs (with the BatchNorm recalibration before it); the last epoch always",
    "channels_last": "train a model with 2-d convolutions in channels-last memory layout (faster; same values)",
    "recalibrate_bn": "re-estimate BatchNorm statistics with the current weights before each evaluation and the "
                      "save (precise BatchNorm; models without BatchNorm are unaffected)",
    "calibration_examples": "train images, without augmentation, for that re-estimate",
    "train_examples": "a class-balanced subset of train of at most this size (default: all)",
    "eval_examples": "a class-balanced subset of the eval split of at most this size (default: all); without an "
                     "eval split, held out of train, but never more than half of it (else a tenth)",
    "num_workers": "DataLoader worker processes",
    "seed": "seeds the subsets, the shuffling, augmentation and dropout",
    "device": "auto (a GPU if any), cpu or cuda",
    "resume": "continue the run saved in --output (same recipe; --epochs may grow)",
    "overwrite": "start over in an existing --output; it is replaced only when the new run completes",
    "push_to_hub": "push the result to this Hub repo (one commit; the resume state is not pushed)",
    "private": "create the Hub repo as private",
}
_CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "precision": PRECISIONS, "augmentation": AUGMENTATIONS,
            "device": ("auto", "cpu", "cuda")}
_METAVARS = {"model": "DIR_OR_REPO", "revision": "REV", "task": "NAME", "dataset": "ID_OR_PATH",
             "image_column": "COLUMN", "label_column": "COLUMN", "split": "NAME", "eval_split": "NAME",
             "output": "DIR", "push_to_hub": "REPO", "betas": "BETA", "milestones": "EPOCH", "lr": "LR", "momentum": "M", "weight_decay": "WD",
             "gamma": "G", "warmup_epochs": "EPOCHS", "label_smoothing": "EPS", "max_grad_norm": "NORM"}
# not flags: description and expected, the recipe's documentation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help=f"a recipe YAML file, or the name of a shipped one ({', '.join(shipped_recipes())}); "
                                       "flags override its keys")
    add_config_flags(parser, FinetuneConfig, _HELP, choices=_CHOICES, metavars=_METAVARS)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace, argv: list[str]) -> int:
    overrides = {k: v for k, v in vars(args).items() if k not in ("verb", "recipe", "no_progress")}
    # --task and --dataset name the data together: one given on the command line replaces the recipe's other
    if "dataset" in overrides:
        overrides.setdefault("task", None)
    if "task" in overrides:
        overrides.setdefault("dataset", None)
    config = load_recipe(args.recipe, overrides)
    replacing = bool(config.output and config.overwrite and Path(config.output).expanduser().exists())
    try:
        run_finetune(config, command="hf-px " + shlex.join(argv), progress=not args.no_progress)
    except KeyboardInterrupt:
        output = Path(config.output or "")
        saved = has_training_state(output) if config.output else False
        if replacing:
            print(f"hf-px finetune: interrupted; {output} is unchanged (the earlier checkpoint and its resume state); "
                  "this run is discarded", file=sys.stderr)
            return 130
        print("hf-px finetune: interrupted; " + (
            f"the last complete training state is in {output / STATE_DIR} (continue with --resume)" if saved
            else "no epoch had finished, so there is no training state to resume"), file=sys.stderr)
        return 130
    return 0
