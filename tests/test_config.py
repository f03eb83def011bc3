"""Configs: YAML over a typed schema; typos and wrong types are one clear error naming the key."""

from __future__ import annotations

import pytest

from flmm.config import load_config
from flmm.errors import ConfigError


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
    from tests.conftest import REPO_ROOT

    for path in sorted((REPO_ROOT / "configs").glob("flmm_*.yaml")):
        assert load_config(path).data.root
