"""Validation during training scores each split as tools/test.py's evaluation does: PNG by average recall,
ReasonSeg with its ignore regions out, RES by cIoU; the best checkpoint follows the first split's score."""

from __future__ import annotations

from pathlib import Path

import pytest

from flmm.config import load_config
from flmm.engine.build import config_to_dict
from flmm.engine.datamodule import GroundingDataModule
from flmm.engine.evaluate import evaluate
from flmm.engine.module import GroundingModule
from tests.conftest import (
    TOY_CONFIG,
    ToyWorld,
    load_checkpoint,
    load_tool,
    logged,
    read_metrics,
    toy_overrides,
    write_reasonseg,
)

# split -> its headline score and the protocol both runs use (validation's data.protocol; PNG has one)
SPLITS = {
    "refcoco:val": ("cIoU", "all-sentences"),
    "png:val2017": ("AR", "narrative"),
    "reasonseg:val": ("cIoU", "all-sentences"),
}


def _config(world: ToyWorld, tmp_path: Path, split: str):
    root = write_reasonseg(tmp_path / "reasonseg") if split.startswith("reasonseg") else world.data_root
    extra = [f"data.root={root}", f"data.val_splits=[{split}]", "train.limit_val_batches=1.0"]
    return load_config(TOY_CONFIG, toy_overrides(world, tmp_path / "run", *extra, "train.precision=32"))


@pytest.mark.parametrize("split", SPLITS)
def test_validation_gives_the_score_evaluation_gives(toy_world: ToyWorld, tmp_path: Path, split: str):
    key, protocol = SPLITS[split]
    cfg = _config(toy_world, tmp_path, split)
    module = GroundingModule(config_to_dict(cfg)).eval()
    trainer = load_tool("train").build_trainer(cfg, tmp_path / "run")
    validated = trainer.validate(module, GroundingDataModule(cfg.data, module.adapter.image_transform()))[0]
    results = evaluate(module, cfg, [split], protocols=["all-sentences"], out_dir=tmp_path / "eval")
    evaluated = results["splits"][split][protocol]
    assert validated[f"val/{split}/{key}"] == pytest.approx(evaluated[key], abs=1e-4)
    assert validated[f"val/{split}/coarse_{key}"] == pytest.approx(evaluated[f"coarse_{key}"], abs=1e-4)
    assert int(validated[f"val/{split}/n_queries"]) == evaluated["n_queries"]


def test_a_png_split_first_makes_average_recall_the_checkpoint_monitor(toy_world: ToyWorld, tmp_path: Path):
    output_dir = tmp_path / "run"
    overrides = toy_overrides(toy_world, output_dir, "data.val_splits=[png:val2017,refcoco:val]")
    assert load_tool("train").main([str(TOY_CONFIG), *overrides]) == 0
    rows = read_metrics(output_dir)
    assert logged(rows, "val/png:val2017/AR") and not logged(rows, "val/png:val2017/cIoU")
    (best,) = (output_dir / "checkpoints").glob("best-*.ckpt")
    # Lightning keys a ModelCheckpoint's saved state by its settings, the monitor among them.
    callbacks = load_checkpoint(best)["callbacks"]
    assert any("'monitor': 'val/png:val2017/AR'" in key for key in callbacks), list(callbacks)
