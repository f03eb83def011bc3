"""Checkpoint policy and identity: step cadence, epoch ends and the best kept; a checkpoint names the LMM
weights it was trained with, and a resume or an evaluation on other weights is refused, leaving the run as
it was."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flmm.engine.module import check_same_weights
from flmm.errors import ConfigError
from flmm.lmm.loading import folder_fingerprint, weights_source
from tests.conftest import TOY_CONFIG, ToyWorld, load_checkpoint, load_tool, toy_overrides

STEPS_PER_EPOCH, EVERY = 4, 3


def policy_overrides(world: ToyWorld, output_dir: Path, lmm: Path | None = None) -> list[str]:
    """The toy run of this module: 2 epochs of 4 steps, a checkpoint every 3 steps."""
    return toy_overrides(
        world,
        output_dir,
        "train.epochs=2",
        f"train.limit_train_batches={STEPS_PER_EPOCH}",
        f"train.checkpoint_every_n_steps={EVERY}",
        lmm=lmm,
    )


@pytest.fixture(scope="module")
def two_epochs(toy_world: ToyWorld, tmp_path_factory) -> Path:
    """2 epochs of 4 steps, a checkpoint every 3 steps, validation after each epoch."""
    output_dir = tmp_path_factory.mktemp("policy") / "run"
    assert load_tool("train").main([str(TOY_CONFIG), *policy_overrides(toy_world, output_dir)]) == 0
    return output_dir


def test_checkpoints_come_every_n_steps_and_at_epoch_ends_and_last_is_the_newest(two_epochs: Path):
    names = sorted(p.name for p in (two_epochs / "checkpoints").iterdir() if not p.name.startswith("best"))
    # The newest of each kind: step 6 of the cadence (3, 6), epoch 1 ending at step 8, and last.ckpt.
    assert names == ["epoch001-step000008.ckpt", "last.ckpt", "step000006.ckpt"]
    assert load_checkpoint(two_epochs / "checkpoints" / "last.ckpt")["global_step"] == 2 * STEPS_PER_EPOCH


def test_every_checkpoint_records_where_the_training_data_stands(two_epochs: Path):
    """Step checkpoints mid-epoch, epoch-end and best ones after validation: each says where to go on."""
    for path in (two_epochs / "checkpoints").glob("*.ckpt"):
        stored = load_checkpoint(path)
        step = int(stored["global_step"])
        epoch, done = divmod(step, STEPS_PER_EPOCH)
        assert stored["GroundingDataModule"] == {"epoch": epoch, "batches_done": done}, path.name


def test_the_best_validation_score_keeps_its_checkpoint(two_epochs: Path):
    with open(two_epochs / "csv" / "version_0" / "metrics.csv", newline="") as handle:
        scores = [
            (int(row["epoch"]), float(row["val/refcoco:val/cIoU"]))
            for row in csv.DictReader(handle)
            if row.get("val/refcoco:val/cIoU")
        ]
    assert len(scores) == 2
    best_epoch, best_score = max(scores, key=lambda item: item[1])
    [best] = (two_epochs / "checkpoints").glob("best-*.ckpt")
    assert best.name == f"best-epoch{best_epoch:03d}-step{(best_epoch + 1) * STEPS_PER_EPOCH:06d}.ckpt"
    stored = load_checkpoint(best)
    [state] = [s for key, s in stored["callbacks"].items() if "val/refcoco:val/cIoU" in key]
    assert float(state["best_model_score"]) == pytest.approx(best_score)


def test_a_checkpoint_records_the_fingerprint_of_its_lmm_weights(two_epochs: Path, toy_world: ToyWorld):
    source = load_checkpoint(two_epochs / "checkpoints" / "last.ckpt")["flmm_lmm_source"]
    assert source == {
        "model": str(toy_world.lmm),
        "revision": None,
        "fingerprint": folder_fingerprint(toy_world.lmm),
    }


def _retrained_copy(lmm: Path, folder: Path) -> Path:
    """The toy LLaVA's folder with one weight changed: the same architecture, other weights."""
    shutil.copytree(lmm, folder)
    weights = load_file(folder / "model.safetensors")
    name = next(n for n in sorted(weights) if n.endswith("layers.0.mlp.up_proj.weight"))
    weights[name] = weights[name] + 1e-3
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_resume_on_other_lmm_weights_is_refused_and_the_run_is_left_as_it_was(
    two_epochs: Path, toy_world: ToyWorld, tmp_path: Path, capsys
):
    other = _retrained_copy(toy_world.lmm, tmp_path / "llava_retrained")
    output_dir = tmp_path / "run"
    shutil.copytree(two_epochs, output_dir)
    last = output_dir / "checkpoints" / "last.ckpt"
    before = {p.name: p.read_bytes() for p in output_dir.rglob("*") if p.is_file()}
    overrides = policy_overrides(toy_world, output_dir, lmm=other)
    assert load_tool("train").main([str(TOY_CONFIG), *overrides, "--resume", str(last)]) == 2
    assert "are not those the checkpoint was trained with" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in output_dir.rglob("*") if p.is_file()} == before


