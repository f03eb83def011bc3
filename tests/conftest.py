"""Shared fixtures: offline settings for every test, the real-format dataset beside the checkout, and the toy
world of training tests (a tiny synthetic dataset and tiny models, overrides that shrink a run to seconds)."""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
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
        *(f"model.toy.lmm_sizes.{key}={value}" for key, value in TINY_LMM.items()),
        # Random initial weights: pretraining the toy models is not what these tests are about.
        "model.toy.pretrain_steps=0",
        "model.toy.sam_pretrain_steps=0",
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


def build_toy_world(root: Path) -> ToyWorld:
    """Generate a 24 + 8 image synthetic world of 64 px images under `root` and build its toy models."""
    from flmm.config import load_config
    from flmm.data.synthetic import SyntheticConfig, generate_world
    from flmm.engine.toy import ensure_toy_models

    world = ToyWorld(root / "data", root / "models" / "llava", root / "models" / "sam.pth")
    generate_world(
        world.data_root, SyntheticConfig(seed=0, n_res_images=24, n_png_images=8, size=64, max_objects=3)
    )
    ensure_toy_models(load_config(TOY_CONFIG, toy_overrides(world, root / "unused")))
    return world


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
