"""Export the trained head of a tools/train.py checkpoint as a folder to share (`flmm.hub`).

    python tools/export_head.py --ckpt PATH --out DIR [key=value ...]

Writes DIR/model.safetensors (the trainable weights only: no LMM, no SAM image encoder, no optimizer),
DIR/config.json (the head's config, the LMM it was trained on with its hub revision or folder fingerprint,
the SAM checkpoint's name and sha256, the flmm version), DIR/README.md (a model card with the run's
tools/test.py results of this checkpoint, RUN/eval/results.json, when there are some; copied as
DIR/results.json). DIR must be new or empty; --overwrite replaces an earlier export in it (a folder that
holds other files is always refused). `key=value` arguments change the recorded config (e.g.
model.lmm.model=HUB_ID for an LMM trained from a local copy of a hub model).

The folder loads wherever a checkpoint does: `tools/test.py --ckpt DIR`, `tools/demo.py --ckpt DIR`,
`flmm.Grounder.from_pretrained(DIR)`; loading it reads JSON and safetensors only.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from flmm.cli import output_folder, parse_with_overrides
from flmm.errors import FlmmError
from flmm.hub import CARD_FILE, export_head


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint written by tools/train.py")
    parser.add_argument("--out", type=Path, required=True, help="the head folder to write (new or empty)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the earlier export in --out (no other files)"
    )
    args = parse_with_overrides(parser, argv, "model.lmm.model=llava-hf/llava-1.5-7b-hf")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        # Before the checkpoint is read: an earlier export is replaced only when asked.
        out_dir = output_folder(args.out)
        if not args.overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
            raise FlmmError(f"--out {out_dir} is not empty; pass --overwrite to replace the export in it")
        out = export_head(args.ckpt, args.out, args.overrides)
    except FlmmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"head exported to {out} (model card: {out / CARD_FILE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