def test_evaluation_on_other_lmm_weights_is_refused(two_epochs: Path, tmp_path: Path, capsys, toy_world):
    other = _retrained_copy(toy_world.lmm, tmp_path / "llava_retrained")
    argv = ["--ckpt", str(two_epochs / "checkpoints" / "last.ckpt"), f"model.lmm.model={other}"]
    assert load_tool("test").main([*argv, f"output_dir={tmp_path / 'eval'}"]) == 2
    assert "point model.lmm.model at the weights it was trained with" in capsys.readouterr().err


def test_a_moved_lmm_folder_has_the_same_fingerprint(toy_world: ToyWorld, tmp_path: Path):
    moved = tmp_path / "elsewhere" / "llava"
    shutil.copytree(toy_world.lmm, moved)
    (moved / ".cache").mkdir()  # what `hf download --local-dir` keeps beside the files
    (moved / ".cache" / "download.lock").write_text("metadata that changes without the weights")
    assert folder_fingerprint(moved) == folder_fingerprint(toy_world.lmm)


def _fake_hub_cache(cache: Path, repo: str, lmm: Path, commits: dict[str, str]) -> None:
    """A Hugging Face cache holding `repo` at several commits (refs name -> commit), each a copy of `lmm`."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    for ref, commit in commits.items():
        shutil.copytree(lmm, folder / "snapshots" / commit)
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)


def test_a_hub_checkpoint_is_recorded_by_commit_and_another_revision_is_refused(
    toy_world: ToyWorld, tmp_path: Path, monkeypatch
):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    old, new = "a" * 40, "b" * 40
    _fake_hub_cache(cache, "flmm-test/toy-llava", toy_world.lmm, {"v1": old, "main": new})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    trained = weights_source("flmm-test/toy-llava", local_files_only=True, revision="v1")
    now = weights_source("flmm-test/toy-llava", local_files_only=True)
    assert (trained["revision"], now["revision"]) == (old, new)
    with pytest.raises(ConfigError, match=f"set model.lmm.revision={old}"):
        check_same_weights(now, trained)
    check_same_weights(weights_source("flmm-test/toy-llava", True, revision=old), trained)


def test_weights_of_the_same_architecture_but_other_values_are_told_apart(toy_world: ToyWorld, tmp_path):
    other = _retrained_copy(toy_world.lmm, tmp_path / "llava_retrained")
    weights = load_file(other / "model.safetensors")
    assert {k: v.shape for k, v in weights.items()} == {
        k: v.shape for k, v in load_file(toy_world.lmm / "model.safetensors").items()
    }
    assert folder_fingerprint(other) != folder_fingerprint(toy_world.lmm)
    assert torch.is_tensor(next(iter(weights.values())))
