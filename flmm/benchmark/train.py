"""The `train` suite: samples/s and peak memory of one training step, flmm's configuration vs the reference
recipe's (F-LMM), run by the same code.

- `reference`: batch 1, eager capture (every layer's and head's full attention probabilities), SAM's image
  encoder run at every step, one mask-decoder call per phrase;
- `flmm`: batch `batch`, hooked capture (only the phrase rows, recomputed from q/k), the encoder at every
  step, phrases decoded together (one call per phrase-token count);
- `flmm+cache`: `flmm` with the SAM embedding cache warm (every epoch after the first).

A step is the LMM forward with capture, the U-Net, the SAM refiner, the losses, backward and AdamW, under
bf16 autocast on CUDA; its samples/s is the batch over the mean step time.
"""

from __future__ import annotations

import torch

from flmm.benchmark.measure import measure
from flmm.benchmark.models import build_adapter, preset_sizes, synthetic_batch
from flmm.models.grounding import GroundingModel
from flmm.models.losses import grounding_losses
from flmm.models.mask_head import UNetMaskHead, crop_padding
from flmm.models.sam_import import sam_model_registry
from flmm.models.sam_refiner import SamRefiner

CONFIGS = ("reference", "flmm", "flmm+cache")


# The mask heads of configs/flmm_toy.yaml and configs/flmm_llava7b.yaml (UNetMaskHead's defaults).
HEADS = {
    "toy": {"channels": [32, 64, 128, 256], "size": 64},
    "llava7b": {"channels": [64, 128, 256, 512], "size": 64},
    "llava7b-slice": {"channels": [64, 128, 256, 512], "size": 64},
}


def build_model(adapter, preset: str, sam: str, cache: bool, device: torch.device) -> GroundingModel:
    """The preset's U-Net head + SAM refiner (`sam`: tiny, vit_b, vit_l or vit_h, random weights)."""
    text = adapter.text_config()
    torch.manual_seed(0)
    body = None if sam == "tiny" else sam_model_registry[sam]()
    refiner = SamRefiner(
        text.hidden_size,
        text.num_hidden_layers,
        model_type=sam,
        sam=body,
        embedding_cache="memory" if cache else None,
    )
    return GroundingModel(UNetMaskHead(adapter.channels, **HEADS[preset]), refiner).to(device)


def per_phrase_refined(model: GroundingModel, out, data) -> list[torch.Tensor]:
    """The reference's refinement: the image encoded once per step, then one decoder call per phrase."""
    coarse = crop_padding(model.mask_head(out.attention), out.phrase_batch_index, data.pad_meta)
    embeddings = model.refiner.encode_images(data.images)
    refined = []
    for p in range(len(coarse)):
        b = int(out.phrase_batch_index[p])
        one = model.refiner(
            [data.images[b]],
            [coarse[p]],
            torch.zeros(1, dtype=torch.long, device=out.phrase_batch_index.device),
            out.hidden_states[p : p + 1],
            out.hidden_mask[p : p + 1],
            embeddings[b : b + 1],
        )
        refined += one.masks
    return coarse, refined


def train_step(config: str, adapter, model, optimizer, data, device: torch.device, dtype: torch.dtype):
    """A call running one optimisation step of `config` on `data`."""
    encoded = data.encode(adapter)
    inputs = (encoded.input_ids, encoded.attention_mask, encoded.phrase_ids, data.lmm_image)
    targets = [mask for masks in data.masks for mask in masks]

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = adapter(*inputs)
            if config == "reference":
                coarse, refined = per_phrase_refined(model, out, data)
            else:
                pred = model(
                    out.attention,
                    out.phrase_batch_index,
                    data.pad_meta,
                    data.images,
                    out.hidden_states,
                    out.hidden_mask,
                )
                coarse, refined = pred.coarse, pred.refined
            loss = grounding_losses(coarse, refined, targets)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def train_rows(
    preset: str,
    device: torch.device,
    dtype: torch.dtype,
    batch: int,
    sam: str,
    seq_len: int | None = None,
    phrases: int = 3,
    repeats: int = 3,
    slice_layers: int = 2,
) -> list[dict]:
    """One row per config: {"preset", "config", "batch", "sam", "seq_len", "samples_per_s", "seconds",
    "peak_bytes", "extra_bytes"}."""
    sizes = preset_sizes(preset, slice_layers)
    rows = []
    for config in CONFIGS:
        capture = "eager" if config == "reference" else "hooked"
        adapter, _ = build_adapter(sizes, capture, device, dtype)
        model = build_model(adapter, preset, sam, cache=config == "flmm+cache", device=device)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        size = 1 if config == "reference" else batch
        data = synthetic_batch(adapter, size, phrases, seq_len, device)
        result = measure(train_step(config, adapter, model, optimizer, data, device, dtype), device, repeats)
        rows.append(
            {
                "preset": preset,
                "config": config,
                "batch": size,
                "sam": sam,
                "seq_len": int(data.encode(adapter).input_ids.shape[1]),
                "samples_per_s": size / result.seconds,
                "seconds": result.seconds,
                "peak_bytes": result.peak_bytes,
                "extra_bytes": result.extra_bytes,
            }
        )
        del adapter, model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows
