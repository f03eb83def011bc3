"""Learned keyword selector: which tokens of a text name something to ground (F-LMM's keyword selection).

A small scorer over the frozen LMM's hidden states of every text token: the L decoder layers are mixed with
learnable softmax weights (as the refiner's language cue is), layer-normalised, and an MLP gives one logit
per token. It trains jointly with the mask head on the grounded texts of the training data whose phrases are
a selection of their words (PNG narratives): tokens inside a grounded phrase are positives, the other tokens
of the text negatives (binary cross-entropy, averaged per text, then over the texts). A RefCOCO text is
made of its expressions alone, so every token would be a positive: the caller leaves such texts out of the
token mask, and they teach the selector nothing. At demo time, contiguous runs of positive tokens of the
LMM's answer become the phrases to ground. `TokenF1` scores it on held-out texts with labels, i.e. on
narrative splits (PNG); a RES split has no labelled token and reports no F1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric

from flmm.registry import MODELS


@MODELS.register_module()
class KeywordSelector(nn.Module):
    """Text-token hidden states `(B, T, L, D)` -> keyword logits `(B, T)`.

    Args:
        hidden_size: D, width of the LMM hidden states (filled in from the adapter).
        num_layers: L, number of LMM decoder layers (filled in from the adapter).
        width: hidden width of the MLP.
        loss_weight: weight of the selector loss in the training loss.
        threshold: probability above which a token is selected.
    """

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        width: int = 256,
        loss_weight: float = 1.0,
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"selector threshold must lie in (0, 1), got {threshold}")
        self.loss_weight = float(loss_weight)
        self.threshold = float(threshold)
        self.layer_weights = nn.Parameter(torch.zeros(num_layers))
        self.mlp = nn.Sequential(
            nn.LayerNorm(hidden_size), nn.Linear(hidden_size, width), nn.GELU(), nn.Linear(width, 1)
        )

    def forward(self, text_hidden: torch.Tensor) -> torch.Tensor:
        """`(B, T, L, D)` hidden states of the text tokens -> `(B, T)` logits (padding is scored too)."""
        weights = self.layer_weights.softmax(dim=0)
        mixed = torch.einsum("btld,l->btd", text_hidden.to(weights.dtype), weights)
        return self.mlp(mixed.to(self.mlp[1].weight.dtype))[..., 0]

    def select(self, logits: torch.Tensor) -> torch.Tensor:
        """`(B, T)` logits -> `(B, T)` bool, True where sigmoid(logit) > threshold."""
        return logits.float().sigmoid() > self.threshold

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy, averaged over each text's masked tokens, summed over the texts, divided by B.

        logits: `(B, T)`; labels: `(B, T)` bool (token inside a grounded phrase); mask: `(B, T)` bool, the
        tokens that carry labels. Every text weighs 1/B whatever its length, like the mask losses weigh
        every image the same; a text without a masked token adds 0 (and still weighs in B), so a text's
        weight does not depend on how many labelled texts share its batch, and a batch split over DDP ranks
        gives the same gradient as in one process.
        """
        per_token = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
        per_text = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return per_text.sum() / logits.shape[0]


def token_counts(selected: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`(4,)` long: true positives, false positives, false negatives and tokens, over the masked tokens of
    `(B, T)` bool tensors."""
    selected, labels = selected & mask, labels & mask
    return torch.stack(
        [(selected & labels).sum(), (selected & ~labels).sum(), (~selected & labels).sum(), mask.sum()]
    ).long()


class TokenF1(Metric):
    """Token-level precision, recall and F1 of a keyword selector, from summed counts (exact under DDP).

    `compute()` returns `selector_token_F1`, `selector_precision`, `selector_recall` in percent (NaN when
    undefined) and `selector_tokens`, the number of labelled text tokens scored. It is 0 on a split whose
    texts carry no word-selection labels (RES); callers then report no selector metric at all.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("counts", default=torch.zeros(4, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, counts: torch.Tensor) -> None:
        """Add `(4,)` counts from `token_counts`."""
        self.counts += counts.to(self.counts.device)

    def compute(self) -> dict[str, float | int]:
        tp, fp, fn, tokens = (int(c) for c in self.counts)
        nan = float("nan")
        return {
            "selector_token_F1": 100 * 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan,
            "selector_precision": 100 * tp / (tp + fp) if tp + fp else nan,
            "selector_recall": 100 * tp / (tp + fn) if tp + fn else nan,
            "selector_tokens": tokens,
        }
