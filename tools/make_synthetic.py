"""Write the deterministic synthetic grounding world (RefCOCO family + PNG formats) under --out.

Example: python tools/make_synthetic.py --out data/synthetic --seed 0 --images 300 --png-images 100
`key=value` arguments set any field of `flmm.data.synthetic.SyntheticConfig` (e.g. overlap=0.5).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flmm.cli import output_folder, parse_with_overrides
from flmm.data.synthetic import SyntheticConfig, generate_world
from flmm.errors import ConfigError


def apply_overrides(config: SyntheticConfig, overrides: list[str]) -> SyntheticConfig:
    """`config` with `field=value` overrides; ConfigError naming the key for an unknown field or bad value."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(config), OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as exc:
        allowed = ", ".join(f.name for f in dataclasses.fields(SyntheticConfig))
        key = getattr(exc, "full_key", "") or ""
        raise ConfigError(f"override {key!r}: {str(exc).splitlines()[0]}; fields: {allowed}") from None
    return SyntheticConfig(**OmegaConf.to_container(merged))


def main(argv: list[str] | None = None) -> int:
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
    args = parse_with_overrides(p, argv, "overlap=0.5")
    start = time.perf_counter()
    try:
        output_folder(args.out)
        config = SyntheticConfig(
            seed=args.seed,
            n_res_images=args.images,
            n_png_images=args.png_images,
            size=args.size,
            max_objects=args.max_objects,
            overlap=args.overlap,
            holdout_combos=args.holdout_combos,
        )
        counts = generate_world(args.out, apply_overrides(config, args.overrides))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"synthetic world written to {args.out} in {time.perf_counter() - start:.1f} s")
    for key, value in counts.items():
        print(f"  {key:<22} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
