"""Prune a Hub/timm/local model on a task's data and save a sparse checkpoint (and/or push it).

Example: hf-px prune google/vit-base-patch16-224 --task cifar100 --sparsity 0.9 --output vit-b-px90-c100
Every flag is also a key of a --config FILE (YAML or JSON: sparsity: 0.9, method_options: {gate_only:
dense}, include: ["*attn*"], ...); a flag overrides the file, and the defaults below apply where neither
sets a key.
"""

import argparse
import shlex

from ..config import PruneConfig, load_config, parse_option
from ..job import run_prune
from .flags import add_config_flags

_METAVARS = {"task": "NAME", "dataset": "ID_OR_PATH", "image_column": "COLUMN", "label_column": "COLUMN",
             "split": "NAME", "eval_split": "NAME", "method": "NAME", "sparsity": "FRACTION", "rounds": "N",
             "min_layer_density": "FRACTION", "min_channel_density": "FRACTION", "device": "DEVICE",
             "revision": "REV", "include": "PATTERN", "exclude": "PATTERN", "output": "DIR", "push_to_hub": "REPO"}


def _help() -> dict[str, str]:
    """Each flag's help, in the order `--help` lists them (built when asked: it names the registered methods)."""
    from ..criteria import list_methods
    from ..data import TASKS
    from ..pruning import AUTO_FOR_CNNS, AUTO_FOR_TRANSFORMERS, describe_choice

    return {
        "task": f"a named task: {', '.join(TASKS)}",
        "dataset": "a Hub dataset id, a save_to_disk folder or an image folder (instead of --task)",
        "image_column": "the dataset's image column (default: the task's, or 'image')",
        "label_column": "the dataset's label column (default: the task's, or 'label')",
        "split": "split of the scoring sample (default: train)",
        "eval_split": "split of the held-out probe sample (default: the task's eval split)",
        "method": f"auto (default), {', '.join(list_methods())}. auto: {describe_choice(AUTO_FOR_TRANSFORMERS)} for "
                  f"models with softmax attention, {describe_choice(AUTO_FOR_CNNS)} for the rest (what "
                  "docs/results.md supports), keeping every "
                  "target tensor at >= a tenth of the target density",
        "sparsity": "fraction of target weights removed",
        "rounds": "pruning rounds (default: the method's, 100 for px, or auto's)",
        "min_layer_density": "every target tensor keeps at least this fraction of its weights (default: 0, or a "
                             "tenth of 1 - sparsity with --method auto)",
        "min_channel_density": "every output channel of every target tensor keeps at least this fraction of its "
                               "weights, and at least one (default 0: off), so that no channel leaves the ticket",
        "allow_empty_layers": "save a result with target tensors at zero density (default: an error)",
        "examples_per_class": "scoring images per class (default 10, or as many as the smallest class has)",
        "eval_examples": "held-out images for the probe accuracy (default {default}, or all there are; 0: none)",
        "batch_size": "images per forward pass",
        "device": "cpu, cuda, cuda:N or auto (default: cuda if available)",
        "seed": "draws the scoring sample and seeds the method",
        "revision": "branch, tag or commit of the model repo (Hub models only)",
        "include": "only prune weights matching this glob or dotted suffix (repeatable)",
        "exclude": "never prune weights matching this glob or dotted suffix (repeatable)",
        "head": "auto: replace and fit a ridge probe head when the task's labels differ (default)",
        "recalibrate_bn": "re-estimate the BatchNorm statistics of the pruned model before the head is fitted "
                          "(default on; models without BatchNorm are unaffected)",
        "calibration_examples": "images for the recalibration (default: the scoring sample); more are drawn "
                                "class-balanced from the train split, disjoint from the eval sample",
        "recalibrate_every_round": "also recalibrate between pruning rounds, so later rounds score the pruned "
                                   "network with its own statistics (default off; see docs/results.md)",
        "trust_remote_code": "allow a repo's own modelling code",
        "output": "folder for the sparse checkpoint",
        "overwrite": "replace an existing --output",
        "push_to_hub": "push the checkpoint to this Hub repo (one commit)",
        "private": "create the Hub repo as private",
        "dry_run": "print the targets, counts and plan; touch nothing",
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=argparse.SUPPRESS,
                        help="Hub id (org/name), timm/NAME, hf-hub:ID, a timm name, or a local folder")
    parser.add_argument("--config", metavar="FILE",
                        help="a YAML or JSON file of these settings (keys: the flags with underscores); flags "
                             "override its keys")
    add_config_flags(parser, PruneConfig, _help(), choices={"head": ("auto", "ridge", "keep")}, metavars=_METAVARS,
                     repeatable=("include", "exclude"))
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a method option, repeatable, e.g. --option gate_only=dense (method_options in a "
                             "--config file)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> PruneConfig:
    """The config of the flags given, on top of the `--config` file if any."""
    flags = {k: v for k, v in vars(args).items() if k not in ("verb", "config", "option", "no_progress")}
    # --task and --dataset name the data together: one given on the command line replaces the file's other
    if "dataset" in flags:
        flags.setdefault("task", None)
    if "task" in flags:
        flags.setdefault("dataset", None)
    if args.option:   # added to the file's method_options, key by key
        flags["method_options"] = dict(parse_option(option) for option in args.option)
    return load_config(args.config, flags) if args.config else PruneConfig(**flags)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    config = config_from_args(args)
    run_prune(config, command="hf-px " + shlex.join(argv), progress=not args.no_progress)
    return 0
