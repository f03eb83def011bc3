"""Pretrain the toy SAM of the embedded default on the synthetic world's masks (SAM's promptable objective).

    python tools/pretrain_toy_sam.py --out FILE.safetensors [--config configs/toy_sam.yaml] [--seed N]
        [--steps N] [key=value ...]

Trains `build_tiny_sam()` (segment_anything's modules at toy sizes) with random point and box prompts ->
mask on freshly drawn synthetic scenes (never the world's own images), saves its state dict to
FILE.safetensors (what `model.refiner.checkpoint` takes; a FILE.pth is written with torch.save instead) and
prints the held-out mIoU from one point prompt and from the box; FILE.safetensors.json keeps them with the
recipe.
"""

from __future__ import annotations

import argparse
import sys
import time

from flmm.cli import parse_with_overrides
from flmm.errors import FlmmError
from flmm.toy.pretrain_sam import pretrain_sam
from flmm.toy.recipe import SamRecipe, load_recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="the .safetensors (or .pth) file to write")
    parser.add_argument("--config", default="configs/toy_sam.yaml", help="recipe YAML")
    parser.add_argument("--seed", type=int, default=None, help="overrides the recipe's seed")
    parser.add_argument("--steps", type=int, default=None, help="overrides the recipe's steps")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parse_with_overrides(parser, argv, "box_fraction=0.5")
    flags = {"seed": args.seed, "steps": args.steps}
    overrides = [*args.overrides, *(f"{k}={v}" for k, v in flags.items() if v is not None)]
    try:
        recipe = load_recipe(SamRecipe, args.config, overrides)
        start = time.time()
        report = pretrain_sam(args.out, recipe, progress=not args.quiet)
    except FlmmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"saved to {args.out} ({recipe.steps} steps, {time.time() - start:.0f} s)")
    held_out = report["held_out"]
    if held_out is not None:
        print(f"held-out mIoU: one point {held_out['mIoU_point']:.1f}, box {held_out['mIoU_box']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
