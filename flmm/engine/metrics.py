"""Evaluation metrics of DESIGN §4 as torchmetrics Metrics whose states are integer sums.

`ResMetrics` gives cIoU, gIoU, precision@{0.5..0.9} and REC@0.5 (box of the predicted mask) for referring
segmentation; `PngRecallMetrics` gives the Panoptic Narrative Grounding average recall for all queries and
for things, stuff, singulars and plurals; `format_results_table` turns their results into Markdown.

Every state is an int64 sum reduced with `dist_reduce_fx="sum"`, so the states of several processes add up
to exactly the state one process would hold for all their queries, in any order and any split (which
queries reach which process, and that none is counted twice, is the sampler's business, not ours).
The per-query IoU is summed in fixed point, in units of 2**-30, instead of as a float: a float sum depends
on the order of addition, the fixed-point one does not, and rounding each IoU to 1e-9 is far below the
0.01 percent the results are reported to. Thresholds are compared in integers (`10 * I >= 7 * U`), so an
IoU of exactly 0.7 counts at 0.7 without depending on how 0.7 rounds in binary.

Decisions:
- precision@t and every recall threshold count IoU >= t, as the referring-segmentation evaluations do
  (`seg_correct += this_iou >= eval_seg_iou`), and REC counts a box IoU >= 0.5 as a hit.
- A query whose prediction and target are both empty has IoU 1 (it counts in gIoU and precision@t) and adds
  nothing to cIoU's sums.
- A rate with nothing to average (no query, a PNG group with no query, REC without any ground-truth box) is
  NaN: the results stay floats that can be logged, and a table shows them as "-".
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import torch
from torchmetrics import Metric

from flmm.masks import box_xywh, mask_box

IOU_SCALE = 2**30
"""Fixed-point unit of the summed IoU; masks must have fewer than 2**33 pixels to avoid int64 overflow."""

PRECISION_TENTHS = (5, 6, 7, 8, 9)
"""precision@t thresholds in tenths: 0.5 .. 0.9."""

CURVE_STEPS = 100
"""PNG recall curve thresholds k / 100 for k = 0 .. 99, as the reference's `np.arange(0, 1, step)`."""

PNG_GROUPS = ("all", "things", "stuff", "singulars", "plurals")

Box = tuple[float, float, float, float]


