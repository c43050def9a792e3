"""Print the summary of a sparse checkpoint: base model, method, sparsity, per-layer density.

Example: hf-px inspect me/r50-px98-c10   (a Hub repo or a local folder)
"""

import argparse

from ..checkpoint import summarize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a Hub repo id or a local folder written by hf-px prune")
    parser.add_argument("--revision", help="branch, tag or commit of the repo")


def run(args: argparse.Namespace, argv: list[str]) -> int:
    print(summarize(args.checkpoint, revision=args.revision))
    return 0
