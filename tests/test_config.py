"""Configs: YAML over a typed schema; typos and wrong types are one clear error naming the key."""

from __future__ import annotations

import pytest

from flmm.config import load_config
from flmm.errors import ConfigError
from tests.conftest import REPO_ROOT


def test_overrides_apply_with_types():
    cfg = load_config(
        None, ["data.root=/datasets", "data.batch_size=4", "data.train_splits=[refcoco:train,png:train2017]"]
    )
    assert cfg.data.root == "/datasets"
    assert cfg.data.batch_size == 4
    assert list(cfg.data.train_splits) == ["refcoco:train", "png:train2017"]


def test_typo_in_a_yaml_key_names_file_key_and_suggestion(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  roott: /datasets\n")
    with pytest.raises(
        ConfigError, match=r"run\.yaml: unknown key 'data\.roott'\. Did you mean 'data\.root'\?"
    ):
        load_config(path)


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"bad value for 'data\.batch_size'.*'many'"):
        load_config(None, ["data.batch_size=many"])


def test_override_without_equals_is_refused():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["data.root"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_configs_load(tmp_path):
    for path in sorted((REPO_ROOT / "configs").glob("flmm_*.yaml")):
        assert load_config(path).data.root


def test_a_config_starts_from_its_base_and_overrides_it(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 3\ndata:\n  batch_size: 4\n  root: /base\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ndata:\n  root: /child\n")
    cfg = load_config(tmp_path / "child.yaml", ["data.batch_size=5"])
    assert (cfg.seed, cfg.data.root, cfg.data.batch_size) == (3, "/child", 5)


def test_a_typo_in_a_base_names_the_base_file(tmp_path):
    (tmp_path / "base.yaml").write_text("data:\n  roott: /x\n")
    (tmp_path / "child.yaml").write_text("_base_: [base.yaml]\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: unknown key 'data\.roott'"):
        load_config(tmp_path / "child.yaml")


def test_a_base_cycle_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "a.yaml")


FAMILY_CONFIGS = sorted(
    p.name
    for p in (REPO_ROOT / "configs").glob("flmm_*.yaml")
    if "toy" not in p.name and p.name != "flmm_llava7b.yaml"
)


@pytest.mark.parametrize("config", FAMILY_CONFIGS)
def test_each_family_config_is_the_reference_recipe_with_its_lmm(config):
    cfg = load_config(REPO_ROOT / "configs" / config)
    reference = load_config(REPO_ROOT / "configs" / "flmm_llava7b.yaml")
    assert "/" in cfg.model.lmm.model and "type" not in cfg.model.lmm  # a hub id; the family follows it
    assert cfg.train == reference.train and cfg.data == reference.data
    assert cfg.model.refiner == reference.model.refiner and cfg.model.mask_head == reference.model.mask_head
    assert cfg.output_dir == f"runs/{config.removesuffix('.yaml')}"


TYPOS = [
    ("model.mask_head.chanels=[8]", r"model\.mask_head: UNetMaskHead has no argument 'chanels'"),
    ("model.refiner.chekpoint=x.pth", r"model\.refiner: SamRefiner has no argument 'chekpoint'"),
    ("model.lmm.captur=eager", r"model\.lmm: LlavaAdapter has no argument 'captur'.*'model\.lmm\.capture'"),
    ("model.selector={type: KeywordSelector, thresh: 0.5}", r"KeywordSelector has no argument 'thresh'"),
    ("model.mask_head.type=UNet", r"model\.mask_head\.type: unknown 'UNet'"),
    ("data.synthetic.n_res=3", r"data\.synthetic: SyntheticConfig has no argument 'n_res'"),
    ("model.mask_head.in_channels=4", r"model\.mask_head\.in_channels: set by flmm from the LMM"),
]


@pytest.mark.parametrize(("override", "message"), TYPOS)
def test_a_typo_in_a_component_section_is_an_error_at_load_time(override, message):
    """Before anything is built: the toy config's LMM and SAM are not even looked for."""
    with pytest.raises(ConfigError, match=r"flmm_toy\.yaml with its overrides: .*" + message):
        load_config(REPO_ROOT / "configs" / "flmm_toy.yaml", [override])


def test_a_family_argument_is_accepted_without_knowing_the_family():
    cfg = load_config(None, ["model.lmm={model: Qwen/Qwen2.5-VL-7B-Instruct, grid: 32}"])
    assert cfg.model.lmm.grid == 32
    with pytest.raises(
        ConfigError, match=r"model\.lmm: an LMM adapter has no argument 'gird'.*'model\.lmm\.grid'"
    ):
        load_config(None, ["model.lmm={model: Qwen/Qwen2.5-VL-7B-Instruct, gird: 32}"])
