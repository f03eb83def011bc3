"""A SAM checkpoint of another size, or a file that is no SAM checkpoint, is one ConfigError naming the file
and what it holds, before any model is built."""

from __future__ import annotations

import pytest
import torch

from flmm.errors import ConfigError
from flmm.models.sam_build import PATCH_EMBED_KEY, build_sam, build_tiny_sam, checkpoint_model_type


def _fake_sam_checkpoint(path, width):
    torch.save({PATCH_EMBED_KEY: torch.zeros(width, 3, 16, 16)}, path)
    return str(path)


@pytest.mark.parametrize(
    ("width", "held", "configured"),
    [(768, "vit_b", "vit_l"), (1024, "vit_l", "vit_h"), (1280, "vit_h", "vit_b"), (32, "tiny", "vit_l")],
)
def test_sam_checkpoint_of_another_size_names_the_file_and_both_sizes(tmp_path, width, held, configured):
    checkpoint = _fake_sam_checkpoint(tmp_path / f"sam_{held}.pth", width)
    with pytest.raises(ConfigError) as info:
        build_sam(configured, checkpoint)
    message = str(info.value)
    assert (
        f"model.refiner.checkpoint={checkpoint} holds SAM {held} weights (image encoder width {width})"
        in message
    )
    assert f"model.refiner.model_type={configured}; set model.refiner.model_type={held}" in message


def test_tiny_configured_with_official_weights_is_refused_before_building(tmp_path):
    checkpoint = _fake_sam_checkpoint(tmp_path / "sam_vit_l_0b3195.pth", 1024)
    with pytest.raises(ConfigError, match=r"holds SAM vit_l weights .*model_type=tiny"):
        build_sam("tiny", checkpoint)


def test_checkpoint_model_type_reads_the_patch_embedding_width():
    sizes = {
        w: checkpoint_model_type({PATCH_EMBED_KEY: torch.empty(w, 3, 1, 1)})
        for w in (768, 1024, 1280, 32, 99)
    }
    assert sizes == {768: "vit_b", 1024: "vit_l", 1280: "vit_h", 32: "tiny", 99: None}
    assert checkpoint_model_type(build_tiny_sam().state_dict()) == "tiny"


def _write_bytes(path):
    path.write_bytes(b"PK\x03\x04 this is no checkpoint")


NOT_SAM = {
    "random-bytes": (_write_bytes, "is not a loadable PyTorch checkpoint"),
    "other-state-dict": (
        lambda p: torch.save({"fc.weight": torch.zeros(2)}, p),
        r"is not a SAM checkpoint.*fc\.weight",
    ),
    "a-list": (lambda p: torch.save([1, 2], p), r"is not a SAM checkpoint.*found list"),
    "unknown-width": (
        lambda p: _fake_sam_checkpoint(p, 99),
        r"holds weights of no known SAM size \(.*width 99\)",
    ),
}


@pytest.mark.parametrize("case", NOT_SAM)
def test_file_that_is_not_a_sam_checkpoint_is_a_config_error_naming_it(tmp_path, case):
    write, message = NOT_SAM[case]
    path = tmp_path / "sam.pth"
    write(path)
    with pytest.raises(ConfigError, match=message) as info:
        build_sam("vit_l", str(path))
    assert f"model.refiner.checkpoint={path} " in str(info.value)


def test_checkpoint_that_does_not_fit_names_the_tensors(tmp_path):
    state = build_tiny_sam().state_dict()
    del state["mask_decoder.iou_token.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["mask_decoder.mask_tokens.weight"] = torch.zeros(1, 1)
    path = tmp_path / "tiny.pth"
    torch.save(state, path)
    with pytest.raises(ConfigError) as info:
        build_sam("tiny", str(path))
    message = str(info.value)
    assert message.startswith(f"model.refiner.checkpoint={path} does not fit SAM tiny: tensors ")
    assert "1 missing (e.g. ['mask_decoder.iou_token.weight'])" in message
    assert "1 unexpected (e.g. ['extra.weight'])" in message
    assert "1 of another shape (e.g. ['mask_decoder.mask_tokens.weight'])" in message
