"""Shared fixtures: offline settings for every test, the real-format dataset beside the checkout, and the toy
world of training tests (a tiny synthetic dataset and tiny models, overrides that shrink a run to seconds)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core (pyproject.toml): a worker and the processes it starts use one thread each, since
    # OpenMP threads that outnumber the cores spin-wait on each other and slow every test down.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `slow` first: the first worker starts them at once, beside the short tests the others
    take, instead of meeting them last and alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


REAL_FORMAT = REPO_ROOT.parent / "shared" / "fixtures" / "real_format"


@pytest.fixture(scope="session")
def real_format_root() -> Path:
    """The shared real-format fixture (made outside this project); skipped only when it is absent."""
    if not (REAL_FORMAT / "truth.json").is_file():
        pytest.skip(f"shared fixture absent: {REAL_FORMAT}")
    return REAL_FORMAT


@pytest.fixture
def writable_real_format(real_format_root: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the real-format fixture, for tests that break it on purpose."""
    root = tmp_path / "data"
    shutil.copytree(real_format_root, root)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def load_tool(name: str):
    """Import `tools/<name>.py` as a module, so tests call a tool's `main(argv)` in-process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tools_{name}", REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOY_CONFIG = REPO_ROOT / "configs" / "flmm_toy.yaml"
TOY_LMM_RECIPE = REPO_ROOT / "configs" / "toy_lmm.yaml"
TOY_SAM_RECIPE = REPO_ROOT / "configs" / "toy_sam.yaml"
LLAVA7B_CONFIG = REPO_ROOT / "configs" / "flmm_llava7b.yaml"
TRAIN_STEPS = 3

# A tiny LLaVA: 2 decoder layers x 2 heads, so the mask head sees C = 4 attention channels.
TINY_LMM = {
    "vision.image_size": 32,
    "vision.hidden_size": 32,
    "vision.intermediate_size": 64,
    "vision.num_hidden_layers": 1,
    "vision.num_attention_heads": 2,
    "text.hidden_size": 32,
    "text.intermediate_size": 64,
    "text.num_hidden_layers": 2,
    "text.num_attention_heads": 2,
    "text.num_key_value_heads": 2,
}


@dataclass
class ToyWorld:
    """A generated synthetic data root and where its toy models live (built on first use)."""

    data_root: Path
    lmm: Path
    sam: Path


def toy_overrides(world: ToyWorld, output_dir: Path, *extra: str, lmm: Path | None = None) -> list[str]:
    """`key=value` overrides that shrink configs/flmm_toy.yaml to a few seconds of CPU training."""
    return [
        f"output_dir={output_dir}",
        f"data.root={world.data_root}",
        "data.synthetic=null",
        "data.batch_size=2",
        "data.num_workers=0",
        f"model.lmm.model={lmm or world.lmm}",
        f"model.refiner.checkpoint={world.sam}",
        "model.mask_head.channels=[8,16,32,64]",
        "model.mask_head.size=32",
        "train.epochs=1",
        f"train.limit_train_batches={TRAIN_STEPS}",
        "train.limit_val_batches=2",
        "train.log_every_n_steps=1",
        "train.overlay_samples=2",
        "train.progress_bar=false",
        *extra,
    ]


def build_toy_models(lmm: Path | None, sam: Path | None, **lmm_sizes: int) -> None:
    """The toy tools' models at test size: the TINY_LMM LLaVA (`lmm_sizes` over it, e.g.
    `**{"text.num_hidden_layers": 3}`) and the tiny SAM, both at their random initial weights (pretraining
    the toy models is not what these tests are about)."""
    from flmm.toy.pretrain_lmm import pretrain_lmm
    from flmm.toy.pretrain_sam import pretrain_sam
    from flmm.toy.recipe import LmmRecipe, SamRecipe, load_recipe

    if lmm is not None:
        sizes = [f"sizes.{key}={value}" for key, value in {**TINY_LMM, **lmm_sizes}.items()]
        pretrain_lmm(lmm, load_recipe(LmmRecipe, TOY_LMM_RECIPE, [*sizes, "steps=0"]), progress=False)
    if sam is not None:
        pretrain_sam(sam, load_recipe(SamRecipe, TOY_SAM_RECIPE, ["steps=0"]), progress=False)


def build_toy_world(root: Path) -> ToyWorld:
    """Generate a 24 + 8 image synthetic world of 64 px images under `root` and build its toy models."""
    from flmm.data.synthetic import SyntheticConfig, generate_world

    world = ToyWorld(root / "data", root / "models" / "llava", root / "models" / "sam.safetensors")
    generate_world(
        world.data_root, SyntheticConfig(seed=0, n_res_images=24, n_png_images=8, size=64, max_objects=3)
    )
    build_toy_models(world.lmm, world.sam)
    return world


def wide_image(world: ToyWorld, folder: Path) -> Path:
    """A 40 x 64 (H x W) crop of a world image, written into `folder`: not square, so a swapped x / y or
    H / W shows."""
    source = sorted((world.data_root / "coco" / "train2017").glob("*.jpg"))[0]
    path = folder / "wide.png"
    Image.open(source).convert("RGB").crop((0, 8, 64, 48)).save(path)
    return path


def read_metrics(output_dir: Path, version: int = 0) -> list[dict[str, str]]:
    """The rows of the CSV log that launch number `version` of a run wrote."""
    with open(output_dir / "csv" / f"version_{version}" / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def logged(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    """(step, value) of every row that logged `key`."""
    return [(int(row["step"]), float(row[key])) for row in rows if row.get(key)]


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory) -> ToyWorld:
    return build_toy_world(tmp_path_factory.mktemp("toy_world"))


@pytest.fixture(scope="session")
def smoke_run(toy_world: ToyWorld, tmp_path_factory) -> Path:
    """One epoch of TRAIN_STEPS steps + validation through tools/train.py; returns its output_dir (read,
    never changed, by the tests of training and of the web demo)."""
    output_dir = tmp_path_factory.mktemp("smoke") / "run"
    code = load_tool("train").main([str(TOY_CONFIG), *toy_overrides(toy_world, output_dir)])
    assert code == 0
    return output_dir


# A ReasonSeg fixture in LISA's on-disk format.
# name: (texts, is_sentence, shapes as (label, points))
REASONSEG_SIZE = (48, 64)  # H, W of every ReasonSeg fixture image


def rect(x0, y0, x1, y1) -> list[list[float]]:
    """A LabelMe polygon of the axis-aligned rectangle."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


