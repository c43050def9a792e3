"""Push a sparse checkpoint folder to the Hub in one commit.

Example: hf-px push vit-b-px90-c100 me/vit-b-px90-c100 [--private]
"""

import argparse

from ..hub import push_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a folder written by hf-px prune --output")
    parser.add_argument("repo", help="the Hub repo id to create or update, e.g. me/vit-b-px90-c100")
    parser.add_argument("--private", action="store_true", help="create the repo as private")


def run(args: argparse.Namespace, argv: list[str]) -> int:
    print(push_folder(args.folder, args.repo, private=args.private))
    return 0
