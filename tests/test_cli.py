"""Command lines: `key=value` overrides anywhere among the options of every tool."""

from __future__ import annotations

import argparse

import pytest

from flmm.cli import parse_with_overrides, split_overrides
from tests.conftest import REPO_ROOT, load_tool


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("question", nargs="?")
    parser.add_argument("--out")
    parser.add_argument("--phrases")
    parser.add_argument("--quiet", action="store_true")
    return parser


def test_overrides_are_taken_before_between_and_after_options_in_order():
    argv = ["a=1", "cfg.yaml", "--out", "o", "b.c=2", "--quiet", "d.e-f=[x,y]"]
    args = parse_with_overrides(_parser(), argv)
    assert args.overrides == ["a=1", "b.c=2", "d.e-f=[x,y]"]
    assert (args.config, args.out, args.quiet) == ("cfg.yaml", "o", True)


def test_an_option_value_that_looks_like_an_override_stays_the_options():
    rest, overrides = split_overrides(_parser(), ["cfg.yaml", "--phrases", "x=y", "--out=z=w", "k=v"])
    assert rest == ["cfg.yaml", "--phrases", "x=y", "--out=z=w"]
    assert overrides == ["k=v"]


def test_a_question_with_spaces_is_not_an_override():
    args = parse_with_overrides(_parser(), ["cfg.yaml", "What is left of the red one?", "seed=3"])
    assert args.question == "What is left of the red one?"
    assert args.overrides == ["seed=3"]


def test_help_says_where_overrides_go(capsys):
    with pytest.raises(SystemExit):
        parse_with_overrides(_parser(), ["--help"], "data.root=/x")
    assert "anywhere on the line" in capsys.readouterr().out


@pytest.mark.parametrize(
    "tool",
    ["train", "test", "demo", "browse_data", "make_synthetic", "probe_grounding",
     "pretrain_toy_lmm", "pretrain_toy_sam", "sweep_seeds"],
)  # fmt: skip
def test_every_tool_takes_overrides_anywhere(tool, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool(tool).main(["--help"])
    assert exit_info.value.code == 0
    assert "key=value arguments anywhere on the line override" in capsys.readouterr().out


def test_browse_data_takes_overrides_after_its_options(tmp_path, capsys):
    config = str(REPO_ROOT / "configs" / "flmm_toy.yaml")
    argv = [config, "--split", "refcoco:val", "--out", str(tmp_path / "out"), "--overlays", "1"]
    overrides = [
        f"data.root={tmp_path / 'world'}",
        "data.synthetic.n_res_images=12",
        "data.synthetic.size=64",
    ]
    assert load_tool("browse_data").main([*argv, *overrides]) == 0
    assert (tmp_path / "out" / "samples.jsonl").read_text().count("\n") > 0
    assert "queries of refcoco:val" in capsys.readouterr().out
