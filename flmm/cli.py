"""Command lines of the tools: argparse options plus `key=value` config overrides anywhere on the line.

`python tools/train.py CONFIG --resume X train.epochs=2` and `... train.epochs=2 --resume X` mean the same:
every argument that looks like `dotted.key=value` and is not the value of an option is an override, in
the order given. Everything else goes to argparse as usual.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from flmm.errors import ConfigError

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


def output_folder(path: str | Path, what: str = "--out") -> Path:
    """`path` as a Path when it is a folder or one can be created there (nothing is created); ConfigError
    naming `what` (the option, or "the default output folder") otherwise, so a tool refuses it before its
    work, not when it writes the results."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path}: is a file; expected a folder (an existing one, or one to create)")
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{what} {path}: {parent} is a file, so the folder cannot be created there")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {parent} is not writable")
    return path


def output_file(path: str | Path, what: str = "--out") -> Path:
    """`path` as a Path when a file can be written there (it is no folder and its folder is one or can be
    created); ConfigError naming `what` otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path}: is a folder; expected a file path, e.g. {path / 'results.json'}")
    output_folder(path.parent, f"{what} {path}: its folder")
    return path


def _bounded(text: str, cast: type, fits, expected: str):
    """argparse type body: `text` as `cast`, refused with "expected `expected`" unless `fits(value)`."""
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not fits(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in (0, 1], e.g. the fraction of attention heads kept (0.5 keeps half)."""
    return _bounded(text, float, lambda v: 0 < v <= 1, "a fraction in (0, 1]")


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1, e.g. a token count."""
    return _bounded(text, int, lambda v: v >= 1, "an integer of at least 1")


def split_list(text: str) -> list[str]:
    """argparse type: comma-separated DATASET:SPLIT names as a list, at least one (blanks between commas
    are dropped)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(
            f"expected one or more comma-separated DATASET:SPLIT names (e.g. refcoco:val), got {text!r}"
        )
    return names


def device_name(text: str) -> str:
    """argparse type: a torch device this machine has (cpu, cuda, cuda:N, mps), as given."""
    import torch  # only the tools that take --device load torch anyway

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has no CUDA device; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text
