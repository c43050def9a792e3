"""`hf-px VERB ...`: a thin layer of verbs (one module each) over the library.

Errors a user can cause print one line and exit non-zero; set HF_PX_DEBUG=1 for the traceback.
"""

import argparse
import os
import sys

from ..errors import HfPxError
from . import finetune, inspect, prune, push

VERBS = {"prune": prune, "finetune": finetune, "inspect": inspect, "push": push}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Flag help wrapped at spaces only, so that a method name such as px-exact is never split at its hyphen."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="hf-px", description="Find lottery tickets in vision models with PX.")
    parser.add_argument("--version", action="version", version=f"hf-px {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="{" + ",".join(VERBS) + "}")
    for name, module in VERBS.items():
        module.add_arguments(verbs.add_parser(name, help=module.__doc__.splitlines()[0],
                                              description=module.__doc__,
                                              formatter_class=HelpFormatter))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        return VERBS[args.verb].run(args, argv) or 0
    except HfPxError as error:
        if os.environ.get("HF_PX_DEBUG"):
            raise
        print(f"hf-px {args.verb}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hf-px {args.verb}: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