def binarize(logits: torch.Tensor) -> torch.Tensor:
    """Mask logits of any shape -> bool mask `sigmoid(logits) > 0.5`, computed in float32.

    This is `logits > 0` except for |logits| below ~6e-8, where the float32 sigmoid rounds to exactly 0.5
    and the pixel is off, as in the reference evaluations that threshold the sigmoid.
    """
    return logits.float().sigmoid() > 0.5


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two COCO `[x, y, w, h]` boxes; 0 when their union has no area."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def intersection_union(
    pred: Sequence[torch.Tensor], target: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel counts of P bool mask pairs `(H_p, W_p)` -> intersection `(P,)` and union `(P,)`, int64."""
    if len(pred) != len(target):
        raise ValueError(f"pred has {len(pred)} masks but target has {len(target)}; need one per query")
    inter, union = [], []
    for q, (p, t) in enumerate(zip(pred, target)):
        for field, m in (("pred", p), ("target", t)):
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.ndim != 2:
                what = f"{m.dtype} {tuple(m.shape)}" if isinstance(m, torch.Tensor) else type(m).__name__
                raise ValueError(
                    f"{field}[{q}] is {what}; expected a bool (H, W) mask (threshold logits with binarize)"
                )
        if p.shape != t.shape:
            raise ValueError(
                f"pred[{q}] {tuple(p.shape)} and target[{q}] {tuple(t.shape)} differ in shape; "
                "compare masks at the original image size"
            )
        t = t.to(p.device)
        inter.append(torch.count_nonzero(p & t))
        union.append(torch.count_nonzero(p | t))
    if not inter:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.stack(inter).long(), torch.stack(union).long()


def fixed_point_iou(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """`(P,)` int64 counts -> `(P,)` int64 IoU in units of 1 / IOU_SCALE, rounded; empty union -> 1."""
    ratio = torch.div(inter * IOU_SCALE + union // 2, union.clamp(min=1), rounding_mode="floor")
    return torch.where(union > 0, ratio, torch.full_like(ratio, IOU_SCALE))


def _boxes(boxes: Sequence | torch.Tensor, n: int, field: str, allow_none: bool) -> list[Box | None]:
    """`(P, 4)` tensor or P `[x, y, w, h]` entries (None allowed for predictions) -> list of tuples."""
    rows = boxes.tolist() if isinstance(boxes, torch.Tensor) else list(boxes)
    if len(rows) != n:
        raise ValueError(f"{field} has {len(rows)} boxes but there are {n} queries; need one per query")
    out: list[Box | None] = []
    for q, box in enumerate(rows):
        if box is None and allow_none:
            out.append(None)
            continue
        if box is None or len(box) != 4:
            raise ValueError(f"{field}[{q}] is {box!r}; expected a COCO box [x, y, w, h]")
        out.append(tuple(float(v) for v in box))
    return out


def _rate(num: int, den: int) -> float:
    """`100 * num / den` in percent, NaN when there is nothing to average."""
    return 100 * num / den if den > 0 else math.nan


class ResMetrics(Metric):
    """Referring-segmentation metrics over queries (one expression, one mask each).

    `compute()` returns, in percent: `cIoU` = 100 sum(I) / sum(U) (100 when every union is empty),
    `gIoU` = 100 mean(IoU), `P@0.5` .. `P@0.9` = 100 mean(IoU >= t), `REC@0.5` = 100 mean(box IoU >= 0.5)
    over the queries given ground-truth boxes, and `n_queries` (int).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("intersection", "union", "iou_sum", "n_queries", "rec_hits", "rec_count"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state(
            "hits", default=torch.zeros(len(PRECISION_TENTHS), dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(
        self,
        pred: Sequence[torch.Tensor],
        target: Sequence[torch.Tensor],
        pred_boxes: Sequence[Sequence[float] | None] | torch.Tensor | None = None,
        gt_boxes: Sequence[Sequence[float]] | torch.Tensor | None = None,
    ) -> None:
        """Add P queries.

        Args:
            pred: P bool masks `(H_p, W_p)` at the original image size (see `binarize`).
            target: P bool ground-truth masks, each the shape of its prediction.
            pred_boxes: P predicted `[x, y, w, h]` boxes (None = no box, a miss), or a `(P, 4)` tensor;
                by default the tight box of each predicted mask (`flmm.masks.mask_box`), an empty mask a miss.
            gt_boxes: P ground-truth COCO `[x, y, w, h]` boxes or a `(P, 4)` tensor; REC is only counted
                for updates that give them.
        """
        inter, union = intersection_union(pred, target)
        if gt_boxes is None and pred_boxes is not None:
            raise ValueError("pred_boxes were given without gt_boxes; REC needs both")
        if gt_boxes is not None:
            gt = _boxes(gt_boxes, len(inter), "gt_boxes", allow_none=False)
            if pred_boxes is None:
                boxes = [None if b is None else box_xywh(b) for b in map(mask_box, pred)]
            else:
                boxes = _boxes(pred_boxes, len(inter), "pred_boxes", allow_none=True)
            self.rec_hits += sum(b is not None and box_iou(b, g) >= 0.5 for b, g in zip(boxes, gt))
            self.rec_count += len(gt)
        inter, union = inter.to(self.intersection.device), union.to(self.intersection.device)
        tenths = torch.tensor(PRECISION_TENTHS, dtype=torch.long, device=inter.device)
        self.intersection += inter.sum()
        self.union += union.sum()
        self.iou_sum += fixed_point_iou(inter, union).sum()
        self.n_queries += len(inter)
        self.hits += (10 * inter[None] >= tenths[:, None] * union[None]).sum(dim=1)

    def compute(self) -> dict[str, float | int]:
        """The metrics in percent (NaN where nothing was counted) and `n_queries`."""
        n, inter, union = int(self.n_queries), int(self.intersection), int(self.union)
        out: dict[str, float | int] = {
            "cIoU": math.nan if n == 0 else _rate(inter, union) if union > 0 else 100.0,
            "gIoU": _rate(int(self.iou_sum), IOU_SCALE * n),
        }
        for t, hits in zip(PRECISION_TENTHS, self.hits.tolist()):
            out[f"P@{t / 10:.1f}"] = _rate(hits, n)
        out["REC@0.5"] = _rate(int(self.rec_hits), int(self.rec_count))
        out["n_queries"] = n
        return out


class PngRecallMetrics(Metric):
    """Panoptic Narrative Grounding average recall, overall and per group.

    The reference integrates recall(t) = mean(IoU >= t) over thresholds t in [0, 1). For IoUs in [0, 1] that
    area is exactly mean(IoU) (each query contributes the length of [0, IoU]), so `AR` is the mean IoU; the
    reference's Riemann sum on a grid of step s differs from it by at most s. `recall_curve` gives the
    curve itself on the step-0.01 grid.

    `compute()` returns `AR`, `AR_things`, `AR_stuff`, `AR_singulars`, `AR_plurals` in percent (NaN for a
    group with no query) and the counts `n_queries`, `n_things`, `n_stuff`, `n_singulars`, `n_plurals`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        groups = len(PNG_GROUPS)
        self.add_state("iou_sum", default=torch.zeros(groups, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(groups, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state(
            "curve_hits", default=torch.zeros(groups, CURVE_STEPS, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(
        self,
        pred: Sequence[torch.Tensor],
        target: Sequence[torch.Tensor],
        isthing: Sequence[bool] | torch.Tensor,
        plural: Sequence[bool] | torch.Tensor,
    ) -> None:
        """Add P noun-phrase queries.

        Args:
            pred: P bool masks `(H_p, W_p)` at the original image size.
            target: P bool ground-truth masks, each the shape of its prediction.
            isthing: P flags, True for a thing and False for stuff.
            plural: P flags, True for a plural noun phrase and False for a singular one.
        """
        inter, union = intersection_union(pred, target)
        device = self.count.device
        inter, union = inter.to(device), union.to(device)
        flags = {}
        for field, values in (("isthing", isthing), ("plural", plural)):
            flags[field] = torch.as_tensor(values, dtype=torch.bool).flatten().to(device)
            if len(flags[field]) != len(inter):
                raise ValueError(
                    f"{field} has {len(flags[field])} flags but there are {len(inter)} queries; "
                    "need one per query"
                )
        thing, plur = flags["isthing"], flags["plural"]
        member = torch.stack([torch.ones_like(thing), thing, ~thing, ~plur, plur]).long()  # (G, P)
        steps = torch.arange(CURVE_STEPS, dtype=torch.long, device=device)
        hit = (CURVE_STEPS * inter[None] >= steps[:, None] * union[None]).long()  # (S, P)
        self.iou_sum += (member * fixed_point_iou(inter, union)[None]).sum(dim=1)
        self.count += member.sum(dim=1)
        self.curve_hits += (member[:, None, :] * hit[None]).sum(dim=-1)

    def compute(self) -> dict[str, float | int]:
        """Average recall per group in percent (NaN for an empty group) and the query count per group."""
        out: dict[str, float | int] = {}
        counts = self.count.tolist()
        for name, total, n in zip(PNG_GROUPS, self.iou_sum.tolist(), counts):
            out["AR" if name == "all" else f"AR_{name}"] = _rate(total, IOU_SCALE * n)
        for name, n in zip(PNG_GROUPS, counts):
            out["n_queries" if name == "all" else f"n_{name}"] = n
        return out

    def recall_curve(self, group: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
        """Thresholds `(100,)` = 0, 0.01, .., 0.99 and the fraction of the group's queries with IoU >= each
        `(100,)`, float64 (NaN for an empty group)."""
        if group not in PNG_GROUPS:
            raise ValueError(f"unknown PNG group {group!r}; expected one of {PNG_GROUPS}")
        g = PNG_GROUPS.index(group)
        n = int(self.count[g])
        thresholds = torch.arange(CURVE_STEPS, dtype=torch.float64) / CURVE_STEPS
        hits = self.curve_hits[g].cpu().double()
        return thresholds, hits / n if n > 0 else torch.full_like(hits, math.nan)


RES_COLUMNS = {
    "n": "n_queries",
    "cIoU": "cIoU",
    "gIoU": "gIoU",
    **{f"P@{t / 10:.1f}": f"P@{t / 10:.1f}" for t in PRECISION_TENTHS},
    "REC@0.5": "REC@0.5",
}
COARSE_COLUMNS = ("coarse_cIoU", "coarse_gIoU")
PNG_COARSE_COLUMNS = ("coarse_AR",)
PNG_COLUMNS = {
    "n": "n_queries",
    "AR": "AR",
    "things": "AR_things",
    "stuff": "AR_stuff",
    "singulars": "AR_singulars",
    "plurals": "AR_plurals",
}


def _cell(value: object) -> str:
    """A count as an integer, a rate to 2 decimals, a missing or NaN value as "-"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return f"{float(value):.2f}"


def _markdown(rows: list[tuple[str, str, Mapping]], columns: Mapping[str, str]) -> str:
    """One Markdown table: split and protocol left-aligned, the metric columns right-aligned."""
    lines = [
        "| " + " | ".join(["split", "protocol", *columns]) + " |",
        "|" + "|".join([":---", ":---", *["---:"] * len(columns)]) + "|",
    ]
    for split, protocol, metrics in rows:
        cells = [split, protocol, *(_cell(metrics.get(key)) for key in columns.values())]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_results_table(results: Mapping[str, Mapping[str, Mapping[str, object]]]) -> str:
    """`{split: {protocol: metrics}}` -> Markdown, one row per split and protocol.

    Metrics dicts with `cIoU` (from `ResMetrics`, optionally with `coarse_cIoU` / `coarse_gIoU`, which get
    columns when any row has them) go in a RES table, those with `AR` (from `PngRecallMetrics`, optionally
    with `coarse_AR`) in a PNG table below it. Rates are printed to 2 decimals, counts as integers, missing
    or NaN values as "-".
    """
    res_rows, png_rows = [], []
    for split, protocols in results.items():
        for protocol, metrics in protocols.items():
            if "cIoU" in metrics:
                res_rows.append((split, protocol, metrics))
            elif "AR" in metrics:
                png_rows.append((split, protocol, metrics))
            else:
                raise ValueError(
                    f"results[{split!r}][{protocol!r}] has neither 'cIoU' (RES) nor 'AR' (PNG); "
                    f"keys: {sorted(metrics)}"
                )
    tables = []
    if res_rows:
        coarse = [c for c in COARSE_COLUMNS if any(c in m for _, _, m in res_rows)]
        tables.append(_markdown(res_rows, {**RES_COLUMNS, **{c: c for c in coarse}}))
    if png_rows:
        coarse = [c for c in PNG_COARSE_COLUMNS if any(c in m for _, _, m in png_rows)]
        tables.append(_markdown(png_rows, {**PNG_COLUMNS, **{c: c for c in coarse}}))
    return "\n\n".join(tables)
