"""Training end to end on CPU through tools/train.py: outputs, checkpoints, resume, frozen weights, errors.

One tiny synthetic world and one tiny LLaVA + SAM are built per session (tests/conftest.py); every run
trains a few steps of 2 images.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from flmm.config import load_config
from flmm.engine.build import config_to_dict
from flmm.engine.datamodule import GroundingDataModule
from flmm.engine.module import GroundingModule, warmup_cosine
from tests.conftest import (
    LLAVA7B_CONFIG,
    TOY_CONFIG,
    TRAIN_STEPS,
    ToyWorld,
    build_toy_models,
    load_checkpoint,
    load_tool,
    logged,
    read_metrics,
    toy_overrides,
)


def test_smoke_train_writes_checkpoint_logs_and_overlays(smoke_run: Path):
    assert (smoke_run / "checkpoints" / "last.ckpt").is_file()
    rows = read_metrics(smoke_run)
    for name in ("loss", "loss_coarse_bce", "loss_coarse_dice", "loss_refined_bce", "loss_refined_dice"):
        values = logged(rows, f"train/{name}")
        assert [step for step, _ in values] == list(range(TRAIN_STEPS))
        assert all(math.isfinite(v) for _, v in values)
    for key in ("cIoU", "gIoU", "P@0.5", "coarse_cIoU"):
        assert len(logged(rows, f"val/refcoco:val/{key}")) == 1
    assert list((smoke_run / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (smoke_run / "overlays" / "epoch_000").glob("*.png")) == ["0.png", "1.png"]


def test_a_run_logged_to_a_file_prints_its_progress(toy_world: ToyWorld, tmp_path: Path, capsys):
    """Captured stdout is not a terminal, as under nohup or SLURM: plain lines instead of a bar."""
    argv = [str(TOY_CONFIG), *toy_overrides(toy_world, tmp_path / "run"), "train.progress_every_n_steps=1"]
    assert load_tool("train").main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if line.startswith("train epoch 1/1 loss")]
    assert [line.split(" step ")[1].split(" ")[0] for line in steps] == [
        f"{s}/{TRAIN_STEPS}" for s in (1, 2, 3)
    ]
    assert all("samples/s" in line and "elapsed" in line for line in steps) and "eta" in steps[0]
    assert any(line.startswith("val epoch 1: ") and "refcoco:val/cIoU" in line for line in lines)
    assert any(line.startswith("train epoch 1/1 done | mean loss") for line in lines)


def test_checkpoint_holds_trainable_weights_config_and_identity(smoke_run: Path):
    checkpoint = load_checkpoint(smoke_run / "checkpoints" / "last.ckpt")
    keys = list(checkpoint["state_dict"])
    assert not [k for k in keys if k.startswith(("adapter.", "model.refiner.sam.image_encoder."))]
    assert any(k.startswith("model.mask_head.") for k in keys)
    assert any(k.startswith("model.refiner.sam.mask_decoder.") for k in keys)
    assert any(k.startswith("model.refiner.text_proj.") for k in keys)
    config = checkpoint["hyper_parameters"]["config"]
    assert config["model"]["mask_head"]["channels"] == [8, 16, 32, 64]
    assert config["train"]["limit_train_batches"] == TRAIN_STEPS
    assert checkpoint["flmm_identity"]["attention_channels"] == 4
    assert checkpoint["global_step"] == TRAIN_STEPS


def test_resume_with_more_epochs_needs_the_flag_and_follows_the_new_schedule(
    smoke_run: Path, toy_world: ToyWorld, tmp_path: Path, capsys
):
    # Resumed where it ran (a copy, so that the other tests still see the first run).
    output_dir = tmp_path / "run"
    shutil.copytree(smoke_run, output_dir)
    argv = [str(TOY_CONFIG), *toy_overrides(toy_world, output_dir, "train.epochs=2")]
    resume = ["--resume", str(output_dir / "checkpoints" / "last.ckpt")]
    assert load_tool("train").main([*argv, *resume]) == 2
    assert "train.epochs: 1 -> 2" in capsys.readouterr().err
    assert load_tool("train").main([*argv, *resume, "--allow-config-change"]) == 0
    # The schedule is recomputed for the new total (2 x TRAIN_STEPS steps, warmup 1) and the run goes on
    # at the stored step of it: the LR jumps from the old schedule's end to the new one's value there.
    lr = float(load_config(TOY_CONFIG).train.lr)
    [(step, logged_lr)] = logged(read_metrics(output_dir, 1), "lr-AdamW")[:1]
    assert step == TRAIN_STEPS
    assert math.isclose(logged_lr, lr * warmup_cosine(TRAIN_STEPS, 2 * TRAIN_STEPS, 1), rel_tol=1e-6)
    # The newest epoch's checkpoint and last.ckpt, never a last-v1.ckpt beside an old one.
    names = {p.name for p in (output_dir / "checkpoints").iterdir()}
    newest = f"epoch001-step{2 * TRAIN_STEPS:06d}.ckpt"
    assert {newest, "last.ckpt"} <= names and not any(n.startswith("last-") for n in names)
    checkpoint = load_checkpoint(output_dir / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 2 * TRAIN_STEPS
    # AdamW counts its own steps: 2 * TRAIN_STEPS only if the stored moments were restored, not reset.
    adam_steps = {float(s["step"]) for s in checkpoint["optimizer_states"][0]["state"].values()}
    assert adam_steps == {2.0 * TRAIN_STEPS}
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == 2 * TRAIN_STEPS
    # Each launch has its own CSV log: the resumed one goes on from the stored step, the first one is kept.
    steps = [[step for step, _ in logged(read_metrics(output_dir, v), "train/loss")] for v in (0, 1)]
    assert steps == [list(range(TRAIN_STEPS)), list(range(TRAIN_STEPS, 2 * TRAIN_STEPS))]


def test_resume_refuses_a_checkpoint_of_another_lmm(
    smoke_run: Path, toy_world: ToyWorld, tmp_path: Path, capsys
):
    # Three decoder layers instead of two: 6 attention channels instead of 4.
    build_toy_models(tmp_path / "llava3", None, **{"text.num_hidden_layers": 3})
    argv = toy_overrides(toy_world, tmp_path / "other", lmm=tmp_path / "llava3")
    code = load_tool("train").main(
        [str(TOY_CONFIG), *argv, "--resume", str(smoke_run / "checkpoints" / "last.ckpt")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "another LMM" in err and "attention_channels: checkpoint 4 vs this run 6" in err
    assert "Traceback" not in err


def test_resume_from_a_file_that_is_no_checkpoint_is_one_clear_error(
    toy_world: ToyWorld, tmp_path: Path, capsys
):
    broken = tmp_path / "last.ckpt"
    broken.write_bytes(b"not a checkpoint")
    code = load_tool("train").main(
        [str(TOY_CONFIG), *toy_overrides(toy_world, tmp_path / "run"), "--resume", str(broken)]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"{broken}: not a readable checkpoint" in err
    assert "Traceback" not in err


@dataclass
class FrozenRecord:
    """Weights before and after a short fit, and the train/eval modes seen at every training step."""

    frozen_before: dict[str, torch.Tensor]
    frozen_after: dict[str, torch.Tensor]
    trainable_before: dict[str, torch.Tensor]
    trainable_after: dict[str, torch.Tensor]
    modes: list[tuple[bool, bool, bool]]


def frozen_state(module: GroundingModule) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the LMM adapter and of SAM's image encoder, cloned."""
    parts = {"adapter": module.adapter, "sam_encoder": module.model.refiner.sam.image_encoder}
    return {f"{p}.{k}": v.detach().clone() for p, part in parts.items() for k, v in part.state_dict().items()}


