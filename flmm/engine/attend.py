"""Attend-and-segment: training-free grounding from the frozen LMM's attention and SAM with a point prompt.

After "Emergent Visual Grounding in Large Multimodal Models Without Grounding Supervision" (Cao et al.).
Two variants (`attend.variant` in the config, `--variant` in tools/test.py and tools/demo.py):

`flmm` (written from the paper's wording): a phrase's map is the mean over its tokens of each token's own
attention row (teacher-forced) to the image tokens, in every layer and head; each channel is normalised (each
map sums to 1 over the grid, which drops the share that went to text and the BOS sink, but removes no
spatial sink), the channels are averaged, and the centre of the argmax grid cell becomes a single positive
point prompt for SAM (the refiner's frozen image encoder, prompt encoder and mask decoder, none of them
trained here). SAM's three candidate masks are ranked by its own IoU prediction; the best one is the
phrase's mask and that prediction its score.

`authors` (what the authors' released code, Shengcao-Cao/groundLMM aas/infer_attn.py and aas/gcg.py,
computes): each token's map is the *emitting* row (the query of the position before the token: the
generation step that emits it; in a teacher-forced pass the previous position's row), raw probabilities
averaged over the kept heads (`heads`: all, or `authors`, head H-2 of every layer as their slice keeps);
the mean of those maps over all tokens of the response (the text being grounded) is subtracted from each
(sink removal); a phrase's map is the mean over its root word's tokens (`root_word_span`: a spaCy
dependency parse when installed, else the phrase's last word); the map is upsampled bicubically to the
image (pad mode: the square input at the image's scale, then the image's window) and its argmax *pixel* is
the point; SAM's *last* multimask output is the mask and its predicted IoU the score.

Aggregation of the `flmm` variant: the plain mean over all layers x heads by default. `top_fraction` keeps,
per phrase, only that fraction of the channels with the highest spatial entropy contrast `log(N) - H(map)`
(the most concentrated maps), then averages them (the `flmm` variant only).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from flmm.engine.build import build_adapter, build_text_component
from flmm.engine.evaluate import PhrasePredictions
from flmm.errors import ConfigError
from flmm.lmm.adapter import LMMAdapter
from flmm.models.mask_head import PAD_META_FIELDS, _meta_field, content_window, normalize_attention
from flmm.models.sam_refiner import SamRefiner

VARIANTS = ("authors", "flmm")
DEFAULT_VARIANT = "flmm"
HEAD_CHOICES = ("all", "authors")
# A word of the fallback root-word rule (the phrase's last word).
_WORD = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*")


def select_heads(attention: torch.Tensor, num_heads: int, heads: str = "all") -> torch.Tensor:
    """`(P, C, gh, gw)` with channel = (view * L + layer) * H + head -> the channels `heads` keeps.

    all: every channel. authors: head index H - 2 of every layer (and view), what the authors' slice
    `x[:, -2:-1, :]` on `(batch, heads, q, k)` attention keeps (one head per layer, though their comment says
    all heads); needs H >= 2.
    """
    if heads not in HEAD_CHOICES:
        raise ConfigError(f"attend.heads: expected one of {HEAD_CHOICES}, got {heads!r}")
    if heads == "all":
        return attention
    if num_heads < 2 or attention.shape[1] % num_heads:
        raise ConfigError(f"attend.heads=authors keeps head H-2 of each layer: needs H >= 2, got {num_heads}")
    grouped = attention.unflatten(1, (attention.shape[1] // num_heads, num_heads))
    return grouped[:, :, num_heads - 2]


def sink_removed(token_maps: torch.Tensor) -> torch.Tensor:
    """`(T, ...)` per-token maps of one response -> each minus the mean map over the T tokens (the sink:
    what every token attends to whatever it is, e.g. a few high-norm image cells)."""
    return token_maps - token_maps.mean(dim=0, keepdim=True)


def root_word_span(phrase: str, start: int = 0) -> tuple[tuple[int, int], str]:
    """The char span (offset by `start`) of a phrase's root word and the rule that found it.

    With spaCy and an English model installed (`en_core_web_sm`, ...): the syntactic root of the phrase's
    dependency parse (`doc[:].root`, the authors' noun-chunk root), rule `spacy:<model>`. Otherwise the
    phrase's last word (letters/digits, so trailing punctuation is skipped), rule `last-word`; a phrase with
    no word: the whole phrase.
    """
    nlp = _spacy_model()
    if nlp is not None:
        doc = nlp(phrase)
        if len(doc):
            root = doc[:].root
            return (start + root.idx, start + root.idx + len(root.text)), f"spacy:{nlp.meta['name']}"
    words = list(_WORD.finditer(phrase))
    if not words:
        return (start, start + len(phrase)), "last-word"
    return (start + words[-1].start(), start + words[-1].end()), "last-word"


@functools.cache
def _spacy_model():
    """spaCy's first installed English pipeline, or None (spaCy or a model missing)."""
    try:
        import spacy
    except ImportError:
        return None
    for name in ("en_core_web_sm", "en_core_web_md", "en_core_web_lg", "en_core_web_trf"):
        try:
            return spacy.load(name)
        except OSError:
            continue
    return None


def root_word_rule() -> str:
    """`spacy:<model>` when a dependency parse picks root words here, else `last-word`."""
    return root_word_span("word")[1]


def root_tokens(offsets: Sequence[tuple[int, int]], text: str, span: tuple[int, int]) -> list[int]:
    """Indices of the tokens (char `offsets` into `text`) that overlap the root word of `text[span]`; the
    phrase's own tokens when none does (a tokenizer whose offsets miss the word)."""
    (r0, r1), _ = root_word_span(text[span[0] : span[1]], span[0])
    chosen = [k for k, (s, e) in enumerate(offsets) if s < r1 and e > r0]
    if not chosen:
        chosen = [k for k, (s, e) in enumerate(offsets) if s < span[1] and e > span[0]]
    if not chosen:
        raise ValueError(f"no token of the text covers the phrase {text[span[0] : span[1]]!r}")
    return chosen


def authors_phrase_maps(
    token_attention: torch.Tensor,
    num_heads: int,
    heads: str,
    members: Sequence[Sequence[int]],
) -> torch.Tensor:
    """The authors' map of each phrase of one response, on the grid.

    token_attention: `(T, C, gh, gw)` raw attention of the response's T tokens, each token's *emitting* row
    (the query of the position before it); members: per phrase, the indices of its root-word tokens.
    Returns `(P, gh, gw)`: the kept heads' (`select_heads`) raw probabilities averaged, minus the mean of
    that over all T tokens (`sink_removed`), averaged over each phrase's members. Every step is linear, so
    the order (subtract per channel first, as the authors do, or after the channel mean) gives the same map.
    """
    maps = sink_removed(select_heads(token_attention.float(), num_heads, heads).mean(dim=1))
    return torch.stack([maps[list(m)].mean(dim=0) for m in members])


def pixel_peaks(maps: torch.Tensor, image_index: torch.Tensor, pad_metas: Sequence[Any]) -> torch.Tensor:
    """`(P, g, g)` maps over the LMM's square input -> `(P, 2)` long `(x, y)`: the argmax pixel of each map
    upsampled bicubically to the image (the square input at the original image's scale, then the image's
    window cropped out of it: for pad-to-square families the authors' max(H, W) square and centre crop)."""
    side = maps.shape[-1]
    if maps.shape[-2] != side:
        raise ValueError(f"attention peaks need a square grid, got {tuple(maps.shape[-2:])}")
    peaks = []
    for grid, b in zip(maps.float(), image_index.tolist(), strict=True):
        meta = {name: _meta_field(pad_metas[b], name) for name in PAD_META_FIELDS}
        sy, sx = meta["orig_h"] / meta["resized_h"], meta["orig_w"] / meta["resized_w"]
        square = meta["resized_h"] + meta["pad_top"] + meta["pad_bottom"]
        size = (max(round(square * sy), meta["orig_h"]), max(round(square * sx), meta["orig_w"]))
        up = F.interpolate(grid[None, None], size=size, mode="bicubic", align_corners=False)[0, 0]
        top = min(round(meta["pad_top"] * sy), size[0] - meta["orig_h"])
        left = min(round(meta["pad_left"] * sx), size[1] - meta["orig_w"])
        window = up[top : top + meta["orig_h"], left : left + meta["orig_w"]]
        y, x = divmod(int(window.flatten().argmax()), meta["orig_w"])
        peaks.append((x, y))
    return torch.tensor(peaks, dtype=torch.long).reshape(-1, 2)


def emitting_ids(text_mask: torch.Tensor) -> torch.Tensor:
    """`(B, S)` bool text-token mask -> `(B, S)` long ids: position s holds the index (within its sample's
    text) of the token at s + 1, -1 elsewhere. Captured as phrases, they give each text token the attention
    row of the query before it: the generation step that emits the token (the prompt's last position for
    the first one)."""
    ids = (text_mask.long().cumsum(dim=1) - 1).masked_fill(~text_mask, -1)
    return F.pad(ids[:, 1:], (0, 1), value=-1)


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

    variant: `flmm` or `authors` (module docstring); heads: `all` or `authors` (the `authors` variant only);
    top_fraction: the `flmm` variant's channel selection. As an evaluation predictor (`forward(batch)`), it
    grounds a collated batch's phrases as the trained head's `ModelPredictor` does, so its numbers stand
    beside the head's on the same splits; its predictions also carry the points (pointing accuracy).
    """

    def __init__(
        self,
        adapter: LMMAdapter,
        refiner: SamRefiner,
        top_fraction: float | None = None,
        variant: str = "flmm",
        heads: str = "all",
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"attend.variant: expected one of {VARIANTS}, got {variant!r}")
        if heads not in HEAD_CHOICES:
            raise ConfigError(f"attend.heads: expected one of {HEAD_CHOICES}, got {heads!r}")
        if variant == "flmm" and heads != "all":
            raise ConfigError("attend.heads=authors belongs to attend.variant=authors")
        if variant == "authors" and top_fraction is not None:
            raise ConfigError("--top-heads (top_fraction) belongs to attend.variant=flmm")
        self.adapter, self.refiner, self.top_fraction = adapter, refiner, top_fraction
        self.variant, self.heads = variant, heads

    def describe(self) -> dict[str, str]:
        """What this grounder computes, for results.json and the demo's output."""
        if self.variant == "flmm":
            return {"variant": "flmm", "heads": "all"}
        return {"variant": "authors", "heads": self.heads, "root_word": root_word_rule()}

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

        attention: `(P, C, gh, gw)` (an adapter's `LMMOutput.attention`) for the `flmm` variant; for the
        `authors` variant, the phrases' finished maps `(P, gh, gw)` (`authors_phrase_maps`). image_index:
        `(P,)` long; pad_metas: B pad metas; images: B uint8 `(3, H_i, W_i)`; image_embeddings: optional
        cached `refiner.image_embeddings(images)` `(B, C_sam, h, w)`.
        """
        image_index = image_index.cpu()
        if self.variant == "flmm":
            maps = aggregate_attention(attention, self.top_fraction).cpu()
            points = attention_peaks(maps, image_index, pad_metas)
        else:
            points = pixel_peaks(attention.cpu(), image_index, pad_metas)
        return self.prompt_sam(points, image_index, images, image_embeddings)

    def prompt_sam(
        self,
        points: torch.Tensor,
        image_index: torch.Tensor,
        images: Sequence[torch.Tensor],
        image_embeddings: torch.Tensor | None = None,
    ) -> AttendOutput:
        """One positive point per phrase `(P, 2)` (x, y original pixels) -> SAM's mask (multimask output:
        the best predicted IoU for `flmm`, the last of the three for `authors`)."""
        sam = self.refiner.sam
        if image_embeddings is None:
            image_embeddings = self.refiner.image_embeddings(images)
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
            chosen = choose_masks(iou, "best-iou" if self.variant == "flmm" else "last")
            pick = torch.arange(len(rows), device=chosen.device)
            upsampled = sam.postprocess_masks(low_res[pick, chosen][:, None], size, original)[:, 0]
            for k, row in enumerate(rows.tolist()):
                masks[row] = upsampled[k]
                scores[row] = iou[k, chosen[k]].float().cpu()
        return AttendOutput(masks, points, scores)

    def forward(self, batch: dict) -> PhrasePredictions:
        """A collated batch (`flmm.data.collate`) -> its phrases' masks and points (evaluation predictor).

        `authors`: every text token is captured with its emitting row (`emitting_ids`: teacher-forced, the
        previous position's row, which is the row of the generation step that emits it), so the response
        mean and the root-word tokens come from one forward."""
        encoded = self.adapter.encode_text(batch["text"], batch["phrase_spans"], batch["lmm_image"])
        if self.variant == "flmm":
            lmm_out = self.adapter(
                encoded.input_ids, encoded.attention_mask, encoded.phrase_ids, batch["lmm_image"]
            )
            attention, image_index = lmm_out.attention, lmm_out.phrase_batch_index
        else:
            text_mask = encoded.text_mask
            lmm_out = self.adapter(
                encoded.input_ids, encoded.attention_mask, emitting_ids(text_mask), batch["lmm_image"]
            )
            attention, index = [], []
            for b, (text, spans) in enumerate(zip(batch["text"], batch["phrase_spans"], strict=True)):
                offsets = [tuple(o) for o in encoded.text_offsets[b][text_mask[b]].tolist()]
                members = [root_tokens(offsets, text, tuple(span)) for span in spans]
                token_maps = lmm_out.attention[lmm_out.phrase_batch_index.cpu() == b]
                attention.append(authors_phrase_maps(token_maps, self.adapter.num_heads, self.heads, members))
                index += [b] * len(spans)
            attention, image_index = torch.cat(attention), torch.tensor(index, dtype=torch.long)
        out = self.segment(attention, image_index, batch["pad_meta"], batch["images"])
        return PhrasePredictions(out.masks, points=out.points)


def choose_masks(iou: torch.Tensor, rule: str) -> torch.Tensor:
    """SAM's multimask output `iou (N, 3)` -> `(N,)` long index of the mask kept: `best-iou` (the highest
    predicted IoU, flmm) or `last` (the third, always: the authors' choice)."""
    if rule == "best-iou":
        return iou.argmax(dim=1)
    if rule == "last":
        return torch.full((iou.shape[0],), iou.shape[1] - 1, dtype=torch.long, device=iou.device)
    raise ValueError(f"mask choice must be best-iou or last, got {rule!r}")


def attend_settings(cfg: DictConfig, variant: str | None = None, heads: str | None = None) -> dict[str, str]:
    """The config's `attend` section with the command line's `--variant` / `--heads` over it."""
    section = cfg.get("attend") or {}
    return {
        "variant": variant or section.get("variant", DEFAULT_VARIANT),
        "heads": heads or section.get("heads", "all"),
    }


def build_attend_and_segment(
    cfg: DictConfig,
    top_fraction: float | None = None,
    variant: str | None = None,
    heads: str | None = None,
) -> AttendAndSegment:
    """The config's frozen LMM and SAM (`model.refiner`; its trainable parts are not loaded from anywhere:
    SAM's own checkpoint weights are used as they are); the variant and heads of the config's `attend`
    section unless given."""
    settings = attend_settings(cfg, variant, heads)
    adapter = build_adapter(cfg)
    refiner = build_text_component(cfg, adapter, "refiner")
    if refiner is None:
        raise ConfigError(
            "attend-and-segment needs SAM: the config's model.refiner is null; set it to a SamRefiner "
            "with model_type and checkpoint"
        )
    return AttendAndSegment(adapter, refiner.eval(), top_fraction, **settings)
