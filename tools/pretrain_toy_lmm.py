"""Pretrain the toy LLaVA of the embedded default on text about synthetic scenes (next-token loss only).

    python tools/pretrain_toy_lmm.py --out DIR [--config configs/toy_lmm.yaml] [--seed N] [--steps N]
        [--batch-size N] [key=value ...]

Builds transformers' LlavaForConditionalGeneration at the recipe's sizes with a word-level tokenizer trained
here and a LlavaProcessor (or, with the recipe's `init`, goes on from a toy LLaVA folder), pretrains it
on captions / referring captions / QA / answers / narratives about freshly drawn synthetic scenes (never
the world's own images, never its held-out colour-shape pairs), and saves it to DIR with save_pretrained
(safetensors), loadable offline like a hub checkpoint. `--steps 0` saves the random initial weights (the
control). Prints the held-out loss per text format, the next-token accuracy per word kind and how many
held-out questions are answered word for word; DIR/pretrain_report.json keeps them with the recipe and the
loss curve.
"""

from __future__ import annotations

import argparse
import sys
import time

from flmm.cli import parse_with_overrides
from flmm.errors import FlmmError
from flmm.toy.pretrain_lmm import pretrain_lmm
from flmm.toy.recipe import LmmRecipe, load_recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="folder to save the model and processor in")
    parser.add_argument("--config", default="configs/toy_lmm.yaml", help="recipe YAML")
    parser.add_argument("--seed", type=int, default=None, help="overrides the recipe's seed")
    parser.add_argument("--steps", type=int, default=None, help="overrides the recipe's steps")
    parser.add_argument("--batch-size", type=int, default=None, help="overrides the recipe's batch_size")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parse_with_overrides(parser, argv, "formats.qa=0.2")
    flags = {"seed": args.seed, "steps": args.steps, "batch_size": args.batch_size}
    overrides = [*args.overrides, *(f"{k}={v}" for k, v in flags.items() if v is not None)]
    try:
        recipe = load_recipe(LmmRecipe, args.config, overrides)
        start = time.time()
        report = pretrain_lmm(args.out, recipe, progress=not args.quiet)
    except FlmmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"saved to {args.out} ({recipe.steps} steps, {time.time() - start:.0f} s)")
    held_out = report["held_out"]
    if held_out is not None:
        losses = ", ".join(f"{k} {v:.3f}" for k, v in held_out["loss"].items())
        accuracy = ", ".join(
            f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in held_out["accuracy"].items()
        )
        print(f"held-out loss per format: {losses}")
        print(f"held-out next-token accuracy per word kind: {accuracy}")
        print(f"held-out answers word for word (greedy): {held_out['answer_exact_match']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
