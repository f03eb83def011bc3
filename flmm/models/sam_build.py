"""Build SAM models: the official sizes from their checkpoints, and a tiny one for tests and toy configs.

`vit_b` / `vit_l` / `vit_h` use segment_anything's builders (through `flmm.models.sam_import`, which works
without torchvision) and need the official checkpoint; a missing file raises `MissingWeightsError` saying
what to download and where it goes. A checkpoint that is not a SAM state dict, or holds another size than
`model_type`, is a `ConfigError` naming the file and both sizes, raised before any model is built.

The file format follows the suffix: `.safetensors` (the toy SAM; read without unpickling anything) or a
PyTorch `.pth` (Meta's official checkpoints; loaded with `weights_only=True`, which refuses code).
"""

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
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
TINY_EMBED_DIM = 32
# The image encoder's patch embedding, `(width, 3, patch, patch)`: its width tells the SAM size apart.
PATCH_EMBED_KEY = "image_encoder.patch_embed.proj.weight"
ENCODER_WIDTHS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h", TINY_EMBED_DIM: "tiny"}


def build_tiny_sam() -> Sam:
    """A SAM of the real architecture at toy sizes (input 128 px, 16x16 embedding of width 32, so 64x64
    low-resolution masks) for tests and the embedded default."""
    img_size, patch_size, prompt_dim = 128, 8, 32
    embedding_size = img_size // patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=TINY_EMBED_DIM,
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
            "model.refiner.checkpoint=<path to the checkpoint file>"
        )
    return MissingWeightsError(
        f"SAM {model_type} checkpoint not found at {checkpoint}; {source} and put it there, "
        "or set model.refiner.checkpoint=<path to the checkpoint file>"
    )


def is_safetensors(path: str | Path) -> bool:
    """Whether a SAM checkpoint path is read and written as safetensors (by its suffix), else as `.pth`."""
    return Path(path).suffix == ".safetensors"


def save_sam_checkpoint(state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Write a SAM state dict in the format `read_sam_checkpoint` reads for `path`'s suffix."""
    if is_safetensors(path):
        save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(path))
    else:
        torch.save(dict(state), path)


def _load_state(checkpoint: str) -> object:
    """What a SAM checkpoint file holds, read in the format of its suffix; ConfigError when it cannot be."""
    if is_safetensors(checkpoint):
        try:
            return load_file(checkpoint)
        except (SafetensorError, OSError) as exc:
            raise ConfigError(
                f"model.refiner.checkpoint={checkpoint} is not a readable safetensors file "
                f"({type(exc).__name__}: {exc})"
            ) from exc
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip, EOF and runtime errors alike for a non-checkpoint
        raise ConfigError(
            f"model.refiner.checkpoint={checkpoint} is not a loadable PyTorch checkpoint "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def read_sam_checkpoint(checkpoint: str) -> Mapping[str, torch.Tensor]:
    """The state dict in a SAM `.safetensors` or `.pth` file; ConfigError when the file cannot be read in
    that format or holds no SAM."""
    state = _load_state(checkpoint)
    patch_embed = state.get(PATCH_EMBED_KEY) if isinstance(state, Mapping) else None
    if not isinstance(patch_embed, torch.Tensor) or patch_embed.ndim != 4:
        found = list(state)[:3] if isinstance(state, Mapping) else type(state).__name__
        raise ConfigError(
            f"model.refiner.checkpoint={checkpoint} is not a SAM checkpoint: it has no 4-d "
            f"'{PATCH_EMBED_KEY}' tensor (found {found}); expected a segment-anything state dict such as "
            f"{SAM_CHECKPOINT_FILES['vit_l']}"
        )
    return state


def checkpoint_model_type(state: Mapping[str, torch.Tensor]) -> str | None:
    """The SAM size (`vit_b` / `vit_l` / `vit_h` / `tiny`) a state dict holds, after the width of its patch
    embedding `(width, 3, patch, patch)`; None for a width no known size has."""
    return ENCODER_WIDTHS.get(state[PATCH_EMBED_KEY].shape[0])


def _check_size(state: Mapping[str, torch.Tensor], model_type: str, checkpoint: str) -> None:
    held = checkpoint_model_type(state)
    if held == model_type:
        return
    width = state[PATCH_EMBED_KEY].shape[0]
    holds = f"SAM {held} weights" if held else "weights of no known SAM size"
    fix = f"set model.refiner.model_type={held}" if held else "use an official SAM checkpoint"
    if model_type in SAM_CHECKPOINT_FILES:
        fix += f", or point model.refiner.checkpoint at {SAM_CHECKPOINT_FILES[model_type]}"
    raise ConfigError(
        f"model.refiner.checkpoint={checkpoint} holds {holds} (image encoder width {width}), but "
        f"model.refiner.model_type={model_type}; {fix}"
    )


def _check_fits(state: Mapping[str, torch.Tensor], sam: Sam, checkpoint: str, model_type: str) -> None:
    """Compare names and shapes first: load_state_dict's own error lists every key of the model."""
    expected = sam.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and getattr(state[k], "shape", None) != expected[k].shape]
    if missing or unexpected or reshaped:
        problems = [
            f"{len(keys)} {what} (e.g. {keys[:3]})"
            for what, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("of another shape", reshaped),
            )
            if keys
        ]
        raise ConfigError(
            f"model.refiner.checkpoint={checkpoint} does not fit SAM {model_type}: tensors "
            f"{'; '.join(problems)}"
        )


def build_sam(model_type: str, checkpoint: str | None = None) -> Sam:
    """Build SAM `vit_b` / `vit_l` / `vit_h` (checkpoint required) or `tiny` (checkpoint optional).

    The checkpoint's size is checked before the model is built, so a wrong file costs no ViT-H.
    """
    if model_type not in SAM_MODEL_TYPES:
        raise ConfigError(f"refiner model_type={model_type!r} is unknown; expected one of {SAM_MODEL_TYPES}")
    if checkpoint is None and model_type != "tiny":
        raise _missing_weights(model_type, None)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise _missing_weights(model_type, checkpoint)
    state = None
    if checkpoint is not None:
        state = read_sam_checkpoint(checkpoint)
        _check_size(state, model_type, checkpoint)
    sam = build_tiny_sam() if model_type == "tiny" else sam_model_registry[model_type]()
    if state is not None:
        _check_fits(state, sam, checkpoint, model_type)
        sam.load_state_dict(state)
    return sam
