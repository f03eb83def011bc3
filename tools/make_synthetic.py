"""Write the deterministic synthetic grounding world (RefCOCO family + PNG formats) under --out.

Example: python tools/make_synthetic.py --out data/synthetic --seed 0 --images 300 --png-images 100
"""

from __future__ import annotations

import argparse
import time

from flmm.data.synthetic import SyntheticConfig, generate_world


def main(argv: list[str] | None = None) -> dict[str, int]:
    defaults = SyntheticConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="data root; files go under OUT/coco/... (DESIGN.md §3)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--images", type=int, default=defaults.n_res_images, help="RefCOCO-family images")
    p.add_argument("--png-images", type=int, default=defaults.n_png_images, help="panoptic narrative images")
    p.add_argument("--size", type=int, default=defaults.size, help="base image side in pixels")
    p.add_argument("--max-objects", type=int, default=defaults.max_objects)
    p.add_argument(
        "--overlap", type=float, default=defaults.overlap, help="chance an object overlaps another"
    )
    p.add_argument(
        "--holdout-combos",
        action=argparse.BooleanOptionalAction,
        default=defaults.holdout_combos,
        help="keep ~15%% of (colour, shape) pairs out of training images",
    )
    args = p.parse_args(argv)
    config = SyntheticConfig(
        seed=args.seed,
        n_res_images=args.images,
        n_png_images=args.png_images,
        size=args.size,
        max_objects=args.max_objects,
        overlap=args.overlap,
        holdout_combos=args.holdout_combos,
    )
    start = time.perf_counter()
    counts = generate_world(args.out, config)
    print(f"synthetic world written to {args.out} in {time.perf_counter() - start:.1f} s")
    for key, value in counts.items():
        print(f"  {key:<22} {value}")
    return counts


if __name__ == "__main__":
    main()
