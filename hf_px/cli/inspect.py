"""Print the summary of a sparse checkpoint: base model, method, sparsity, per-layer density.

Example: hf-px inspect me/r50-px98-c10   (a Hub repo or a local folder); --json for the full record.
The checkpoint is verified first (hf_px.json field types, config.json, masked-out weights zero).
"""

import argparse
import json

from ..checkpoint import inspect_checkpoint, summarize
from ..masks import global_density, layer_densities


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a Hub repo id or a local folder written by hf-px prune")
    parser.add_argument("--revision", help="branch, tag or commit of the repo (Hub repos only)")
    parser.add_argument("--json", action="store_true",
                        help="print the provenance (hf_px.json) and the per-layer densities as one JSON object")


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if not args.json:
        print(summarize(args.checkpoint, revision=args.revision))
        return 0
    record, masks = inspect_checkpoint(args.checkpoint, revision=args.revision)
    densities = layer_densities(masks)
    print(json.dumps({"checkpoint": str(args.checkpoint), "provenance": record.to_dict(), "layer_densities": densities,
                      "global_density": global_density(masks),
                      "zero_density_layers": [name for name, density in densities.items() if density == 0.0]},
                     indent=2, sort_keys=True))
    return 0
