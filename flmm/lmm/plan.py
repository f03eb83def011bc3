"""Index bookkeeping of one batch: which positions are phrase tokens and image tokens, per sample.

Everything is found per sample from the tensors themselves (`input_ids == image_token_id`,
`phrase_ids >= 0`, `attention_mask`), so it holds under left or right padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from flmm.lmm.capture import CaptureRequest
from flmm.lmm.layout import ImageLayout


@dataclass
class BatchPlan:
    """Positions to read from one forward pass.

    request: what the capture keeps (see `CaptureRequest`). phrase_batch_index, phrase_local: `(P,)` long,
    sample and within-sample index of each phrase, ordered by (sample, phrase). phrase_tokens: `(P, T_max)`
    long positions of each phrase's tokens, valid where `phrase_token_mask (P, T_max)` is True.
    """

    request: CaptureRequest
    phrase_batch_index: torch.Tensor
    phrase_local: torch.Tensor
    phrase_tokens: torch.Tensor
    phrase_token_mask: torch.Tensor


def positions_first(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Positions where `mask (R, S)` is True, ascending, in the first columns of an `(R, width)` tensor."""
    return torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :width]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """`(B, S)` positions counted over real tokens only, so a sample's positions do not depend on padding."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def plan_batch(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    phrase_ids: torch.Tensor,
    image_token_id: int,
    layouts: Sequence[ImageLayout],
) -> BatchPlan:
    """Build the plan; ValueError when shapes disagree, image-token counts do not match `layouts`, or a
    phrase index in 0..max has no token."""
    if not input_ids.shape == attention_mask.shape == phrase_ids.shape or input_ids.dim() != 2:
        raise ValueError(
            "input_ids, attention_mask and phrase_ids must all be (B, S); got "
            f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(phrase_ids.shape)}"
        )
    batch, _ = input_ids.shape
    if len(layouts) != batch:
        raise ValueError(f"{len(layouts)} images for a batch of {batch} texts")
    valid = attention_mask.bool()
    phrase_ids = phrase_ids.masked_fill(~valid, -1)

    is_image = (input_ids == image_token_id) & valid
    image_counts = is_image.sum(dim=1)
    for sample, layout in enumerate(layouts):
        if int(image_counts[sample]) != layout.num_tokens:
            raise ValueError(
                f"sample {sample} holds {int(image_counts[sample])} image tokens but its image yields "
                f"{layout.num_tokens}; encode the text with the adapter's encode_text for this image"
            )
    image_pos = positions_first(is_image, int(image_counts.max()))

    is_query = phrase_ids >= 0
    query_counts = is_query.sum(dim=1)
    tokens = int(query_counts.max())
    query_valid = torch.arange(tokens, device=input_ids.device)[None, :] < query_counts[:, None]
    # Padded query slots read a real token's row (any will do, its weight is 0) so no row is all-masked.
    first_real = valid.to(torch.uint8).argmax(dim=1, keepdim=True)
    query_pos = torch.where(query_valid, positions_first(is_query, tokens), first_real)

    num_phrases = phrase_ids.max(dim=1).values + 1
    max_phrases = int(num_phrases.max().clamp(min=0))
    query_phrase = phrase_ids.gather(1, query_pos).masked_fill(~query_valid, -1)
    one_hot = query_phrase[:, None, :] == torch.arange(max_phrases, device=input_ids.device)[None, :, None]
    token_counts = one_hot.sum(dim=2)
    phrase_exists = torch.arange(max_phrases, device=input_ids.device)[None, :] < num_phrases[:, None]
    empty = phrase_exists & (token_counts == 0)
    if empty.any():
        sample, phrase = (int(i) for i in empty.nonzero()[0])
        raise ValueError(
            f"sample {sample}: phrase {phrase} has no token (phrase ids must be 0..n-1, all used)"
        )
    weights = one_hot.float() / token_counts.clamp(min=1)[:, :, None]

    phrase_batch_index, phrase_local = phrase_exists.nonzero(as_tuple=True)
    phrase_mask = phrase_ids[phrase_batch_index] == phrase_local[:, None]
    per_phrase = token_counts[phrase_batch_index, phrase_local]
    width = int(per_phrase.max()) if per_phrase.numel() else 0
    phrase_token_mask = torch.arange(width, device=input_ids.device)[None, :] < per_phrase[:, None]
    phrase_tokens = positions_first(phrase_mask, width).masked_fill(~phrase_token_mask, 0)

    request = CaptureRequest(
        query_pos=query_pos, key_valid=valid, image_pos=image_pos, phrase_weights=weights
    )
    return BatchPlan(request, phrase_batch_index, phrase_local, phrase_tokens, phrase_token_mask)


def text_token_features(
    hidden_states: Sequence[torch.Tensor], text_mask: torch.Tensor, phrase_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The text tokens' (`text_mask (B, S)`) hidden states `(B, S_t, L, D)` float32 of the L layers'
    `hidden_states (B, S, D)`, their mask `(B, S_t)` and phrase ids `(B, S_t)` (-1 for none), zero-padded."""
    counts = text_mask.sum(dim=1)
    width = int(counts.max()) if counts.numel() else 0
    token_mask = torch.arange(width, device=text_mask.device)[None, :] < counts[:, None]
    positions = positions_first(text_mask, width).masked_fill(~token_mask, 0)
    rows = torch.arange(len(text_mask), device=text_mask.device)[:, None]
    hidden = torch.stack([h[rows, positions] for h in hidden_states], dim=2)
    return {
        "text_hidden": hidden.float() * token_mask[:, :, None, None],
        "text_token_mask": token_mask,
        "text_phrase_ids": phrase_ids.gather(1, positions).masked_fill(~token_mask, -1),
    }