@pytest.fixture(scope="module")
def frozen_record(toy_world: ToyWorld, tmp_path_factory) -> FrozenRecord:
    import pytorch_lightning as pl

    class RecordModes(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lmm_training = any(m.training for m in pl_module.adapter.lmm.modules())
            encoder_training = any(m.training for m in pl_module.model.refiner.sam.image_encoder.modules())
            modes.append((pl_module.training, lmm_training, encoder_training))

    output_dir = tmp_path_factory.mktemp("frozen") / "run"
    cfg = load_config(TOY_CONFIG, toy_overrides(toy_world, output_dir, "train.limit_val_batches=0"))
    module = GroundingModule(config_to_dict(cfg))
    frozen_before = frozen_state(module)
    trainable_before = {k: p.detach().clone() for k, p in module.named_parameters() if p.requires_grad}
    modes: list[tuple[bool, bool, bool]] = []
    trainer = load_tool("train").build_trainer(cfg, output_dir)
    trainer.callbacks.append(RecordModes())
    trainer.fit(module, datamodule=GroundingDataModule(cfg.data, module.adapter.image_transform()))
    trainable_after = {k: p.detach().clone() for k, p in module.named_parameters() if p.requires_grad}
    return FrozenRecord(frozen_before, frozen_state(module), trainable_before, trainable_after, modes)


def test_frozen_lmm_and_sam_encoder_are_bit_identical_after_training(frozen_record: FrozenRecord):
    before, after = frozen_record.frozen_before, frozen_record.frozen_after
    assert before.keys() == after.keys()
    assert any(k.startswith("adapter.lmm.") for k in before) and any(
        k.startswith("sam_encoder.") for k in before
    )
    assert [k for k in before if not torch.equal(before[k], after[k])] == []


def test_trainable_weights_change_during_training(frozen_record: FrozenRecord):
    before, after = frozen_record.trainable_before, frozen_record.trainable_after
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("model.mask_head.") for k in changed)
    assert any(k.startswith("model.refiner.sam.mask_decoder.") for k in changed)
    assert any(k.startswith("model.refiner.text_proj.") for k in changed)


