"""Train the grounding head of a frozen LMM.

    python tools/train.py CONFIG [key=value ...] [--resume PATH [--allow-config-change]]

Everything the run writes goes under `output_dir`: TensorBoard logs, CSV logs (`csv/version_N/metrics.csv`,
one version per launch, so a run resumed in the same `output_dir` keeps the earlier history), validation
overlays, and checkpoints (every `train.checkpoint_every_n_steps` steps and at epoch ends; the best by
`train.monitor`; `output_dir/checkpoints/last.ckpt` is always the newest complete one). Multi-GPU and
multi-node DDP use Lightning's own settings: `train.devices`, `train.num_nodes`, `train.strategy` (README).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from flmm.cli import parse_with_overrides
from flmm.config import load_config
from flmm.data.synthetic_setup import ensure_synthetic_world
from flmm.engine.build import config_to_dict, preflight
from flmm.engine.callbacks import ValidationOverlays, progress_reporting
from flmm.engine.checkpoint_io import SameFolderAtomicIO
from flmm.engine.datamodule import GroundingDataModule
from flmm.engine.module import GroundingModule, check_checkpoint_fits, read_checkpoint
from flmm.engine.resume import check_resume_config
from flmm.engine.skips import SkipCounter
from flmm.engine.task_metrics import headline_key
from flmm.errors import ConfigError, FlmmError

# The frozen LMM and SAM image encoder stay in eval mode on purpose (tests/test_engine_train.py checks it).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
# A mid-epoch resume is exact: the datamodule stores the data position (GroundingDataModule.state_dict); the
# loader itself is not what Lightning calls "resumable" (tests/faults/test_kill_and_resume.py checks it).
warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch")


def checkpoint_callbacks(cfg, folder: Path) -> list[ModelCheckpoint]:
    """Where a run's checkpoints come from (all in `folder`, written atomically by SameFolderAtomicIO):

    - every `train.checkpoint_every_n_steps` steps (`step{step}.ckpt`, the newest kept) and at every epoch
      end (`epoch{epoch}-step{step}.ckpt`, the newest kept); both also write `last.ckpt`, so it is always
      the newest complete checkpoint;
    - `best-epoch{epoch}-step{step}.ckpt`: the best validation score of `train.monitor` (max), when the
      run validates;
    - save_on_exception: a scheduler's SIGTERM (preemption) ends the run through Lightning's
      SIGTERMException, which then writes a resumable checkpoint at the step reached, and so does an error.

    No version counter: `last.ckpt` is overwritten even when this run did not write it (a fresh run in an
    old output_dir, a run folder moved before resuming), instead of a new `last-v1.ckpt` beside it.
    """
    train = cfg.train
    common = {"dirpath": folder, "auto_insert_metric_name": False, "enable_version_counter": False}
    callbacks = [
        ModelCheckpoint(
            filename="epoch{epoch:03d}-step{step:06d}",
            save_last=True,
            save_top_k=1,
            save_on_exception=True,
            **common,
        )
    ]
    if int(train.checkpoint_every_n_steps) > 0:
        callbacks.append(
            ModelCheckpoint(
                filename="step{step:06d}",
                every_n_train_steps=int(train.checkpoint_every_n_steps),
                save_last=True,
                save_top_k=1,
                **common,
            )
        )
    if cfg.data.val_splits and float(train.limit_val_batches) > 0:
        first = cfg.data.val_splits[0]
        monitor = train.monitor or f"val/{first}/{headline_key(first)}"
        callbacks.append(
            ModelCheckpoint(
                filename="best-epoch{epoch:03d}-step{step:06d}", monitor=monitor, mode="max", **common
            )
        )
    return callbacks


def build_trainer(cfg, output_dir: Path) -> pl.Trainer:
    """The Lightning Trainer of a config: loggers, checkpoints, overlays, skips, precision, devices, DDP."""
    train = cfg.train
    if "spawn" in str(train.strategy):
        # A pickled transformers model misses state its __init__ registers, so spawned workers cannot run it.
        raise ConfigError(f"train.strategy={train.strategy} is not supported; use ddp")
    show_bar, progress = progress_reporting(train.progress_bar, train.progress_every_n_steps)
    return pl.Trainer(
        default_root_dir=output_dir,
        max_epochs=train.epochs,
        max_steps=train.max_steps,
        accelerator=train.accelerator,
        devices=train.devices,
        num_nodes=train.num_nodes,
        strategy=train.strategy,
        precision=train.precision,
        gradient_clip_val=train.grad_clip,
        limit_train_batches=train.limit_train_batches,
        limit_val_batches=train.limit_val_batches,
        check_val_every_n_epoch=train.val_every_n_epochs,
        log_every_n_steps=train.log_every_n_steps,
        enable_progress_bar=show_bar,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        plugins=[SameFolderAtomicIO()],
        logger=[
            TensorBoardLogger(output_dir, name="tensorboard", version=""),
            CSVLogger(output_dir, name="csv"),
        ],
        callbacks=[
            *checkpoint_callbacks(cfg, output_dir / "checkpoints"),
            SkipCounter(cfg.data.max_skip_fraction),
            LearningRateMonitor(logging_interval="step"),
            ValidationOverlays(output_dir / "overlays", train.overlay_samples),
            *progress,
        ],
    )


def train(cfg, resume: str | None = None, allow_config_change: bool = False) -> Path:
    """Run training for a loaded config; return the path of the last checkpoint.

    `resume`: a checkpoint of this run to continue from; its stored config must equal `cfg` (up to where
    things are, `flmm.engine.resume`) unless `allow_config_change`.
    """
    pl.seed_everything(int(cfg.seed), workers=True)
    checkpoint = None if resume is None else read_checkpoint(resume)
    if checkpoint is not None:
        stored = checkpoint["hyper_parameters"]["config"]
        for change in check_resume_config(stored, config_to_dict(cfg), allow_config_change):
            print(f"resuming with a changed config: {change}", flush=True)
    ensure_synthetic_world(cfg.data)
    preflight(cfg, [*cfg.data.train_splits, *cfg.data.val_splits])
    module = GroundingModule(config_to_dict(cfg))
    if checkpoint is not None:
        # Before anything is written: a refused checkpoint must leave its run folder as it was.
        check_checkpoint_fits(module, checkpoint)
    output_dir = Path(str(cfg.output_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, output_dir / "config.yaml")
    datamodule = GroundingDataModule(cfg.data, module.adapter.image_transform())
    trainer = build_trainer(cfg, output_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    if trainer.is_global_zero:
        print(f"done; latest checkpoint: {output_dir / 'checkpoints' / 'last.ckpt'}")
    return output_dir / "checkpoints" / "last.ckpt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="YAML config, e.g. configs/flmm_llava7b.yaml")
    parser.add_argument(
        "--resume", default=None, help="checkpoint to continue from (e.g. OUT/checkpoints/last.ckpt)"
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="let --resume continue with a config that differs from the checkpoint's (README: Resuming)",
    )
    args = parse_with_overrides(parser, argv, "train.epochs=2 data.root=/data")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        train(load_config(args.config, args.overrides), args.resume, args.allow_config_change)
    except FlmmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
