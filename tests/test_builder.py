"""Components are built from config sections through the registries; mistakes name the config key."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from torch import nn

from flmm.builder import build_component
from flmm.errors import ConfigError
from flmm.registry import LMM_ADAPTERS, MODELS


def test_a_user_registered_component_is_built_by_name_without_editing_flmm():
    @MODELS.register_module(name="UserHeadForTest", force=True)
    class UserHead(nn.Module):
        def __init__(self, in_channels: int, width: int = 8):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, width, 1)

    head = build_component(
        MODELS, "model.mask_head", OmegaConf.create({"type": "UserHeadForTest", "width": 3}), in_channels=5
    )
    assert isinstance(head, UserHead)
    assert head.conv.weight.shape == (3, 5, 1, 1)


def test_unknown_type_lists_the_registered_ones():
    import flmm.engine.build  # noqa: F401  (registers the built-in adapters)

    with pytest.raises(ConfigError, match=r"model\.lmm\.type: unknown 'Lava'.*LlavaAdapter"):
        build_component(LMM_ADAPTERS, "model.lmm", {"type": "Lava"})


def test_unknown_argument_names_the_key_and_what_is_accepted():
    import flmm.engine.build  # noqa: F401

    match = r"model\.mask_head: UNetMaskHead has no argument 'chanels'\. Did you mean 'model\.mask_head\.chan"
    with pytest.raises(ConfigError, match=match):
        build_component(MODELS, "model.mask_head", {"type": "UNetMaskHead", "chanels": [8]}, in_channels=4)


def test_missing_type_is_named():
    with pytest.raises(ConfigError, match=r"model\.refiner: missing 'type'"):
        build_component(MODELS, "model.refiner", {"model_type": "tiny"})
