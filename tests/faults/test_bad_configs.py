"""A typo in any section of a config is one error naming the key, before anything is built."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from flmm.config import FlmmConfig
from tests.conftest import TOY_CONFIG, load_tool

# One misspelt key per section of the schema, and what the message must name.
SECTION_TYPOS = {
    "": ("outptu_dir=runs/x", "unknown key 'outptu_dir'. Did you mean 'output_dir'?"),
    "data": ("data.batchsize=4", "unknown key 'data.batchsize'. Did you mean 'data.batch_size'?"),
    "data.synthetic": ("data.synthetic.n_res=3", "SyntheticConfig has no argument 'n_res'"),
    "model": ("model.mask_haed={type: UNetMaskHead}", "unknown key 'model.mask_haed'"),
    "model.lmm": ("model.lmm.captur=eager", "LlavaAdapter has no argument 'captur'"),
    "model.mask_head": ("model.mask_head.chanels=[8]", "UNetMaskHead has no argument 'chanels'"),
    "model.refiner": ("model.refiner.chekpoint=x.pth", "SamRefiner has no argument 'chekpoint'"),
    "model.selector": (
        "model.selector={type: KeywordSelector, thresh: 0.5}",
        "KeywordSelector has no argument 'thresh'",
    ),
    "train": ("train.wieght_decay=0.1", "Did you mean 'train.weight_decay'?"),
    "attend": ("attend.varient=authors", "Did you mean 'attend.variant'?"),
}


def schema_sections(cls: type = FlmmConfig, prefix: str = "") -> list[str]:
    """Every section of the config schema: its dataclasses and its free-dict (component) fields."""
    sections = [prefix]
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        name = f"{prefix}.{field.name}".lstrip(".")
        kind = hints[field.name]
        inner = next((a for a in typing.get_args(kind) if dataclasses.is_dataclass(a)), kind)
        if dataclasses.is_dataclass(inner):
            sections += schema_sections(inner, name)
        elif "dict" in str(kind):
            sections.append(name)
    return sections


def test_the_typos_cover_every_section_of_the_schema():
    assert sorted(schema_sections()) == sorted(SECTION_TYPOS)


@pytest.mark.parametrize("section", sorted(SECTION_TYPOS))
def test_a_typo_in_any_section_stops_train_py_with_one_message(section, capsys):
    override, message = SECTION_TYPOS[section]
    assert load_tool("train").main([str(TOY_CONFIG), override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert "Traceback" not in err