REASONSEG_IMAGES = {
    "a": (["the red thing", "what is red here?"], False, [("target", rect(10, 10, 30, 20))]),
    "b": (
        ["Find the object a person would sit on to rest after a long walk."],
        True,
        [("target", rect(0, 0, 20, 40)), ("ignore", rect(5, 5, 10, 10)), ("flag", rect(0, 0, 63, 47))],
    ),
    "c": (
        ["Which region could hold water if it rained?"],
        True,
        [
            ("ignore", rect(30, 10, 60, 40)),
            ("target", rect(40, 20, 50, 30)),
            ("target", [[0, 47], [8, 40], [16, 47]]),
        ],
    ),
}


def write_reasonseg(root: Path, split: str = "val") -> Path:
    """LISA's layout: DATA_ROOT/reason_seg/ReasonSeg/SPLIT/NAME.{json,jpg}, LabelMe fields included."""
    folder = root / "reason_seg" / "ReasonSeg" / split
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (texts, is_sentence, shapes) in REASONSEG_IMAGES.items():
        pixels = rng.integers(0, 255, (*REASONSEG_SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.jpg")
        record = {
            "version": "4.5.6",
            "shapes": [
                {"label": label, "points": pts, "shape_type": "polygon", "flags": {}} for label, pts in shapes
            ],
            "imagePath": f"{name}.jpg",
            "imageHeight": REASONSEG_SIZE[0],
            "imageWidth": REASONSEG_SIZE[1],
            "text": texts,
            "is_sentence": is_sentence,
        }
        (folder / f"{name}.json").write_text(json.dumps(record))
    return root


def coco_rle(mask: np.ndarray, compressed: bool = True) -> dict:
    """COCO RLE of a `(H, W)` bool mask, as annotation files hold it: `counts` a compressed str, or (not
    `compressed`) the uncompressed list of run lengths, column-major, starting with a run of zeros."""
    from pycocotools import mask as mask_utils

    size = list(mask.shape)
    if compressed:
        encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": size, "counts": encoded["counts"].decode("ascii")}
    counts, value, run = [], 0, 0
    for pixel in mask.flatten(order="F").astype(int):
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    return {"size": size, "counts": [*counts, run]}
