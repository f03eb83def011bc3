"""The memory of a training step, from the architecture: what a batch size needs, and what fits a GPU.

Parameters are counted on the meta device from the real module classes (no weights, no memory). The
activations follow what the step keeps alive at its peak:

- the frozen LMM forward runs without gradients, one decoder layer at a time, and keeps every layer's hidden
  states (`output_hidden_states`: (L + 1) x B x S x D) for the phrase tokens' features; inside a layer
  the MLP's three B x S x I projections are the largest transient;
- hooked capture keeps only the phrase tokens' rows over the image tokens, fp32 (T_p x L x H x N_img per
  sample); eager capture keeps every layer's whole B x H x S x S probabilities;
- SAM's image encoder (no gradients) materialises, in its global-attention blocks, heads x N x N fp32
  scores per image (N = 64 x 64 tokens at 1024 px) twice at its peak (the scores with their relative
  position terms added, then their softmax), `encoder_batch_size` images at a time; none with the cache;
- the trained parts (U-Net, SAM prompt encoder and decoder, projections) hold weights, gradients and two
  AdamW moments in fp32; their activations are small next to the above and are left out.

`estimate` is checked against measured CPU slices (`tools/benchmark.py --suite memory`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import torch

from flmm.lmm import LlavaAdapter
from flmm.lmm.tiny import llava_parts
from flmm.models.mask_head import UNetMaskHead
from flmm.models.sam_import import sam_model_registry

SAM_GLOBAL_TOKENS = 64 * 64  # SAM's 1024 px input at patch 16
SAM_HEADS = {"vit_b": 12, "vit_l": 16, "vit_h": 16}
GIB = 2**30


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def architecture_counts(sizes: dict, sam: str) -> dict[str, int]:
    """Parameter counts of the LMM, of SAM, and of what trains (U-Net + SAM prompt encoder and decoder)."""
    return dict(_counts(json.dumps(sizes, sort_keys=True), sam))


@functools.lru_cache(maxsize=16)
def _counts(sizes_json: str, sam: str) -> tuple[tuple[str, int], ...]:
    sizes = json.loads(sizes_json)
    config, _ = llava_parts(sizes)
    text = config.text_config
    with torch.device("meta"):
        lmm = LlavaAdapter.model_class._from_config(config)
        body = sam_model_registry[sam]()
        head = UNetMaskHead(text.num_hidden_layers * text.num_attention_heads)
    trained_sam = count_parameters(body.prompt_encoder) + count_parameters(body.mask_decoder)
    # The refiner's layer weights and phrase-token projection (D -> SAM prompt width 256).
    projection = text.num_hidden_layers + text.hidden_size * 256 + 256
    return (
        ("lmm", count_parameters(lmm)),
        ("sam", count_parameters(body)),
        ("trained", count_parameters(head) + trained_sam + projection),
    )


@dataclass
class StepMemory:
    """Bytes of one training step's peak, by part."""

    lmm_weights: int
    sam_weights: int
    trained_state: int
    lmm_activations: int
    capture: int
    sam_encoder: int

    @property
    def total(self) -> int:
        return sum(vars(self).values())


def estimate(
    sizes: dict,
    batch: int,
    seq_len: int,
    phrase_tokens: int,
    capture: str = "hooked",
    sam: str = "vit_l",
    lmm_bytes: int = 2,
    sam_cache: bool = False,
    encoder_batch_size: int = 4,
) -> StepMemory:
    """The peak of one step at `batch` samples of `seq_len` tokens with `phrase_tokens` phrase tokens each;
    `lmm_bytes` per LMM weight and activation (2: bf16). SAM runs in fp32."""
    counts = architecture_counts(sizes, sam)
    text, vision = sizes["text"], sizes["vision"]
    layers, heads, width = text["num_hidden_layers"], text["num_attention_heads"], text["hidden_size"]
    image_tokens = (vision["image_size"] // vision["patch_size"]) ** 2
    tokens = batch * seq_len
    activations = ((layers + 1) * width + 3 * text["intermediate_size"]) * tokens * lmm_bytes
    if capture == "hooked":
        kept = batch * phrase_tokens * layers * heads * image_tokens * 4
    else:
        kept = batch * layers * heads * seq_len * seq_len * lmm_bytes
    scores = 2 * SAM_HEADS[sam] * SAM_GLOBAL_TOKENS**2 * 4
    encoder = 0 if sam_cache else min(batch, encoder_batch_size) * scores
    return StepMemory(
        lmm_weights=counts["lmm"] * lmm_bytes,
        sam_weights=counts["sam"] * 4,
        trained_state=counts["trained"] * 16,  # fp32 weights, gradients and two AdamW moments
        lmm_activations=activations,
        capture=kept,
        sam_encoder=encoder,
    )


def largest_batch(capacity_bytes: int, **kwargs) -> int:
    """The largest batch (up to 4096) whose estimated peak fits `capacity_bytes`; 0 when not even 1 does.
    The estimate grows with the batch, so a bisection finds it."""
    low, high = 0, 4096
    while low < high:
        middle = (low + high + 1) // 2
        if estimate(batch=middle, **kwargs).total <= capacity_bytes:
            low = middle
        else:
            high = middle - 1
    return low
