"""Attend-and-segment: training-free grounding from the frozen LMM's attention and SAM with a point prompt.

After "Emergent Visual Grounding in Large Multimodal Models Without Grounding Supervision" (Cao et al.):
a phrase's attention to the image tokens, in every layer and head, is normalised per channel (each map sums
to 1 over the grid, which drops the share that went to text and the BOS sink, as for the trained head),
aggregated over the channels, and its argmax becomes a single positive point prompt for SAM (the refiner's
frozen image encoder, prompt encoder and mask decoder, none of them trained here). SAM's three candidate
masks for an ambiguous point are ranked by its own IoU prediction; the best one is the phrase's mask and
that prediction its score.

Aggregation: the plain mean over all layers x heads by default, the paper's choice and the one with nothing
to tune. `top_fraction` keeps, per phrase, only that fraction of the channels with the highest spatial
entropy contrast `log(N) - H(map)` (the most concentrated maps), then averages them, for LMMs where many
heads spread their attention evenly. Neither choice has been measured on a real 7B LMM here yet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from flmm.engine.build import build_adapter, build_text_component
from flmm.engine.evaluate import PhrasePredictions
from flmm.errors import ConfigError
from flmm.lmm.adapter import LMMAdapter
from flmm.models.mask_head import PAD_META_FIELDS, _meta_field, content_window, normalize_attention
from flmm.models.sam_refiner import SamRefiner


def aggregate_attention(attention: torch.Tensor, top_fraction: float | None = None) -> torch.Tensor:
    """`(P, C, gh, gw)` raw attention -> `(P, gh, gw)` channel-normalised maps averaged over channels.

    top_fraction: in (0, 1]; per phrase, average only the ceil(top_fraction * C) channels of highest
    spatial entropy contrast. None: all channels.
    """
    maps = normalize_attention(attention.float())
    if top_fraction is None:
        return maps.mean(dim=1)
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must lie in (0, 1], got {top_fraction}")
    flat = maps.flatten(2)
    entropy = -(flat * flat.clamp_min(1e-12).log()).sum(dim=-1)  # (P, C)
    contrast = math.log(flat.shape[-1]) - entropy
    keep = max(1, math.ceil(top_fraction * maps.shape[1]))
    index = contrast.topk(keep, dim=1).indices
    chosen = maps.gather(1, index[:, :, None, None].expand(-1, -1, *maps.shape[-2:]))
    return chosen.mean(dim=1)


def attention_peaks(maps: torch.Tensor, image_index: torch.Tensor, pad_metas: Sequence[Any]) -> torch.Tensor:
    """`(P, g, g)` maps over the LMM's square input -> `(P, 2)` long `(x, y)` in original pixels: the centre
    of each map's highest cell among the cells on the image content (padding cells never win)."""
    side = maps.shape[-1]
    if maps.shape[-2] != side:
        raise ValueError(f"attention peaks need a square grid, got {tuple(maps.shape[-2:])}")
    peaks = []
    for grid, b in zip(maps, image_index.tolist(), strict=True):
        meta = {name: _meta_field(pad_metas[b], name) for name in PAD_META_FIELDS}
        top, left, height, width = content_window(meta, side)
        window = grid[top : top + height, left : left + width]
        row, col = divmod(int(window.flatten().argmax()), width)
        # Cell centre in pixels of the square input, then in the original image.
        square = meta["resized_h"] + meta["pad_top"] + meta["pad_bottom"]
        x = ((left + col + 0.5) * square / side - meta["pad_left"]) * meta["orig_w"] / meta["resized_w"]
        y = ((top + row + 0.5) * square / side - meta["pad_top"]) * meta["orig_h"] / meta["resized_h"]
        peaks.append((min(max(int(x), 0), meta["orig_w"] - 1), min(max(int(y), 0), meta["orig_h"] - 1)))
    return torch.tensor(peaks, dtype=torch.long).reshape(-1, 2)


@dataclass
class AttendOutput:
    """P phrases: mask logits `(H_i, W_i)` at original size, points `(P, 2)` (x, y) in original pixels,
    scores `(P,)` (SAM's predicted IoU of the chosen mask)."""

    masks: list[torch.Tensor]
    points: torch.Tensor
    scores: torch.Tensor


class AttendAndSegment(nn.Module):
    """The training-free grounder: a frozen LMM adapter and SAM (from a `SamRefiner`, used untrained).

    As an evaluation predictor (`forward(batch)`), it grounds a collated batch's phrases exactly as the
    trained head's `ModelPredictor` does, so its numbers stand beside the head's on the same splits.
    """

    def __init__(self, adapter: LMMAdapter, refiner: SamRefiner, top_fraction: float | None = None):
        super().__init__()
        self.adapter, self.refiner, self.top_fraction = adapter, refiner, top_fraction

    @torch.no_grad()
    def segment(
        self,
        attention: torch.Tensor,
        image_index: torch.Tensor,
        pad_metas: Sequence[Any],
        images: Sequence[torch.Tensor],
        image_embeddings: torch.Tensor | None = None,
    ) -> AttendOutput:
        """Ground P phrases of B images.

        attention: `(P, C, gh, gw)` (an adapter's `LMMOutput.attention`); image_index: `(P,)` long;
        pad_metas: B pad metas; images: B uint8 `(3, H_i, W_i)`; image_embeddings: optional cached
        `refiner.image_embeddings(images)` `(B, C_sam, h, w)`.
        """
        sam = self.refiner.sam
        if image_embeddings is None:
            image_embeddings = self.refiner.image_embeddings(images)
        image_index = image_index.cpu()
        points = attention_peaks(
            aggregate_attention(attention, self.top_fraction).cpu(), image_index, pad_metas
        )
        masks: list[torch.Tensor | None] = [None] * len(points)
        scores = torch.zeros(len(points))
        for b, image in enumerate(images):
            rows = (image_index == b).nonzero().flatten()
            if rows.numel() == 0:
                continue
            original = tuple(image.shape[-2:])
            size = self.refiner.input_size(*original)
            scale = torch.tensor([size[1] / original[1], size[0] / original[0]])
            coords = (points[rows].float() * scale)[:, None].to(image_embeddings.device)
            labels = torch.ones(len(rows), 1, device=image_embeddings.device)
            sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            low_res, iou = sam.mask_decoder(
                image_embeddings[b : b + 1],
                sam.prompt_encoder.get_dense_pe(),
                sparse,
                dense,
                multimask_output=True,
            )
            best = iou.argmax(dim=1)
            pick = torch.arange(len(rows), device=best.device)
            upsampled = sam.postprocess_masks(low_res[pick, best][:, None], size, original)[:, 0]
            for k, row in enumerate(rows.tolist()):
                masks[row] = upsampled[k]
                scores[row] = iou[k, best[k]].float().cpu()
        return AttendOutput(masks, points, scores)

    def forward(self, batch: dict) -> PhrasePredictions:
        """A collated batch (`flmm.data.collate`) -> its phrases' masks (evaluation predictor)."""
        encoded = self.adapter.encode_text(batch["text"], batch["phrase_spans"], batch["lmm_image"])
        lmm_out = self.adapter(
            encoded.input_ids, encoded.attention_mask, encoded.phrase_ids, batch["lmm_image"]
        )
        out = self.segment(lmm_out.attention, lmm_out.phrase_batch_index, batch["pad_meta"], batch["images"])
        return PhrasePredictions(out.masks)


def build_attend_and_segment(cfg: DictConfig, top_fraction: float | None = None) -> AttendAndSegment:
    """The config's frozen LMM and SAM (`model.refiner`; its trainable parts are not loaded from anywhere:
    SAM's own checkpoint weights are used as they are)."""
    adapter = build_adapter(cfg)
    refiner = build_text_component(cfg, adapter, "refiner")
    if refiner is None:
        raise ConfigError(
            "attend-and-segment needs SAM: the config's model.refiner is null; set it to a SamRefiner "
            "with model_type and checkpoint"
        )
    return AttendAndSegment(adapter, refiner.eval(), top_fraction)
