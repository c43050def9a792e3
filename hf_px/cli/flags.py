"""Command-line flags generated from a config dataclass: one per field, dashes for underscores.

Every flag defaults to "not given" (`argparse.SUPPRESS`), so that a recipe or `--config` file's value stands
unless a flag overrides it, and the dataclass's defaults apply where neither sets a key: they are written
once, in the dataclass, and shown in the help from there.
"""

import argparse
import dataclasses
import typing


def add_config_flags(parser: argparse.ArgumentParser, config: type, help: dict[str, str], *,
                     choices: dict | None = None, metavars: dict | None = None, repeatable: tuple = ()) -> None:
    """A flag for each field of `config` named in `help`, in `help`'s order.

    A help text gets "(default X)" from the field's default, unless it places it itself with `{default}` or
    already says what the default is; a bool field gives `--x/--no-x`; a list field takes several values
    (`--milestones 80 120`), or one value a flag, repeated (`--include A --include B`) if it is in
    `repeatable`.
    """
    choices, metavars = choices or {}, metavars or {}
    hints = typing.get_type_hints(config)
    fields = {item.name: item for item in dataclasses.fields(config)}
    for name, text in help.items():
        item, kind = fields[name], hints[name]
        flag = "--" + name.replace("_", "-")
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        if default is not None and default is not dataclasses.MISSING and default != []:
            shown = ("off" if default is False else "on" if default is True
                     else " ".join(map(str, default)) if isinstance(default, list) else str(default))
            text = text.replace("{default}", shown) if "{default}" in text else (
                text if "default" in text else f"{text} (default {shown})")
        base = kind if typing.get_origin(kind) is list else next(   # X | None -> X
            (t for t in typing.get_args(kind) if t is not type(None)), kind)
        if base is bool:   # --from-scratch / --no-from-scratch: a file's true can be turned off too
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        elif typing.get_origin(base) is list:
            many = {"action": "append"} if name in repeatable else {"nargs": "+"}
            parser.add_argument(flag, type=typing.get_args(base)[0], default=argparse.SUPPRESS, help=text,
                                metavar=metavars.get(name, "N"), **many)
        else:
            parser.add_argument(flag, type=base, default=argparse.SUPPRESS, help=text, choices=choices.get(name),
                                metavar=None if name in choices else metavars.get(name, "N"))
