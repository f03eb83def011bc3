"""Command lines of the tools: argparse options plus `key=value` config overrides anywhere on the line.

`python tools/train.py CONFIG --resume X train.epochs=2` and `... train.epochs=2 --resume X` mean the same:
every argument that looks like `dotted.key=value` and is not the value of an option is an override, in
the order given. Everything else goes to argparse as usual.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

# `data.root=/x`, `model.lmm.model=llava-hf/...`, `data.train_splits=[refcoco:train]`, `seed=3`.
OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")


def _takes_value(parser: argparse.ArgumentParser, token: str) -> bool:
    """Whether `token` is an option of `parser` that consumes the next argument (`--out DIR`)."""
    if not token.startswith("-") or "=" in token:
        return False
    for action in parser._actions:  # argparse has no public lookup of an option's arity
        if token in action.option_strings:
            return action.nargs != 0
    return False


def split_overrides(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`argv` -> (arguments for argparse, `key=value` overrides), both in their original order."""
    rest, overrides = [], []
    value_expected = False
    for token in argv:
        if not value_expected and OVERRIDE.match(token):
            overrides.append(token)
        else:
            rest.append(token)
        value_expected = _takes_value(parser, token)
    return rest, overrides


def parse_with_overrides(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, example: str = "data.root=/datasets"
) -> argparse.Namespace:
    """Parse `argv` (default `sys.argv[1:]`); the overrides land in `args.overrides` (a list).

    `--help` says that overrides are taken from anywhere on the line, with `example`.
    """
    note = f"key=value arguments anywhere on the line override the config, e.g. {example}"
    parser.epilog = f"{parser.epilog}\n\n{note}" if parser.epilog else note
    rest, overrides = split_overrides(parser, sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(rest)
    args.overrides = overrides
    return args


def add_attend_arguments(parser: argparse.ArgumentParser) -> None:
    """`--variant` and `--heads` of attend-and-segment (`flmm.engine.attend`), shared by the tools that run
    it; None leaves the config's `attend` section as it is."""
    from flmm.engine.attend import HEAD_CHOICES, VARIANTS

    parser.add_argument(
        "--variant", choices=VARIANTS, default=None, help="attend-and-segment: flmm or the authors' code"
    )
    parser.add_argument(
        "--heads", choices=HEAD_CHOICES, default=None, help="attend-and-segment, variant authors: heads kept"
    )
