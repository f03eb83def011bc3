"""Bad command-line arguments of the tools: one clear `error: ...` and exit 2, before any expensive work.

The expensive step of each tool (reading a checkpoint, loading a model, training, probing, writing data) is
replaced by `_never`, so a test also shows that the argument is refused before that step runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from flmm.cli import output_folder, split_list
from flmm.errors import ConfigError
from tests.conftest import load_tool


def _never(*args, **kwargs):
    raise AssertionError("the expensive step ran although the arguments are bad")


def _refused_by_argparse(capsys, tool, argv: list[str]) -> str:
    """stderr of `tool.main(argv)`, which must exit 2 through argparse."""
    with pytest.raises(SystemExit) as exit_info:
        tool.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _refused(capsys, tool, argv: list[str]) -> str:
    """The one `error: ...` line of `tool.main(argv)`, which must return 2."""
    assert tool.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ")
    return err.strip()


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("keep me\n")
    return path


def _test_tool(monkeypatch):
    tool = load_tool("test")
    monkeypatch.setattr(tool, "load_checkpoint", _never)
    monkeypatch.setattr(tool, "load_config", _never)
    return tool


# flmm.cli helpers


def test_output_folder_returns_a_folder_that_can_be_created(tmp_path):
    assert output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, not created


def test_output_folder_refuses_a_path_below_a_file(a_file):
    with pytest.raises(ConfigError, match=rf"--out {a_file / 'sub'}: {a_file} is a file"):
        output_folder(a_file / "sub")


def test_split_list_drops_blanks_and_refuses_an_empty_list():
    assert split_list(" refcoco:val, ,png:val2017,") == ["refcoco:val", "png:val2017"]
    with pytest.raises(argparse.ArgumentTypeError, match="one or more"):
        split_list(" , ")


# 1. tools/test.py --out


def test_test_refuses_an_out_that_is_a_file_before_reading_the_checkpoint(
    smoke_run, a_file, capsys, monkeypatch
):
    ckpt = smoke_run / "checkpoints" / "last.ckpt"
    err = _refused(capsys, _test_tool(monkeypatch), ["--ckpt", str(ckpt), "--out", str(a_file)])
    assert err == f"error: --out {a_file}: is a file; expected a folder (an existing one, or one to create)"
    assert a_file.read_text() == "keep me\n"


# 2. tools/sweep_seeds.py --protocol


def test_sweep_refuses_an_unknown_protocol_before_training(capsys, monkeypatch, tmp_path):
    tool = load_tool("sweep_seeds")
    monkeypatch.setattr(tool, "run_seed", _never)
    argv = ["configs/flmm_toy.yaml", "--out", str(tmp_path / "sweep"), "--protocol", "bogus"]
    err = _refused_by_argparse(capsys, tool, argv)
    assert "argument --protocol: invalid choice: 'bogus'" in err and "first-sentence-concat" in err


def test_sweep_refuses_an_out_holding_runs_before_training(capsys, monkeypatch, tmp_path):
    tool = load_tool("sweep_seeds")
    monkeypatch.setattr(tool, "run_seed", _never)
    held = tmp_path / "sweep" / "seed_1" / "checkpoints"
    held.mkdir(parents=True)
    (held / "last.ckpt").write_bytes(b"an earlier run")
    argv = ["configs/flmm_toy.yaml", "--seeds", "0", "1", "--out", str(tmp_path / "sweep")]
    assert tool.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'sweep' / 'seed_1'} already hold a run" in err and "another --out" in err


# 3. tools/test.py numbers and splits


def test_test_refuses_top_heads_outside_zero_one(capsys, monkeypatch):
    argv = ["--mode", "attend-and-segment", "--config", "configs/flmm_toy.yaml", "--top-heads", "5"]
    err = _refused_by_argparse(capsys, _test_tool(monkeypatch), argv)
    assert "argument --top-heads: expected a fraction in (0, 1], got '5'" in err


def test_test_refuses_negative_max_new_tokens_with_answer_first(capsys, monkeypatch, tmp_path):
    argv = ["--ckpt", str(tmp_path / "x.ckpt"), "--answer-first", "--max-new-tokens", "-1"]
    err = _refused_by_argparse(capsys, _test_tool(monkeypatch), argv)
    assert "argument --max-new-tokens: expected an integer of at least 1, got '-1'" in err


def test_test_refuses_zero_max_new_tokens_for_gcg_instead_of_using_64(capsys, monkeypatch, tmp_path):
    argv = ["--ckpt", str(tmp_path / "x.ckpt"), "--task", "gcg", "--max-new-tokens", "0"]
    err = _refused_by_argparse(capsys, _test_tool(monkeypatch), argv)
    assert "argument --max-new-tokens: expected an integer of at least 1, got '0'" in err


def test_test_refuses_an_empty_split_list(capsys, monkeypatch, tmp_path):
    err = _refused_by_argparse(
        capsys, _test_tool(monkeypatch), ["--ckpt", str(tmp_path / "x"), "--splits", ","]
    )
    assert "argument --splits: expected one or more comma-separated DATASET:SPLIT names" in err


# 4. tools/demo.py


def _demo_tool(monkeypatch):
    tool = load_tool("demo")
    monkeypatch.setattr(tool, "load_demo", _never)
    return tool


def _demo_argv(tmp_path: Path, *args: str) -> list[str]:
    return ["--ckpt", str(tmp_path / "x.ckpt"), "--image", str(tmp_path / "i.png"), *args]


def test_demo_refuses_an_unknown_device(capsys, monkeypatch, tmp_path):
    err = _refused_by_argparse(
        capsys, _demo_tool(monkeypatch), _demo_argv(tmp_path, "--device", "bogus", "q")
    )
    assert "argument --device: expected cpu, cuda or cuda:N, got 'bogus'" in err


def test_demo_refuses_cuda_on_a_machine_without_it(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _refused_by_argparse(capsys, _demo_tool(monkeypatch), _demo_argv(tmp_path, "--device", "cuda", "q"))
    assert "argument --device: 'cuda': this machine has no CUDA device; use --device cpu" in err


def test_demo_refuses_an_empty_question_before_loading_the_model(capsys, monkeypatch, tmp_path):
    err = _refused_by_argparse(capsys, _demo_tool(monkeypatch), _demo_argv(tmp_path, "  "))
    assert "error: the question is empty" in err


def test_demo_refuses_an_out_that_is_a_file_before_answering(a_file, capsys, monkeypatch, tmp_path):
    err = _refused(capsys, _demo_tool(monkeypatch), _demo_argv(tmp_path, "--out", str(a_file), "q"))
    assert err.startswith(f"error: cannot write the outputs to --out {a_file}: is a file")


# 5. output paths of the other tools


def test_probe_refuses_an_out_that_is_a_folder_before_probing(capsys, monkeypatch, tmp_path):
    tool = load_tool("probe_grounding")
    monkeypatch.setattr(tool, "probe", _never)
    err = _refused(capsys, tool, ["--lmm", str(tmp_path / "lmm"), "--out", str(tmp_path)])
    assert (
        err == f"error: --out {tmp_path}: is a folder; expected a file path, e.g. {tmp_path / 'results.json'}"
    )


def test_browse_data_refuses_an_out_that_is_a_file_before_browsing(a_file, capsys, monkeypatch):
    tool = load_tool("browse_data")
    monkeypatch.setattr(tool, "browse", _never)
    err = _refused(capsys, tool, ["configs/flmm_toy.yaml", "--split", "refcoco:val", "--out", str(a_file)])
    assert err.startswith(f"error: --out {a_file}: is a file")


def test_make_synthetic_refuses_an_out_that_is_a_file_before_generating(a_file, capsys, monkeypatch):
    tool = load_tool("make_synthetic")
    monkeypatch.setattr(tool, "generate_world", _never)
    err = _refused(capsys, tool, ["--out", str(a_file)])
    assert err.startswith(f"error: --out {a_file}: is a file")


# 6. tools/export_head.py --out


@pytest.fixture
def earlier_export(smoke_run, tmp_path) -> Path:
    out = tmp_path / "head"
    ckpt = smoke_run / "checkpoints" / "last.ckpt"
    assert load_tool("export_head").main(["--ckpt", str(ckpt), "--out", str(out)]) == 0
    return out


def test_export_refuses_a_non_empty_out_without_overwrite(smoke_run, earlier_export, capsys):
    before = {p.name: p.read_bytes() for p in earlier_export.iterdir()}
    capsys.readouterr()
    ckpt = smoke_run / "checkpoints" / "last.ckpt"
    err = _refused(capsys, load_tool("export_head"), ["--ckpt", str(ckpt), "--out", str(earlier_export)])
    assert err == f"error: --out {earlier_export} is not empty; pass --overwrite to replace the export in it"
    assert {p.name: p.read_bytes() for p in earlier_export.iterdir()} == before


def test_export_with_overwrite_replaces_an_earlier_export(smoke_run, earlier_export):
    meta = earlier_export / "config.json"
    meta.write_text(json.dumps({"stale": True}))
    ckpt = smoke_run / "checkpoints" / "last.ckpt"
    argv = ["--ckpt", str(ckpt), "--out", str(earlier_export), "--overwrite"]
    assert load_tool("export_head").main(argv) == 0
    assert "stale" not in json.loads(meta.read_text()) and "config" in json.loads(meta.read_text())