def test_lmm_and_sam_encoder_stay_in_eval_mode_while_the_module_trains(frozen_record: FrozenRecord):
    assert frozen_record.modes == [(True, False, False)] * TRAIN_STEPS


def test_override_typo_exits_2_naming_the_key(capsys):
    code = load_tool("train").main([str(TOY_CONFIG), "train.lrr=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown key 'train.lrr'" in err and "Did you mean 'train.lr'?" in err
    assert "Traceback" not in err


def test_yaml_typo_exits_2_naming_the_file_and_key(tmp_path: Path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text(TOY_CONFIG.read_text().replace("  batch_size: 8", "  batch_sise: 8"))
    code = load_tool("train").main([str(config)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{config}: unknown key 'data.batch_sise'" in err and "Did you mean 'data.batch_size'?" in err
    assert "Traceback" not in err


def test_missing_weights_and_data_are_listed_in_one_message(tmp_path: Path, monkeypatch, capfd):
    # Relative paths of the config (checkpoints/..., data) resolve under an empty folder, and the hub
    # cache is an empty folder too, whatever this machine has downloaded.
    import huggingface_hub.constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    code = load_tool("train").main([str(LLAVA7B_CONFIG)])
    captured = capfd.readouterr()
    assert code == 2
    err = captured.err
    assert err.count("error: cannot start, missing:") == 1
    assert "LMM weights (model.lmm.model)" in err and "llava-hf/llava-1.5-7b-hf" in err
    assert "SAM weights (model.refiner.checkpoint): checkpoints/sam_vit_l_0b3195.pth not found" in err
    assert "sam_vit_l_0b3195.pth from the segment-anything release" in err
    for split in ("refcoco:train", "refcoco+:train", "refcocog:train", "png:train2017", "refcoco:val"):
        assert split in err
    assert "Traceback" not in captured.out + captured.err
