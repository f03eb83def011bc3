"""A task's metrics: its main one (PNG's average recall on narrative splits, RES's cIoU / gIoU elsewhere,
the same in validation and evaluation), those it adds beside it (per-group scores, a keyword selector's
token F1) and the ignore regions that some datasets take out of every metric.

A dataset may declare `query_groups = (field, values)`: each query's `field` names its group, and the task
reports `cIoU_<value>`, `gIoU_<value>` and `n_<value>` per group (ReasonSeg: short and long queries). A query
may carry `ignore_mask`, `(H, W)` bool: those pixels count neither in the intersection nor in the union
(ReasonSeg's "ignore" regions, as LISA scores them). A predictor with a keyword selector reports token
counts over the texts that carry word-selection labels (`phrases_select_words`); the task then reports
`selector_token_F1`, `selector_precision`, `selector_recall` and `selector_tokens` when it counted any
token. That is on narrative splits (PNG); RES and ReasonSeg texts are their phrases alone, so those splits
report no selector metric (the keys are absent, not 0 or NaN). A point-prompted predictor (attend-and-segment)
reports `pointing`: the percentage of queries whose point falls inside the target mask (ignored pixels off),
and `n_pointed`; other predictors report neither.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import Metric

from flmm.data.splits import parse_split
from flmm.engine.metrics import PngRecallMetrics, ResMetrics
from flmm.models.selector import TokenF1


def is_narrative_split(split: str) -> bool:
    """True for a Panoptic Narrative Grounding split (`png:*`), scored by average recall."""
    return parse_split(split)[0] == "png"


def main_metric(split: str) -> PngRecallMetrics | ResMetrics:
    """The metric `split` is scored by: `PngRecallMetrics` for PNG, `ResMetrics` for the rest."""
    return PngRecallMetrics() if is_narrative_split(split) else ResMetrics()


def headline_key(split: str) -> str:
    """The key of `split`'s main score in its metric's results (`AR` for PNG, `cIoU` for the rest)."""
    return "AR" if is_narrative_split(split) else "cIoU"


def validation_keys(split: str) -> tuple[str, ...]:
    """The keys of `split`'s main metric that validation logs (beside `coarse_<headline>`)."""
    return ("AR", "n_queries") if is_narrative_split(split) else ("cIoU", "gIoU", "P@0.5", "n_queries")


def update_main_metric(
    metric: PngRecallMetrics | ResMetrics,
    masks: list[torch.Tensor],
    targets: list[torch.Tensor],
    queries: list[dict],
) -> None:
    """Add P queries' bool masks and targets `(H, W)` (ignore regions already off, `without_ignored`)."""
    if isinstance(metric, PngRecallMetrics):
        metric.update(masks, targets, [q["isthing"] for q in queries], [q["plural"] for q in queries])
    else:
        metric.update(masks, targets, gt_boxes=[q["bbox"] for q in queries])


def without_ignored(masks: list[torch.Tensor], queries: list[dict]) -> list[torch.Tensor]:
    """Each query's bool mask `(H, W)` with the pixels of its `ignore_mask` (if any) switched off."""
    return [
        m if q.get("ignore_mask") is None else m & ~q["ignore_mask"].to(m.device)
        for m, q in zip(masks, queries, strict=True)
    ]


class TaskExtraMetrics(nn.Module):
    """Group metrics (for a dataset's `query_groups`) and selector token F1 of one evaluation task.

    Every update reaches every metric (empty groups and zero counts included), so every metric has been
    updated when all ranks compute it.
    """

    def __init__(self, dataset) -> None:
        super().__init__()
        self.field, values = getattr(dataset, "query_groups", None) or ("", ())
        self.groups = nn.ModuleDict({value: ResMetrics() for value in values})
        self.selector = TokenF1()
        self.pointing = PointingAccuracy()

    def reset(self) -> None:
        for metric in (*self.groups.values(), self.selector, self.pointing):
            metric.reset()

    def update(
        self,
        pred: list[torch.Tensor],
        target: list[torch.Tensor],
        queries: list[dict],
        selector_counts: torch.Tensor | None,
        points: torch.Tensor | None = None,
    ) -> None:
        """P bool masks and targets `(H, W)` (ignored pixels already off) with their queries, the
        selector's `(4,)` token counts of the batch or None, and the predictor's points `(P, 2)` or None."""
        for value, metric in self.groups.items():
            rows = [k for k, q in enumerate(queries) if q[self.field] == value]
            metric.update([pred[k] for k in rows], [target[k] for k in rows])
        counts = torch.zeros(4, dtype=torch.long) if selector_counts is None else selector_counts
        self.selector.update(counts)
        self.pointing.update(target, points)

    def compute(self) -> dict[str, float | int]:
        """Group metrics, then the selector's when it scored any labelled token (a collective under DDP)."""
        out: dict[str, float | int] = {}
        for value, metric in self.groups.items():
            result = metric.compute()
            out.update({f"cIoU_{value}": result["cIoU"], f"gIoU_{value}": result["gIoU"]})
            out[f"n_{value}"] = result["n_queries"]
        selection = self.selector.compute()
        if selection["selector_tokens"]:
            out.update(selection)
        pointing = self.pointing.compute()
        if pointing["n_pointed"]:
            out.update(pointing)
        return out


class PointingAccuracy(Metric):
    """Hits and queries of point predictions: a hit when the target mask holds the point's pixel."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("hits", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, target: list[torch.Tensor], points: torch.Tensor | None) -> None:
        """Targets `(H, W)` bool and points `(P, 2)` long `(x, y)`; None (no points): counts nothing."""
        if points is None:
            return
        for mask, (x, y) in zip(target, points.tolist(), strict=True):
            self.hits += int(mask[y, x])
            self.total += 1

    def compute(self) -> dict[str, float | int]:
        total = int(self.total)
        return {"pointing": 100.0 * int(self.hits) / total if total else 0.0, "n_pointed": total}
