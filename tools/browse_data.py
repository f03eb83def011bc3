"""Look at what the data layer loads: overlays of the first N queries and a JSON line per query.

    python tools/browse_data.py CONFIG --split refcoco:val --out DIR [--protocol P] [--overlays N]
        [key=value ...]

Reads only the config's data section (no model weights needed). Writes DIR/samples.jsonl (one line per
query: dataset, split, image_id, image_file, expression, area, bbox, first_sentence or plural/isthing)
and DIR/overlays/NNNNN.png (mask, box and expression over the image).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from flmm.cli import output_folder, parse_with_overrides
from flmm.config import load_config
from flmm.data.overlay import draw_overlay
from flmm.data.splits import build_split_dataset
from flmm.data.synthetic_setup import ensure_synthetic_world
from flmm.errors import FlmmError

QUERY_KEYS = (
    "dataset",
    "split",
    "protocol",
    "query_id",
    "image_id",
    "image_file",
    "expression",
    "area",
    "bbox",
)
RES_KEYS = ("ref_id", "ann_id", "sent_id", "first_sentence")
PNG_KEYS = ("segment_ids", "plural", "isthing")


def browse(cfg, split: str, protocol: str, out: Path, n_overlays: int) -> tuple[int, int]:
    """Write samples.jsonl and overlays for `split`; return the number of queries and of broken records
    (each named in a warning)."""
    dataset = build_split_dataset(cfg.data, split, protocol)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    n_queries, n_broken = 0, len(dataset.load_skips)
    with (out / "samples.jsonl").open("w", encoding="utf-8") as jsonl:
        for index in tqdm(range(len(dataset)), desc=f"browse {split} ({dataset.protocol})", unit="sample"):
            sample = dataset[index]
            n_broken += len(sample["skipped"])
            if "image" not in sample:
                continue
            for mask, query in zip(sample["masks"].numpy(), sample["queries"]):
                row = {k: query[k] for k in (*QUERY_KEYS, *RES_KEYS, *PNG_KEYS) if k in query}
                jsonl.write(json.dumps(row, ensure_ascii=False) + "\n")
                if n_queries < n_overlays:
                    image = draw_overlay(sample["image"], [mask], [query["expression"]], [query["bbox"]])
                    image.save(out / "overlays" / f"{n_queries:05d}.png")
                n_queries += 1
    return n_queries, n_broken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="YAML config; only its data section is used")
    parser.add_argument(
        "--split", required=True, help="DATASET:SPLIT, e.g. refcoco:val, refcocog:test, png:val2017"
    )
    parser.add_argument("--protocol", default=None, help="all-sentences | first-sentence-concat | train")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--overlays", type=int, default=16, help="overlay images of the first N queries")
    args = parse_with_overrides(parser, argv, "data.root=/datasets")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        output_folder(args.out)
        cfg = load_config(args.config, args.overrides)
        ensure_synthetic_world(cfg.data)
        n, broken = browse(cfg, args.split, args.protocol or cfg.data.protocol, args.out, args.overlays)
    except FlmmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{n} queries of {args.split}: {args.out / 'samples.jsonl'}, overlays in {args.out / 'overlays'}")
    if broken:
        print(f"{broken} broken records skipped (see the warnings above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
