"""Evaluate a checkpoint of tools/train.py, or training-free attend-and-segment, on RES, PNG, ReasonSeg.

    python tools/test.py --ckpt PATH_OR_HEAD_FOLDER [--splits refcoco:val,refcoco+:testA,reasonseg:val,...]
        [--protocol all-sentences|first-sentence-concat|both] [--out DIR] [--save-masks] [--overlays N]
        [key=value ...]
    python tools/test.py --mode attend-and-segment --config CONFIG [--variant authors|flmm]
        [--heads all|authors] [--top-heads FRACTION] [same options]

The config is the checkpoint's own (or CONFIG's, for attend-and-segment, which uses its LMM and SAM and
trains nothing); `key=value` overrides change it (data.root=/datasets, data.batch_size=16,
train.devices=8). Splits default to data.test_splits, else every RES split, PNG val and ReasonSeg val
found under data.root. RES and ReasonSeg splits are scored under both protocols by default (for ReasonSeg,
`first-sentence-concat` is LISA's protocol: the first query of each image); PNG under `narrative`.
A checkpoint with a keyword selector also reports its token F1 (`selector_token_F1`, precision, recall,
`selector_tokens`) on narrative splits (PNG), whose phrases are a selection of the text's words; RES and
ReasonSeg texts are their phrases alone, so their splits report no selector metric.
A query is grounded as the phrase it is (teacher-forced after the description prompt); with
--answer-first the LMM answers it first (asked for a short phrase) and its answer is grounded, as in
tools/demo.py (ReasonSeg's question -> answer -> mask).
Attend-and-segment: --variant / --heads override the config's `attend` section (flmm.engine.attend);
results.json says what was used under "attend" and reports `pointing` (the percentage of queries whose
point prompt falls inside the target).
--task gcg: grounded conversation generation (`flmm.engine.gcg`) with --ckpt or attend-and-segment: each
image is described (--max-new-tokens, default 64), the description's phrases grounded and scored with
GLaMM's GCG metrics; --splits png:val2017 (the default) or gcg:NAME (GranD-f files, `flmm.data.gcg`);
writes results.json, results.md and predictions/SPLIT/IMAGE.json into DIR (default: the eval folder/gcg).
Several GPUs or nodes: train.devices / train.num_nodes / train.strategy / train.accelerator, as in training.

--ckpt also takes a head folder of tools/export_head.py (or its hub repository id, owner/name).
Writes to DIR (default RUN/eval for RUN/checkpoints/x.ckpt, HEAD_FOLDER/eval, eval/OWNER/NAME for a hub id,
else eval/ beside the checkpoint; OUTPUT_DIR/eval_attend-and-segment for attend-and-segment):
results.json, results.md, config.yaml, overlays/SPLIT_PROTOCOL/{best,worst}_NN.png (the N best and worst
queries) and, with --save-masks, masks_SPLIT_PROTOCOL.jsonl (every query's predicted mask as COCO RLE).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from flmm.cli import (
    add_attend_arguments,
    fraction,
    output_folder,
    parse_with_overrides,
    positive_int,
    split_list,
)
from flmm.config import load_config
from flmm.data.gcg import is_gcg_split
from flmm.data.synthetic_setup import ensure_synthetic_world
from flmm.demo.answer import GenerationSettings
from flmm.demo.pipeline import Demo
from flmm.demo.reason import AnswerThenGround
from flmm.engine.attend import build_attend_and_segment
from flmm.engine.build import preflight
from flmm.engine.evaluate import (
    RES_EVAL_PROTOCOLS,
    checkpoint_config,
    default_out_dir,
    evaluate,
    load_checkpoint,
    load_module,
    resolve_splits,
)
from flmm.engine.gcg import format_gcg_results, run_gcg
from flmm.engine.metrics import format_results_table
from flmm.engine.report import extra_metrics_lines
from flmm.errors import FlmmError
from flmm.lmm.text import SHORT_ANSWER

BUILD_HINT = (
    "A checkpoint's config may name a synthetic world that it would generate itself; tools/test.py writes "
    "it into the config's data.root only with --build-missing."
)
PROTOCOLS = {"both": RES_EVAL_PROTOCOLS, **{p: (p,) for p in RES_EVAL_PROTOCOLS}}
MODES = ("head", "attend-and-segment")
TASKS = ("grounding", "gcg")


def test(args: argparse.Namespace) -> tuple[dict | None, Path]:
    """Evaluate as the command line asks; return the results (None on ranks other than 0) and the folder."""
    gcg = args.task == "gcg"
    task_folder, default = ("gcg" if gcg else ""), "the default output folder"
    # The output folder first: one that cannot be written fails now, not after the evaluation.
    out = None if args.out is None else output_folder(args.out)
    if args.mode == "head":
        out = out or output_folder(default_out_dir(args.ckpt) / task_folder, default)
        checkpoint = load_checkpoint(args.ckpt)
        cfg = checkpoint_config(checkpoint, args.overrides, source=str(args.ckpt))
    else:
        cfg = load_config(args.config, args.overrides)
        out = out or output_folder(
            Path(str(cfg.output_dir)) / "eval_attend-and-segment" / task_folder, default
        )
    requested = args.splits or []
    # A checkpoint's config may come from elsewhere: its data root is written to only when asked (a user's
    # own --config is theirs to act on, as in training).
    build = args.mode != "head" or args.build_missing
    if build:
        ensure_synthetic_world(cfg.data)
    splits = (requested or ["png:val2017"]) if gcg else resolve_splits(cfg, requested)
    preflight(cfg, [s for s in splits if not is_gcg_split(s)], "" if build else BUILD_HINT)
    if args.mode == "head":
        module = load_module(checkpoint, cfg)
        predictor, adapter, mode = None, module.adapter, "trained-head"
        demo_models = {"head": module.model, "selector": module.selector}
    else:
        module = None
        predictor = build_attend_and_segment(cfg, args.top_heads, args.variant, args.heads)
        adapter, mode, demo_models = predictor.adapter, "attend-and-segment", {"attend": predictor}
    if gcg:
        settings = GenerationSettings(64 if args.max_new_tokens is None else args.max_new_tokens)
        checkpoint = str(args.ckpt.resolve()) if args.ckpt else None
        demo = Demo(adapter, **demo_models)
        return run_gcg(demo, cfg.data.root, splits, out, settings, mode=mode, checkpoint=checkpoint), out
    if args.answer_first:
        demo = Demo(adapter, question_suffix=SHORT_ANSWER, **demo_models)
        predictor = AnswerThenGround(
            demo, GenerationSettings(16 if args.max_new_tokens is None else args.max_new_tokens)
        )
        mode = f"{mode}, answer-first"
    results = evaluate(
        module,
        cfg,
        splits,
        PROTOCOLS[args.protocol],
        out,
        predictor=predictor,
        transform=adapter.image_transform(),
        checkpoint=args.ckpt.resolve() if args.ckpt else None,
        overlays=args.overlays,
        save_masks=args.save_masks,
        mode=mode,
    )
    if results is not None and args.mode == "attend-and-segment":
        results["attend"] = predictor_settings(predictor)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results, out


def predictor_settings(predictor) -> dict:
    """What the attend-and-segment grounder computed (variant, heads, root-word rule)."""
    attend = predictor.demo.attend if isinstance(predictor, AnswerThenGround) else predictor
    return attend.describe()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mode", choices=MODES, default="head", help="a trained checkpoint, or training-free"
    )
    parser.add_argument(
        "--ckpt",
        type=Path,
        help="checkpoint of tools/train.py or head folder of tools/export_head.py (mode head)",
    )
    parser.add_argument("--config", type=Path, help="config of the LMM and SAM (mode attend-and-segment)")
    parser.add_argument(
        "--top-heads", type=fraction, default=None, help="attend-and-segment: keep this fraction of heads"
    )
    add_attend_arguments(parser)
    parser.add_argument(
        "--answer-first",
        action="store_true",
        help="reasoning style: the LMM answers each query (greedy), and its answer is grounded",
    )
    parser.add_argument("--task", choices=TASKS, default="grounding", help="grounding (RES, PNG) or gcg")
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=None,
        help="answer length (16 with --answer-first, 64 for gcg)",
    )
    parser.add_argument("--splits", type=split_list, default=None, help="comma-separated DATASET:SPLIT names")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="both", help="RES protocol(s)")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument("--save-masks", action="store_true", help="write every predicted mask as RLE")
    parser.add_argument("--overlays", type=int, default=4, help="best and worst N queries drawn per split")
    parser.add_argument(
        "--build-missing",
        action="store_true",
        help="generate the synthetic world a checkpoint's config names if missing",
    )
    args = parse_with_overrides(parser, argv, "data.root=/datasets")
    if args.mode == "head" and (args.ckpt is None or args.config is not None):
        parser.error("mode head needs --ckpt (and no --config)")
    if args.mode == "attend-and-segment" and (args.config is None or args.ckpt is not None):
        parser.error("mode attend-and-segment needs --config (and no --ckpt)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        results, out = test(args)
    except FlmmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if results is not None:
        gcg = results.get("task") == "gcg"
        if gcg:
            print(format_gcg_results(results))
        else:
            # The tables, then the per-group (short / long queries) and keyword-selector metrics.
            print("\n".join([format_results_table(results["splits"]), *extra_metrics_lines(results)]))
        print(f"results in {out} (results.md, results.json)")
        if args.overlays > 0 and not gcg:
            print(f"overlays of the best and worst queries in {out / 'overlays'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
