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
import difflib
import importlib.util
import logging
import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
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
from flmm.engine.task_metrics import headline_key, validation_keys
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

    No version counter: `last.ckpt` is overwritten even when this run did not write it (a run folder moved
    before resuming), instead of a new `last-v1.ckpt` beside it; a fresh run into an output_dir that holds
    one is refused first (`check_run`).
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
    """The Lightning Trainer of a config (checked by `check_run`): loggers, checkpoints, overlays, skips,
    precision, devices, DDP."""
    train = cfg.train
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


def monitor_choices(cfg) -> list[str]:
    """The keys validation logs (GroundingModule.on_validation_epoch_end), which `train.monitor` may name."""
    keys = []
    for split in cfg.data.val_splits:
        headline = headline_key(split)
        names = [*validation_keys(split), f"coarse_{headline}"]
        if headline == "AR" and cfg.model.selector is not None:
            # Logged only where tokens carry word-selection labels: the PNG narratives.
            names.append("selector_token_F1")
        keys += [f"val/{split}/{name}" for name in names]
    return keys


def check_accelerator(train) -> None:
    """ConfigError when `train.accelerator` / `train.devices` name hardware this machine lacks."""
    accelerator, devices = str(train.accelerator), train.devices
    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    if accelerator in ("gpu", "cuda") and not cuda and not (accelerator == "gpu" and mps):
        raise ConfigError(
            f"train.accelerator={accelerator}: no CUDA GPU is visible on this machine "
            "(torch.cuda.is_available() is False); use train.accelerator=cpu, or auto to take what there is"
        )
    if accelerator == "mps" and not mps:
        raise ConfigError("train.accelerator=mps: no Apple MPS device on this machine; use cpu or auto")
    if accelerator == "tpu" and importlib.util.find_spec("torch_xla") is None:
        raise ConfigError("train.accelerator=tpu: torch_xla is not installed; use cpu, gpu or auto")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not cuda and not mps)
    processes = isinstance(devices, int) or (isinstance(devices, str) and devices.strip().isdigit())
    if on_cpu and devices != "auto" and not (processes and int(devices) > 0):
        shown = OmegaConf.to_container(devices) if OmegaConf.is_config(devices) else devices
        raise ConfigError(
            f"train.devices={shown!r}: on the CPU, devices is a number of processes (an int > 0) or auto; "
            "device indices and -1 are for GPUs"
        )
    gpus = accelerator in ("gpu", "cuda", "auto") and cuda
    if gpus and isinstance(devices, int) and devices > torch.cuda.device_count():
        raise ConfigError(
            f"train.devices={devices}: this machine has {torch.cuda.device_count()} visible CUDA GPU(s)"
        )


def check_run(cfg, resume: str | None) -> None:
    """Refuse, before anything is loaded or written, a run that cannot train or would lose work: nothing to
    train on, no LMM, a spawn strategy, a `train.monitor` validation never logs, or a fresh run over an
    output_dir that holds a previous run's last.ckpt. (Absent hardware: `check_accelerator`, after the
    preflight of weights and data.)"""
    last = Path(str(cfg.output_dir)) / "checkpoints" / "last.ckpt"
    if resume is None and last.exists():
        raise ConfigError(
            f"output_dir={cfg.output_dir} already holds a run ({last}); a fresh run would replace its "
            f"checkpoints. To continue it: --resume {last}; to start anew, choose another output_dir "
            "(output_dir=PATH) or remove the old one"
        )
    if not cfg.data.train_splits:
        raise ConfigError(
            "data.train_splits is empty: nothing to train on (e.g. data.train_splits=[refcoco:train])"
        )
    if not cfg.model.lmm.get("model"):
        raise ConfigError(
            "model.lmm.model is not set: give the LMM as a hub id or a checkpoint folder "
            "(in the config, or model.lmm.model=PATH)"
        )
    if "spawn" in str(cfg.train.strategy):
        # A pickled transformers model misses state its __init__ registers, so spawned workers cannot run it.
        raise ConfigError(f"train.strategy={cfg.train.strategy} is not supported; use ddp")
    validates = cfg.data.val_splits and float(cfg.train.limit_val_batches) > 0
    if cfg.train.monitor is not None and validates:
        choices = monitor_choices(cfg)
        if cfg.train.monitor not in choices:
            close = difflib.get_close_matches(str(cfg.train.monitor), choices, n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"train.monitor={cfg.train.monitor}: validation never logs it.{hint} "
                f"Validation logs: {', '.join(choices)}"
            )


def train(cfg, resume: str | None = None, allow_config_change: bool = False) -> Path:
    """Run training for a loaded config; return the path of the last checkpoint.

    `resume`: a checkpoint of this run to continue from; its stored config must equal `cfg` (up to where
    things are, `flmm.engine.resume`) unless `allow_config_change`. Without it, `output_dir` must not hold
    a previous run's `checkpoints/last.ckpt` (`check_run`).
    """
    check_run(cfg, resume)
    pl.seed_everything(int(cfg.seed), workers=True)
    checkpoint = None if resume is None else read_checkpoint(resume)
    if checkpoint is not None:
        stored = checkpoint["hyper_parameters"]["config"]
        for change in check_resume_config(stored, config_to_dict(cfg), allow_config_change):
            print(f"resuming with a changed config: {change}", flush=True)
    ensure_synthetic_world(cfg.data)
    preflight(cfg, [*cfg.data.train_splits, *cfg.data.val_splits])
    # After the missing weights and data (one message for those), before any model loads.
    check_accelerator(cfg.train)
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
    last = output_dir / "checkpoints" / "last.ckpt"
    if trainer.is_global_zero:
        if not last.is_file():
            raise FlmmError(f"training ended without writing a checkpoint: {last} does not exist")
        print(f"done; latest checkpoint: {last}")
    return last


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
