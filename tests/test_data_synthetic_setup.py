"""Configs with a `data.synthetic` section generate their world on first use, and only then."""

from __future__ import annotations

import pytest

from flmm.config import load_config
from flmm.data.synthetic_setup import ensure_synthetic_world
from flmm.errors import ConfigError
from tests.conftest import REPO_ROOT


def _data(root, *extra):
    small = ["data.synthetic.n_res_images=12", "data.synthetic.n_png_images=0"]
    overrides = [f"data.root={root}", *small, *extra]
    return load_config(REPO_ROOT / "configs/flmm_toy.yaml", overrides).data


def test_world_is_generated_once_where_the_config_points(tmp_path):
    data = _data(tmp_path / "world", "data.synthetic.size=48")
    assert ensure_synthetic_world(data) is True
    assert (tmp_path / "world/coco/refcoco/refs(unc).p").is_file()
    assert ensure_synthetic_world(data) is False


def test_real_data_configs_generate_nothing(tmp_path):
    data = load_config(REPO_ROOT / "configs/flmm_llava7b.yaml", [f"data.root={tmp_path}"]).data
    assert ensure_synthetic_world(data) is False
    assert not any(tmp_path.iterdir())


def test_unknown_synthetic_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.synthetic: SyntheticConfig has no argument 'imgs'"):
        ensure_synthetic_world(_data(tmp_path, "data.synthetic.imgs=3"))
