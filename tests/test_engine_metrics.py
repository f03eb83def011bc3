"""Evaluation metrics of DESIGN §4 on small hand-made masks, and their sum-reducible states."""

import math

import pytest
import torch

from flmm.engine.metrics import (
    PngRecallMetrics,
    ResMetrics,
    binarize,
    box_iou,
    format_results_table,
)
from flmm.masks import box_xywh, mask_box

PRECISION_KEYS = ["P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9"]


def square(size: int, top: int, left: int, side: int, cols: int | None = None) -> torch.Tensor:
    """A `(size, size)` bool mask with a side x cols block at (top, left)."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top : top + side, left : left + (cols or side)] = True
    return mask


def row(n_true: int, n_false: int) -> torch.Tensor:
    """A `(1, n_true + n_false)` bool mask whose first n_true pixels are on."""
    return torch.tensor([[True] * n_true + [False] * n_false])


def random_masks(n: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """n random target masks of various sizes and predictions with various amounts of noise."""
    gen = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for q in range(n):
        h, w = (int(v) for v in torch.randint(4, 16, (2,), generator=gen))
        target = torch.rand(h, w, generator=gen) < 0.4
        flip = torch.rand(h, w, generator=gen) < float(torch.rand(1, generator=gen)) * 0.8
        preds.append(torch.zeros(h, w, dtype=torch.bool) if q % 7 == 0 else target ^ flip)
        targets.append(target)
    return preds, targets


def test_perfect_predictions_score_100_everywhere():
    targets = [square(12, 2, 3, 5), square(20, 0, 0, 20), square(9, 4, 4, 1)]
    metric = ResMetrics()
    metric.update([t.clone() for t in targets], targets, gt_boxes=[box_xywh(mask_box(t)) for t in targets])
    result = metric.compute()
    for key in ["cIoU", "gIoU", *PRECISION_KEYS, "REC@0.5"]:
        assert result[key] == 100.0, key
    assert result["n_queries"] == 3


def test_empty_predictions_score_zero_everywhere():
    targets = [square(12, 2, 3, 5), square(9, 4, 4, 1)]
    metric = ResMetrics()
    metric.update([torch.zeros_like(t) for t in targets], targets, gt_boxes=[[3, 2, 5, 5], [4, 4, 1, 1]])
    result = metric.compute()
    for key in ["cIoU", "gIoU", *PRECISION_KEYS, "REC@0.5"]:
        assert result[key] == 0.0, key


def test_square_shifted_by_one_column_has_the_hand_computed_values():
    target = square(16, 3, 3, 10)
    pred = square(16, 3, 4, 10)  # I = 10 * 9 = 90, U = 10 * 11 = 110
    metric = ResMetrics()
    metric.update([pred], [target])
    result = metric.compute()
    assert result["cIoU"] == 100 * 90 / 110
    assert result["gIoU"] == pytest.approx(100 * 90 / 110, abs=1e-7)
    assert [result[k] for k in PRECISION_KEYS] == [100.0, 100.0, 100.0, 100.0, 0.0]


def test_empty_target_and_prediction_is_iou_one_in_giou_but_absent_from_ciou():
    metric = ResMetrics()
    empty = torch.zeros(5, 5, dtype=torch.bool)
    metric.update([square(16, 3, 4, 10), empty], [square(16, 3, 3, 10), empty.clone()])
    result = metric.compute()
    assert result["cIoU"] == 100 * 90 / 110
    assert result["gIoU"] == pytest.approx(100 * (90 / 110 + 1) / 2, abs=1e-7)
    assert [result[k] for k in PRECISION_KEYS] == [100.0, 100.0, 100.0, 100.0, 50.0]


def test_only_empty_unions_give_ciou_100():
    empty = torch.zeros(3, 4, dtype=torch.bool)
    metric = ResMetrics()
    metric.update([empty], [empty.clone()])
    assert metric.compute()["cIoU"] == 100.0


@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [
        (row(2, 0), row(1, 1), [100.0, 0.0, 0.0, 0.0, 0.0]),  # IoU exactly 0.5
        (row(10, 0), row(7, 3), [100.0, 100.0, 100.0, 0.0, 0.0]),  # IoU exactly 0.7
        (row(100, 0), row(69, 31), [100.0, 100.0, 0.0, 0.0, 0.0]),  # IoU 0.69
        (row(10, 0), row(9, 1), [100.0, 100.0, 100.0, 100.0, 100.0]),  # IoU exactly 0.9
    ],
)
def test_precision_counts_an_iou_equal_to_the_threshold(pred, target, expected):
    metric = ResMetrics()
    metric.update([pred], [target])
    assert [metric.compute()[k] for k in PRECISION_KEYS] == expected


def test_box_iou_is_the_overlap_of_coco_boxes_over_their_union():
    assert box_iou([2, 2, 4, 4], [2, 2, 4, 8]) == 0.5
    assert box_iou([0, 0, 1, 1], [5, 5, 1, 1]) == 0.0


def test_rec_hits_at_box_iou_one_half_and_misses_just_below_and_on_empty_masks():
    pred = square(12, 2, 2, 4)  # box [2, 2, 4, 4], area 16
    metric = ResMetrics()
    metric.update([pred], [pred.clone()], gt_boxes=[[2, 2, 4, 8]])  # IoU 16 / 32
    assert metric.compute()["REC@0.5"] == 100.0
    metric.update([pred], [pred.clone()], gt_boxes=torch.tensor([[2.0, 2.0, 4.0, 8.5]]))  # 16 / 34
    assert metric.compute()["REC@0.5"] == 50.0
    metric.update([torch.zeros_like(pred)], [pred], gt_boxes=[[2, 2, 4, 4]])
    assert metric.compute()["REC@0.5"] == pytest.approx(100 / 3)


def test_rec_uses_given_predicted_boxes_with_none_a_miss():
    pred = square(12, 2, 2, 4)
    metric = ResMetrics()
    metric.update(
        [pred, pred], [pred, pred], pred_boxes=[[0, 0, 12, 12], None], gt_boxes=[[0, 0, 12, 12]] * 2
    )
    assert metric.compute()["REC@0.5"] == 50.0


def test_rec_is_nan_without_ground_truth_boxes():
    metric = ResMetrics()
    metric.update([square(8, 1, 1, 3)], [square(8, 1, 1, 3)])
    assert math.isnan(metric.compute()["REC@0.5"])


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_metric_without_queries_reports_nan_and_zero_count():
    result = ResMetrics().compute()
    assert result["n_queries"] == 0
    assert all(math.isnan(result[k]) for k in ["cIoU", "gIoU", *PRECISION_KEYS, "REC@0.5"])


def test_binarize_thresholds_the_sigmoid_at_one_half():
    logits = torch.tensor([-3.0, -1e-3, 0.0, 1e-3, 3.0], dtype=torch.bfloat16)
    assert binarize(logits).tolist() == [False, False, False, True, True]


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        ([torch.zeros(3, 3)], [torch.zeros(3, 3, dtype=torch.bool)], r"pred\[0\] is torch.float32"),
        ([torch.zeros(3, 3, dtype=torch.bool)], [torch.zeros(3, 4, dtype=torch.bool)], "differ in shape"),
        ([torch.zeros(3, 3, dtype=torch.bool)], [], "one per query"),
    ],
)
def test_bad_masks_are_rejected_with_the_field_named(pred, target, message):
    with pytest.raises(ValueError, match=message):
        ResMetrics().update(pred, target)


def test_bad_boxes_are_rejected_before_any_state_changes():
    metric = ResMetrics()
    mask = square(6, 1, 1, 2)
    with pytest.raises(ValueError, match="gt_boxes has 2 boxes"):
        metric.update([mask], [mask], gt_boxes=[[0, 0, 1, 1], [0, 0, 1, 1]])
    assert int(metric.n_queries) == 0


def test_res_metrics_agree_with_a_direct_float_computation_on_random_masks():
    preds, targets = random_masks(50, seed=5)
    inter = [int((p & t).sum()) for p, t in zip(preds, targets)]
    union = [int((p | t).sum()) for p, t in zip(preds, targets)]
    ious = [i / u if u else 1.0 for i, u in zip(inter, union)]
    metric = ResMetrics()
    metric.update(preds, targets)
    result = metric.compute()
    assert result["cIoU"] == pytest.approx(100 * sum(inter) / sum(union), abs=1e-9)
    assert result["gIoU"] == pytest.approx(100 * sum(ious) / len(ious), abs=1e-7)
    for key in PRECISION_KEYS:
        threshold = float(key[2:])
        assert result[key] == pytest.approx(100 * sum(iou >= threshold - 1e-12 for iou in ious) / len(ious))


def test_res_states_of_two_processes_sum_to_the_single_process_result():
    preds, targets = random_masks(40, seed=0)
    boxes = [box_xywh(mask_box(t)) for t in targets]
    single, first, second = ResMetrics(), ResMetrics(), ResMetrics()
    single.update(preds, targets, gt_boxes=boxes)
    first.update(preds[:13], targets[:13], gt_boxes=boxes[:13])
    second.update(preds[30:], targets[30:], gt_boxes=boxes[30:])
    second.update(preds[13:30], targets[13:30], gt_boxes=boxes[13:30])
    first.merge_state(second)
    assert first.compute() == single.compute()


def png_case() -> PngRecallMetrics:
    """Four queries with IoU 1 (thing, singular), 0.5 (thing, plural), 0 and 0.25 (stuff, singular)."""
    metric = PngRecallMetrics()
    full = square(4, 0, 0, 4)
    metric.update(
        [full, row(2, 0), torch.zeros(4, 4, dtype=torch.bool), row(4, 0)],
        [full.clone(), row(1, 1), full.clone(), row(1, 3)],
        isthing=[True, True, False, False],
        plural=[False, True, False, False],
    )
    return metric


def test_png_average_recall_per_group_on_a_hand_made_case():
    result = png_case().compute()
    assert result["AR"] == 100 * (1 + 0.5 + 0 + 0.25) / 4
    assert result["AR_things"] == 75.0
    assert result["AR_stuff"] == 12.5
    assert result["AR_singulars"] == pytest.approx(100 * 1.25 / 3)
    assert result["AR_plurals"] == 50.0
    counts = [result[k] for k in ["n_queries", "n_things", "n_stuff", "n_singulars", "n_plurals"]]
    assert counts == [4, 2, 2, 3, 1]


def test_png_recall_curve_counts_iou_at_or_above_each_threshold():
    thresholds, recall = png_case().recall_curve("all")
    assert thresholds[50] == 0.5
    assert recall[0] == 1.0  # every IoU >= 0
    assert recall[25] == 0.75  # 1, 0.5, 0.25
    assert recall[26] == 0.5
    assert recall[50] == 0.5
    assert recall[51] == 0.25


def test_png_empty_group_reports_nan():
    metric = PngRecallMetrics()
    mask = square(5, 1, 1, 2)
    metric.update([mask], [mask.clone()], isthing=[True], plural=[False])
    result = metric.compute()
    assert result["AR_things"] == 100.0
    assert result["n_stuff"] == 0 and result["n_plurals"] == 0
    assert math.isnan(result["AR_stuff"]) and math.isnan(result["AR_plurals"])
    assert torch.isnan(metric.recall_curve("stuff")[1]).all()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_png_average_recall_equals_the_reference_curve_area_within_one_percent(seed):
    preds, targets = random_masks(60, seed=seed)
    metric = PngRecallMetrics()
    metric.update(
        preds, targets, isthing=[q % 2 == 0 for q in range(60)], plural=[q % 3 == 0 for q in range(60)]
    )
    for group, key in [("all", "AR"), ("things", "AR_things"), ("plurals", "AR_plurals")]:
        _, recall = metric.recall_curve(group)
        # the reference: left Riemann sum of the recall over the 99 intervals of its threshold grid
        area = 100 * 0.01 * float(recall[:-1].sum())
        assert abs(area - metric.compute()[key]) <= 1.0


def test_png_states_of_two_processes_sum_to_the_single_process_result():
    preds, targets = random_masks(30, seed=4)
    isthing, plural = [q % 2 == 0 for q in range(30)], [q % 5 == 0 for q in range(30)]
    single, first, second = PngRecallMetrics(), PngRecallMetrics(), PngRecallMetrics()
    single.update(preds, targets, isthing, plural)
    first.update(preds[:11], targets[:11], isthing[:11], plural[:11])
    second.update(preds[11:], targets[11:], isthing[11:], plural[11:])
    first.merge_state(second)
    assert first.compute() == single.compute()
    assert torch.equal(first.curve_hits, single.curve_hits)


def test_png_flags_must_match_the_queries():
    mask = square(5, 1, 1, 2)
    with pytest.raises(ValueError, match="plural has 2 flags"):
        PngRecallMetrics().update([mask], [mask], isthing=[True], plural=[True, False])


def test_results_table_has_one_row_per_split_and_protocol():
    res = {"cIoU": 72.346, "gIoU": 70.0, "REC@0.5": math.nan, "n_queries": 3}
    res.update({k: 50.0 for k in PRECISION_KEYS})
    coarse = {**res, "coarse_cIoU": 61.004, "coarse_gIoU": 60.5}
    png = {"AR": 43.75, "AR_things": 75.0, "AR_stuff": 12.5, "AR_singulars": 41.6667, "AR_plurals": math.nan}
    png["n_queries"] = 4
    table = format_results_table(
        {"refcoco_val": {"all-sentences": res, "first-sentence-concat": coarse}, "png_val": {"png": png}}
    )
    lines = table.splitlines()
    assert lines[0] == (
        "| split | protocol | n | cIoU | gIoU | P@0.5 | P@0.6 | P@0.7 | P@0.8 | P@0.9 | REC@0.5 "
        "| coarse_cIoU | coarse_gIoU |"
    )
    assert lines[2] == (
        "| refcoco_val | all-sentences | 3 | 72.35 | 70.00 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 "
        "| - | - | - |"
    )
    assert lines[3].endswith("| - | 61.00 | 60.50 |")
    assert lines[5] == "| split | protocol | n | AR | things | stuff | singulars | plurals |"
    assert lines[7] == "| png_val | png | 4 | 43.75 | 75.00 | 12.50 | 41.67 | - |"


def test_results_table_rejects_an_unknown_metrics_dict():
    with pytest.raises(ValueError, match="neither 'cIoU'"):
        format_results_table({"val": {"all-sentences": {"mIoU": 1.0}}})
