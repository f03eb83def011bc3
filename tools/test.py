"""Evaluate a checkpoint of tools/train.py on RefCOCO/+/g and PNG splits.

    python tools/test.py --ckpt PATH [--splits refcoco:val,refcoco+:testA,...]
        [--protocol all-sentences|first-sentence-concat|both] [--out DIR] [--save-masks] [--overlays N]
        [key=value ...]

The config is the checkpoint's own; `key=value` overrides change it (data.root=/datasets,
data.batch_size=16, train.devices=8). Splits default to data.test_splits, else every RES split and PNG val
found under data.root. RES splits are scored under both protocols by default; PNG under `narrative`.
Several GPUs or nodes: train.devices / train.num_nodes / train.strategy / train.accelerator, as in training.

Writes to DIR (default RUN/eval for RUN/checkpoints/x.ckpt, else eval/ beside the checkpoint):
results.json, results.md, config.yaml, overlays/SPLIT_PROTOCOL/{best,worst}_NN.png (the N best and worst
queries) and, with --save-masks, masks_SPLIT_PROTOCOL.jsonl (every query's predicted mask as COCO RLE).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from flmm.data.synthetic_setup import ensure_synthetic_world
from flmm.engine.build import preflight
from flmm.engine.evaluate import (
    RES_EVAL_PROTOCOLS,
    checkpoint_config,
    evaluate,
    load_checkpoint,
    load_module,
    resolve_splits,
)
from flmm.engine.metrics import format_results_table
from flmm.engine.toy import ensure_toy_models
from flmm.errors import FlmmError

PROTOCOLS = {"both": RES_EVAL_PROTOCOLS, **{p: (p,) for p in RES_EVAL_PROTOCOLS}}


def default_out_dir(checkpoint: Path) -> Path:
    """RUN/eval for a checkpoint in RUN/checkpoints/, else eval/ beside the checkpoint."""
    folder = checkpoint.resolve().parent
    return (folder.parent if folder.name == "checkpoints" else folder) / "eval"


def test(args: argparse.Namespace) -> tuple[dict | None, Path]:
    """Evaluate as the command line asks; return the results (None on ranks other than 0) and the folder."""
    checkpoint = load_checkpoint(args.ckpt)
    cfg = checkpoint_config(checkpoint, args.overrides, source=str(args.ckpt))
    requested = [s.strip() for s in (args.splits or "").split(",") if s.strip()]
    ensure_synthetic_world(cfg.data)
    splits = resolve_splits(cfg, requested)
    ensure_toy_models(cfg)
    preflight(cfg, splits)
    out = args.out or default_out_dir(args.ckpt)
    results = evaluate(
        load_module(checkpoint, cfg),
        cfg,
        splits,
        PROTOCOLS[args.protocol],
        out,
        checkpoint=args.ckpt.resolve(),
        overlays=args.overlays,
        save_masks=args.save_masks,
    )
    return results, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint written by tools/train.py")
    parser.add_argument("--splits", default=None, help="comma-separated DATASET:SPLIT names")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="both", help="RES protocol(s)")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument("--save-masks", action="store_true", help="write every predicted mask as RLE")
    parser.add_argument("--overlays", type=int, default=4, help="best and worst N queries drawn per split")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. data.root=/datasets")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        results, out = test(args)
    except FlmmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if results is not None:
        print(format_results_table(results["splits"]))
        print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
