"""Prune a Hub/timm/local model on a task's data and save a sparse checkpoint (and/or push it).

Example: hf-px prune google/vit-base-patch16-224 --task cifar100 --sparsity 0.9 --output vit-b-px90-c100
"""

import argparse
import shlex

from ..config import PruneConfig, parse_option
from ..job import run_prune


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..criteria import list_methods
    from ..data import TASKS

    parser.add_argument("model", help="Hub id (org/name), timm/NAME, hf-hub:ID, a timm name, or a local folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", metavar="NAME", help=f"a named task: {', '.join(TASKS)}")
    source.add_argument("--dataset", metavar="ID_OR_PATH", help="a Hub dataset id, a save_to_disk folder or an image folder")
    parser.add_argument("--image-column", metavar="COLUMN", help="the dataset's image column (default: the task's, or 'image')")
    parser.add_argument("--label-column", metavar="COLUMN", help="the dataset's label column (default: the task's, or 'label')")
    parser.add_argument("--split", metavar="NAME", help="split of the scoring sample (default: train)")
    parser.add_argument("--eval-split", metavar="NAME", help="split of the held-out probe sample (default: the task's eval split)")
    parser.add_argument("--method", default="auto", metavar="NAME",
                        help=f"auto (default), {', '.join(list_methods())}. auto: px-exact for models with "
                             "softmax attention, magnitude for the rest (what docs/results.md supports), keeping "
                             "every target tensor at >= a tenth of the target density")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a method option, repeatable, e.g. --option gate_only=dense")
    parser.add_argument("--sparsity", type=float, default=0.9, metavar="FRACTION", help="fraction of target weights removed (default 0.9)")
    parser.add_argument("--rounds", type=int, metavar="N", help="pruning rounds (default: the method's, 100 for px)")
    parser.add_argument("--min-layer-density", type=float, metavar="FRACTION",
                        help="every target tensor keeps at least this fraction of its weights (default: 0, or a "
                             "tenth of 1 - sparsity with --method auto)")
    parser.add_argument("--allow-empty-layers", action="store_true",
                        help="save a result with target tensors at zero density (default: an error)")
    parser.add_argument("--examples-per-class", type=int, default=10, metavar="N", help="scoring images per class (default 10)")
    parser.add_argument("--eval-examples", type=int, default=200, metavar="N",
                        help="held-out images for the probe accuracy (default 200, or all there are; 0: none)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per forward pass (default 32)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="draws the scoring sample and seeds the method (default 0)")
    parser.add_argument("--revision", metavar="REV", help="branch, tag or commit of the model repo (Hub models only)")
    parser.add_argument("--include", action="append", default=[], metavar="PATTERN",
                        help="only prune weights matching this glob or dotted suffix (repeatable)")
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="never prune weights matching this glob or dotted suffix (repeatable)")
    parser.add_argument("--head", default="auto", choices=["auto", "ridge", "keep"],
                        help="auto: replace and fit a ridge probe head when the task's labels differ (default)")
    parser.add_argument("--recalibrate-bn", action=argparse.BooleanOptionalAction, default=True,
                        help="re-estimate the BatchNorm statistics of the pruned model before the head is fitted "
                             "(default on; models without BatchNorm are unaffected)")
    parser.add_argument("--calibration-examples", type=int, metavar="N",
                        help="images for the recalibration (default: the scoring sample); more are drawn "
                             "class-balanced from the train split, disjoint from the eval sample")
    parser.add_argument("--recalibrate-every-round", action="store_true",
                        help="also recalibrate between pruning rounds, so later rounds score the pruned network "
                             "with its own statistics (default off; see docs/results.md)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a repo's own modelling code")
    parser.add_argument("--output", metavar="DIR", help="folder for the sparse checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--push-to-hub", metavar="REPO", help="push the checkpoint to this Hub repo (one commit)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--dry-run", action="store_true", help="print the targets, counts and plan; touch nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> PruneConfig:
    return PruneConfig(
        model=args.model, task=args.task, dataset=args.dataset, image_column=args.image_column,
        label_column=args.label_column, split=args.split, eval_split=args.eval_split, method=args.method,
        method_options=dict(parse_option(o) for o in args.option), sparsity=args.sparsity, rounds=args.rounds,
        min_layer_density=args.min_layer_density, allow_empty_layers=args.allow_empty_layers,
        examples_per_class=args.examples_per_class, eval_examples=args.eval_examples, batch_size=args.batch_size,
        device=args.device, seed=args.seed, revision=args.revision, include=args.include, exclude=args.exclude,
        head=args.head, recalibrate_bn=args.recalibrate_bn, calibration_examples=args.calibration_examples,
        recalibrate_every_round=args.recalibrate_every_round, trust_remote_code=args.trust_remote_code, output=args.output, overwrite=args.overwrite,
        push_to_hub=args.push_to_hub, private=args.private, dry_run=args.dry_run,
    )


def run(args: argparse.Namespace, argv: list[str]) -> int:
    config = config_from_args(args)
    run_prune(config, command="hf-px " + shlex.join(argv), progress=not args.no_progress)
    return 0
