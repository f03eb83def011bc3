"""Bad values are one clear error naming the key (or the file) and what was expected: at load time where the
config alone tells, at the start of tools/train.py (before any model loads) where the run or the machine
does; never a Lightning / torch traceback, and never a previous run's checkpoints replaced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.registry import Registry

from flmm.builder import build_component
from flmm.config import load_config
from flmm.engine.module import read_checkpoint
from flmm.errors import ConfigError, FlmmError
from flmm.registry import MODELS
from tests.conftest import TOY_CONFIG, ToyWorld, load_tool, toy_overrides


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.precision=bogus", r"'train\.precision': expected one of 32, .*bf16-mixed.*got 'bogus'"),
        ("train.accelerator=tpuu", r"'train\.accelerator': expected one of auto, cpu, gpu, cuda"),
        ("train.devices=abc", r"'train\.devices': expected an int > 0, -1 \(all\), \"auto\""),
        ("train.strategy=bogus", r"'train\.strategy': expected one of auto, ddp, .*single_device"),
        ("train.limit_train_batches=-1", r"'train\.limit_train_batches': expected a fraction in \(0, 1\]"),
        ("train.limit_val_batches=1.5", r"'train\.limit_val_batches': expected a fraction in \[0, 1\]"),
        ("data.batch_size=-1", r"'data\.batch_size': expected a positive int, got -1"),
        ("data.batch_size=0", r"'data\.batch_size': expected a positive int, got 0"),
        ("data.num_workers=-1", r"'data\.num_workers': expected a non-negative int"),
        ("train.epochs=0", r"'train\.epochs': expected a positive int"),
    ],
)
def test_an_out_of_range_value_names_the_key_and_what_is_expected(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [override])


def test_the_values_lightning_accepts_load():
    overrides = [
        "train.precision=bf16-mixed",
        "train.accelerator=gpu",
        "train.devices=[0,1]",
        "train.strategy=ddp_find_unused_parameters_true",
        "train.limit_train_batches=0.5",
        "train.limit_val_batches=0",
    ]
    assert load_config(None, overrides).train.devices == [0, 1]
    assert load_config(None, ["train.devices=-1", "train.limit_train_batches=3"]).train.devices == -1


def test_a_component_value_of_the_wrong_type_names_the_key_at_load_time():
    with pytest.raises(ConfigError, match=r"model\.mask_head\.size: expected an int, got 'abc'"):
        load_config(TOY_CONFIG, ["model.mask_head.size=abc"])


def test_a_component_list_of_the_wrong_type_names_the_key_at_load_time():
    with pytest.raises(ConfigError, match=r"model\.mask_head\.channels: expected a list of ints"):
        load_config(TOY_CONFIG, ["model.mask_head.channels=[a,b]"])


def test_a_selector_threshold_that_is_no_number_names_the_key_at_load_time():
    with pytest.raises(ConfigError, match=r"model\.selector\.threshold: expected a number, got 'abc'"):
        load_config(TOY_CONFIG, ["model.selector.threshold=abc"])


def test_a_value_the_constructor_refuses_is_a_config_error_naming_the_section():
    section = {"type": "UNetMaskHead", "channels": [8, 16, 32, 64], "size": -3}
    with pytest.raises(
        ConfigError, match=r"^model\.mask_head: UNetMaskHead refused .*size=-3 must be divisible"
    ):
        build_component(MODELS, "model.mask_head", section, in_channels=4)


def test_a_programming_error_in_a_constructor_is_not_turned_into_a_config_error():
    registry = Registry("test_components")

    @registry.register_module()
    class Broken:
        def __init__(self, width: int = 1) -> None:
            raise RuntimeError("a bug, not the config")

    with pytest.raises(RuntimeError, match="a bug, not the config"):
        build_component(registry, "model.broken", {"type": "Broken", "width": 2})


def test_an_empty_config_file_says_it_is_empty(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError, match=rf"^{path}: the file is empty"):
        load_config(path)


def test_a_config_file_that_is_a_list_says_a_mapping_is_expected(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- data\n- model\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping of config sections .* got a list"):
        load_config(path)


def test_a_section_given_a_plain_value_names_the_section(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: 5\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: 'data' must be a section \(a mapping with keys root"):
        load_config(path)


def test_a_section_given_a_plain_value_on_the_command_line_names_the_section():
    with pytest.raises(ConfigError, match=r"command-line override: 'train' must be a section.*got 5"):
        load_config(None, ["train=5"])


def test_a_missing_base_names_the_file_that_refers_to_it(tmp_path):
    (tmp_path / "child.yaml").write_text("_base_: nothere.yaml\n")
    with pytest.raises(ConfigError, match=r"child\.yaml: _base_ names .*nothere\.yaml, which is not a file"):
        load_config(tmp_path / "child.yaml")


def test_an_empty_checkpoint_file_says_it_is_empty(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"")
    with pytest.raises(FlmmError, match=r"not a readable checkpoint: the file is empty \(0 bytes\)"):
        read_checkpoint(path)


def test_a_truncated_checkpoint_says_it_is_truncated(tmp_path):
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(20_000)}}, whole)
    path = tmp_path / "last.ckpt"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(FlmmError, match=r"last\.ckpt: not a readable checkpoint: a truncated or damaged"):
        read_checkpoint(path)


def test_a_text_file_is_not_a_pytorch_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_text("epoch: 3\n")
    with pytest.raises(FlmmError, match=r"not a PyTorch checkpoint written by tools/train\.py \(\w+Error"):
        read_checkpoint(path)


def test_random_bytes_give_a_one_line_message(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(bytes(range(256)) * 16)
    with pytest.raises(FlmmError) as caught:
        read_checkpoint(path)
    message = str(caught.value)
    assert "not a PyTorch checkpoint written by tools/train.py" in message
    assert "\n" not in message and "weights_only" not in message


def _train(argv: list[str], capsys) -> tuple[int, str]:
    code = load_tool("train").main([str(TOY_CONFIG), *argv])
    return code, capsys.readouterr().err


def test_a_fresh_run_into_an_output_dir_with_a_last_checkpoint_is_refused(
    toy_world: ToyWorld, tmp_path: Path, capsys
):
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"a previous run's checkpoint")
    code, err = _train(toy_overrides(toy_world, tmp_path / "run"), capsys)
    assert code == 2
    assert f"--resume {last}" in err and "choose another output_dir" in err
    assert last.read_bytes() == b"a previous run's checkpoint"
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_bad_value_with_resume_leaves_the_run_folder_as_it_was(toy_world: ToyWorld, tmp_path: Path, capsys):
    config = tmp_path / "run" / "config.yaml"
    config.parent.mkdir()
    config.write_text("the run's config\n")
    argv = [*toy_overrides(toy_world, tmp_path / "run"), "data.num_workers=-1"]
    code, err = _train([*argv, "--resume", str(tmp_path / "run" / "last.ckpt")], capsys)
    assert code == 2 and "'data.num_workers': expected a non-negative int" in err
    assert config.read_text() == "the run's config\n"


def test_a_monitor_typo_is_refused_at_start_with_the_closest_key(toy_world: ToyWorld, tmp_path: Path, capsys):
    code, err = _train(
        toy_overrides(toy_world, tmp_path / "run", "train.monitor=val/refcoco:val/cIOU"), capsys
    )
    assert code == 2
    assert "train.monitor=val/refcoco:val/cIOU: validation never logs it" in err
    assert "Did you mean 'val/refcoco:val/cIoU'?" in err
    assert not (tmp_path / "run").exists()


def test_no_train_splits_is_refused_at_start(toy_world: ToyWorld, tmp_path: Path, capsys):
    code, err = _train(toy_overrides(toy_world, tmp_path / "run", "data.train_splits=[]"), capsys)
    assert code == 2 and "data.train_splits is empty: nothing to train on" in err
    assert not (tmp_path / "run").exists()


def test_a_config_without_an_lmm_is_refused_naming_the_key(tmp_path: Path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(f"output_dir: {tmp_path / 'run'}\n")
    code = load_tool("train").main([str(path)])
    assert code == 2 and "model.lmm.model is not set" in capsys.readouterr().err


def test_a_gpu_accelerator_without_cuda_is_refused_before_the_model_loads(
    toy_world: ToyWorld, tmp_path: Path, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a machine that has one
    code, err = _train(toy_overrides(toy_world, tmp_path / "run", "train.accelerator=gpu"), capsys)
    assert code == 2 and "train.accelerator=gpu: no CUDA GPU is visible" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_device_indices_on_the_cpu_are_refused(toy_world: ToyWorld, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = _train(toy_overrides(toy_world, tmp_path / "run", "train.devices=[0,1]"), capsys)
    assert code == 2 and "train.devices=[0, 1]: on the CPU, devices is a number of processes" in err
