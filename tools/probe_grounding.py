"""Grounding probe of a frozen LLaVA-style LMM: how often a phrase's attention peak falls on its object.

    python tools/probe_grounding.py --lmm DIR [--config configs/flmm_toy.yaml]
        [--split refcoco:val[,refcoco:testA,...]] [--capture hooked|eager] [--batch-size 16]
        [--out results.json] [key=value ...]

The data (and the synthetic world, generated on first use) come from the config's data section; the LMM
goes through the config's adapter (`LlavaAdapter` for the toy models), exactly as in training. Prints the
pointing accuracy (all-sentences protocol), the chance level, and both per expression kind and per layer.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from torch.utils.data import ConcatDataset

from flmm.cli import output_file, parse_with_overrides, positive_int, split_list
from flmm.config import load_config
from flmm.data.splits import build_split_dataset
from flmm.data.synthetic_setup import ensure_synthetic_world
from flmm.engine.build import build_adapter, preflight
from flmm.errors import FlmmError
from flmm.toy.probe import probe_grounding


def probe(args: argparse.Namespace) -> dict:
    """Run the probe the command line asks for and return its results."""
    overrides = [*args.overrides, f"model.lmm.model={args.lmm}", f"model.lmm.capture={args.capture}"]
    cfg = load_config(args.config, overrides)
    ensure_synthetic_world(cfg.data)
    splits = args.split
    preflight(cfg, splits)
    adapter = build_adapter(cfg)
    transform = adapter.image_transform()
    dataset = ConcatDataset([build_split_dataset(cfg.data, s, "all-sentences", transform) for s in splits])
    return probe_grounding(adapter, dataset, args.batch_size, progress=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lmm", required=True, help="LMM checkpoint folder (or hub id)")
    parser.add_argument("--config", default="configs/flmm_toy.yaml", help="config giving data and adapter")
    parser.add_argument(
        "--split",
        type=split_list,
        default="refcoco:val",
        help="RefCOCO-format split(s), DATASET:SPLIT[,DATASET:SPLIT...]",
    )
    parser.add_argument("--capture", choices=["hooked", "eager"], default="hooked")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parse_with_overrides(parser, argv, "data.root=/data")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.out is not None:
            output_file(args.out)  # before the probe, so that its results are not lost
        results = probe(args)
    except FlmmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kinds = ", ".join(f"{k} {v['pointing']:.3f} (n={v['n']})" for k, v in results["by_kind"].items())
    print(
        f"pointing {results['pointing']:.3f} over {results['n']} phrases of {','.join(args.split)} "
        f"(chance {results['chance']:.3f})"
    )
    print(f"by kind: {kinds}")
    print("by layer: " + ", ".join(f"L{i} {v:.3f}" for i, v in enumerate(results["by_layer"])))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
