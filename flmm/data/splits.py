"""Name dataset splits as `DATASET:SPLIT` strings and build their datasets from the config's data section.

`refcoco:val`, `refcoco+:testA`, `refcocog:test`, `png:val2017`, `reasonseg:val`. A user's own dataset
class registered in `flmm.registry.DATASETS` under a name is reachable as `NAME:SPLIT` too (it receives
root, split, protocol, transform, max_skip_fraction and seed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from flmm.data.datasets import GroundingDataset
from flmm.data.png import PNG_SPLITS, png_paths
from flmm.data.reasonseg import REASONSEG_SPLITS, reasonseg_dir
from flmm.data.refcoco import REFER_DATASETS, refer_paths
from flmm.errors import DataError
from flmm.registry import DATASETS

EVAL_RES_SPLITS = (
    "refcoco:val",
    "refcoco:testA",
    "refcoco:testB",
    "refcoco+:val",
    "refcoco+:testA",
    "refcoco+:testB",
    "refcocog:val",
    "refcocog:test",
)
EVAL_PNG_SPLITS = ("png:val2017",)
EVAL_REASONSEG_SPLITS = ("reasonseg:val",)


def parse_split(spec: str) -> tuple[str, str]:
    """`"refcoco:val"` -> `("refcoco", "val")`, checking the dataset and split names."""
    name, sep, split = spec.partition(":")
    if not sep or not name or not split:
        raise DataError(f"split '{spec}' must look like DATASET:SPLIT, e.g. refcoco:val or png:val2017")
    if name in REFER_DATASETS:
        if split not in REFER_DATASETS[name][2]:
            raise DataError(f"'{spec}': {name} has splits {list(REFER_DATASETS[name][2])}")
    elif name == "png":
        if split not in PNG_SPLITS:
            raise DataError(f"'{spec}': png has splits {list(PNG_SPLITS)}")
    elif name == "reasonseg":
        if split not in REASONSEG_SPLITS:
            raise DataError(f"'{spec}': reasonseg has splits {list(REASONSEG_SPLITS)}")
    elif DATASETS.get(name) is None:
        known = [*REFER_DATASETS, "png", "reasonseg"]
        raise DataError(f"'{spec}': unknown dataset '{name}'; expected one of {known} or a registered name")
    return name, split


def split_exists(root: str | Path, spec: str) -> bool:
    """Whether the annotation files of `spec` are present under the data root."""
    name, split = parse_split(spec)
    if name in REFER_DATASETS:
        return all(p.is_file() for p in refer_paths(root, name))
    if name == "png":
        narratives, panoptic, _, _ = png_paths(root, split)
        return narratives.is_file() and panoptic.is_file()
    if name == "reasonseg":
        return any(reasonseg_dir(root, split).glob("*.json"))
    return True


def default_eval_splits(root: str | Path) -> list[str]:
    """Every RES evaluation split, PNG val and ReasonSeg val that exist under the data root, in that order."""
    splits = (*EVAL_RES_SPLITS, *EVAL_PNG_SPLITS, *EVAL_REASONSEG_SPLITS)
    return [s for s in splits if split_exists(root, s)]


def default_protocol(spec: str, protocol: str) -> str:
    """PNG has a single evaluation protocol; RES protocols pass through."""
    name, _ = parse_split(spec)
    return "narrative" if name == "png" and protocol != "train" else protocol


def build_split_dataset(
    data_cfg,
    spec: str,
    protocol: str,
    transform: Callable[[np.ndarray], dict] | None = None,
) -> GroundingDataset:
    """Build the dataset of `spec` under `protocol` from a config's data section.

    Missing annotation files stop here with one message naming them and the expected layout.
    """
    name, split = parse_split(spec)
    root = Path(str(data_cfg.root))
    if not split_exists(root, spec):
        raise DataError(missing_data_message(root, spec))
    common = {
        "root": root,
        "split": split,
        "protocol": default_protocol(spec, protocol),
        "transform": transform,
        "max_skip_fraction": float(data_cfg.max_skip_fraction),
        "seed": int(data_cfg.seed),
    }
    if name in REFER_DATASETS:
        return DATASETS.build({"type": "RefCocoDataset", "dataset": name, **common})
    if name == "png":
        return DATASETS.build({"type": "PngDataset", **common})
    return DATASETS.build({"type": name, **common})


def missing_data_message(root: Path, spec: str) -> str:
    name, split = parse_split(spec)
    if name in REFER_DATASETS:
        missing = [str(p) for p in refer_paths(root, name) if not p.is_file()]
    elif name == "reasonseg":
        missing = [f"{reasonseg_dir(root, split)}/*.json (+ the .jpg of each)"]
    else:
        missing = [str(p) for p in png_paths(root, split)[:2] if not p.is_file()]
    return (
        f"data for '{spec}' not found under data.root={root}: missing {', '.join(missing)}. "
        "Put the datasets in the layout of data/README.md (DATASET_ROOT/coco/...) or point "
        "data.root=... at the folder that holds coco/."
    )
