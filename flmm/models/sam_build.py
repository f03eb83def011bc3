"""Build SAM models: the official sizes from their checkpoints, and a tiny one for tests and toy configs.

`vit_b` / `vit_l` / `vit_h` use segment_anything's builders (through `flmm.models.sam_import`, which works
without torchvision) and need the official checkpoint; a missing file raises `MissingWeightsError` saying
what to download and where it goes.
"""

from functools import partial
from pathlib import Path

import torch
from torch import nn

from flmm.errors import ConfigError, MissingWeightsError
from flmm.models.sam_import import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
    sam_model_registry,
)

SAM_CHECKPOINT_FILES = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}
SAM_MODEL_TYPES = (*SAM_CHECKPOINT_FILES, "tiny")


def build_tiny_sam() -> Sam:
    """A SAM of the real architecture at toy sizes (input 128 px, 16x16 embedding of width 32, so 64x64
    low-resolution masks) for tests and the embedded default."""
    img_size, patch_size, prompt_dim = 128, 8, 32
    embedding_size = img_size // patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=32,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            out_chans=prompt_dim,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=4,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(img_size, img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=64, num_heads=2),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=32,
        ),
    )


def _missing_weights(model_type: str, checkpoint: str | None) -> MissingWeightsError:
    if model_type in SAM_CHECKPOINT_FILES:
        source = (
            f"download {SAM_CHECKPOINT_FILES[model_type]} from the segment-anything release "
            "(https://github.com/facebookresearch/segment-anything#model-checkpoints)"
        )
    else:
        source = "train or copy the checkpoint"
    if checkpoint is None:
        return MissingWeightsError(
            f"SAM {model_type} needs a checkpoint and none is configured; {source} and set "
            "model.refiner.checkpoint=<path to the .pth file>"
        )
    return MissingWeightsError(
        f"SAM {model_type} checkpoint not found at {checkpoint}; {source} and put it there, "
        "or set model.refiner.checkpoint=<path to the .pth file>"
    )


def build_sam(model_type: str, checkpoint: str | None = None) -> Sam:
    """Build SAM `vit_b` / `vit_l` / `vit_h` (checkpoint required) or `tiny` (checkpoint optional)."""
    if model_type not in SAM_MODEL_TYPES:
        raise ConfigError(f"refiner model_type={model_type!r} is unknown; expected one of {SAM_MODEL_TYPES}")
    if checkpoint is None and model_type != "tiny":
        raise _missing_weights(model_type, None)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise _missing_weights(model_type, checkpoint)
    sam = build_tiny_sam() if model_type == "tiny" else sam_model_registry[model_type]()
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam
