"""Pretrain the toy SAM on the synthetic world's masks with SAM's promptable objective.

The model is `flmm.models.sam_build.build_tiny_sam()` (segment_anything's own modules at toy sizes), and
the images go through `SamRefiner.preprocess`, the refiner's own input path. A step prompts a few objects of
each image the way SAM is trained: one point (three candidate masks, the loss of the best one counts), two
points, or a jittered box; then a second pass adds the first pass's low-res logits as the mask prompt and a
correction point from its error region (SAM's iterative training, which also teaches the dense mask-prompt
path the refiner relies on). Loss: BCE + Dice per mask, plus the IoU head's MSE to the IoU it predicts.
Every part learns, the image encoder included; the grounding runs freeze it afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from flmm.masks import mask_box
from flmm.models.sam_build import save_sam_checkpoint
from flmm.models.sam_refiner import SamRefiner
from flmm.toy.optimize import run_steps
from flmm.toy.recipe import SamRecipe, world_config
from flmm.toy.world import SamPool, sam_pool

PROMPT_KINDS = ("point", "points", "box")


def report_path(out_file: str | Path) -> Path:
    """Where `pretrain_sam` writes the report of the SAM it saved to `out_file`: `<out_file>.json`."""
    out = Path(out_file)
    return out.with_suffix(out.suffix + ".json")


def decode_all(sam, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor):
    """SAM's `MaskDecoder.predict_masks` with one image embedding per prompt.

    embeddings `(N, C, h, w)`, sparse `(N, K, C)`, dense `(N, C, h, w)` -> all four mask logits
    `(N, 4, 4h, 4w)` (0: the single-mask output, 1-3: the multimask outputs) and IoU predictions `(N, 4)`.
    """
    decoder = sam.mask_decoder
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([tokens.unsqueeze(0).expand(len(sparse), -1, -1), sparse], dim=1)
    src = embeddings + dense
    b, c, h, w = src.shape
    pe = sam.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)
    hs, src = decoder.transformer(src, pe, tokens)
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    masks = (hyper @ upscaled.flatten(2)).view(b, -1, *upscaled.shape[-2:])
    return masks, decoder.iou_prediction_head(hs[:, 0])


class Prepared:
    """A pool in SAM's frame: `inputs (N, 3, S, S)` (refiner preprocessing), per scene the object masks
    `(K, S, S)` float in the frame (0 on padding) and `valid (S, S)`, plus the originals for evaluation."""

    def __init__(self, refiner: SamRefiner, pool: SamPool):
        side = refiner.image_size
        self.pool = pool
        self.inputs = torch.stack(
            [refiner.preprocess(torch.from_numpy(im).permute(2, 0, 1)) for im in pool.images]
        )
        self.sizes = [refiner.input_size(*im.shape[:2]) for im in pool.images]
        self.masks, self.valid = [], []
        for masks, (h, w) in zip(pool.masks, self.sizes):
            frame = F.interpolate(torch.from_numpy(masks).float()[None], size=(h, w), mode="area")[0]
            self.masks.append(F.pad((frame > 0.5).float(), (0, side - w, 0, side - h)))
            valid = torch.zeros(side, side, dtype=torch.bool)
            valid[:h, :w] = True
            self.valid.append(valid)


def _random_point(mask: torch.Tensor, rng: np.random.Generator) -> tuple[float, float]:
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    k = int(rng.integers(len(ys)))
    return float(xs[k]) + 0.5, float(ys[k]) + 0.5


def _box(mask: torch.Tensor, rng: np.random.Generator, jitter: float) -> list[float]:
    """The box of a non-empty target `(H, W)` with each edge moved by N(0, jitter) of the box's size."""
    x0, y0, x1, y1 = (float(v) for v in mask_box(mask > 0.5))
    noise = rng.normal(0, jitter, 4) * np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0])
    return [x0 + noise[0], y0 + noise[1], x1 + noise[2], y1 + noise[3]]


def _prompts(targets, kind: str, rng: np.random.Generator):
    """Points `((N, k, 2), (N, k))` or None, and boxes `(N, 4)` or None, for target masks in the frame."""
    if kind == "box":
        return None, torch.tensor([_box(t, rng, 0.05) for t in targets])
    coords, labels = [], []
    for t in targets:
        points, kinds = [_random_point(t, rng)], [1]
        if kind == "points":
            outside = t < 0.5
            negative = bool(rng.random() < 0.5) and bool(outside.any())
            points.append(_random_point(outside.float() if negative else t, rng))
            kinds.append(0 if negative else 1)
        coords.append(points)
        labels.append(kinds)
    return (torch.tensor(coords), torch.tensor(labels)), None


def _correction(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, rng) -> tuple:
    """One point per prompt from its error region: positive on a missed pixel, negative on a false one."""
    coords, labels = [], []
    for pred, t, v in zip(logits > 0, targets > 0.5, valid):
        missed, false = (t & ~pred & v), (pred & ~t & v)
        error = missed if missed.sum() >= false.sum() else false
        if not error.any():
            error, positive = t, True
        else:
            positive = error is missed
        coords.append([_random_point(error.float(), rng)])
        labels.append([1 if positive else 0])
    return torch.tensor(coords), torch.tensor(labels)


def mask_losses(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE + Dice of logits `(N, M, S, S)` against targets `(N, S, S)` on `valid` pixels -> `(N, M)`."""
    t = targets[:, None].expand_as(logits)
    v = valid[:, None].expand_as(logits).float()
    bce = (F.binary_cross_entropy_with_logits(logits, t, reduction="none") * v).sum((-2, -1)) / v.sum(
        (-2, -1)
    )
    p = logits.sigmoid() * v
    dice = 1 - (2 * (p * t).sum((-2, -1)) + 1) / (p.sum((-2, -1)) + (t * v).sum((-2, -1)) + 1)
    return bce + dice


def _frame_iou(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    pred, t = (logits > 0) & valid[:, None], (targets[:, None] > 0.5)
    inter, union = (pred & t).sum((-2, -1)), (pred | t).sum((-2, -1))
    return inter / union.clamp_min(1)


def _step(sam, data: Prepared, recipe: SamRecipe, rng: np.random.Generator) -> torch.Tensor:
    scenes = rng.integers(len(data.inputs), size=recipe.batch_size)
    chosen = [
        (int(i), int(k))
        for i in scenes
        for k in rng.permutation(len(data.masks[i]))[: recipe.prompts_per_image]
    ]
    embeddings = sam.image_encoder(data.inputs[torch.from_numpy(scenes)])
    slot = {int(i): j for j, i in enumerate(scenes)}
    emb = embeddings[torch.tensor([slot[i] for i, _ in chosen])]
    targets = torch.stack([data.masks[i][k] for i, k in chosen])
    valid = torch.stack([data.valid[i] for i, _ in chosen])
    u = rng.random()
    kind = (
        "box"
        if u < recipe.box_fraction
        else "points"
        if u < recipe.box_fraction + recipe.extra_point_fraction * (1 - recipe.box_fraction)
        else "point"
    )
    points, boxes = _prompts(targets, kind, rng)
    side = data.inputs.shape[-1]
    total = 0.0
    previous = None
    for round_ in range(2):
        sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=previous)
        low, iou_pred = decode_all(sam, emb, sparse, dense)
        logits = F.interpolate(low, size=(side, side), mode="bilinear", align_corners=False)
        outputs = slice(1, 4) if kind == "point" and round_ == 0 else slice(0, 1)
        losses = mask_losses(logits[:, outputs], targets, valid)
        best = losses.argmin(dim=1)
        rows = torch.arange(len(chosen))
        ious = _frame_iou(logits[:, outputs].detach(), targets, valid)
        iou_loss = F.mse_loss(iou_pred[:, outputs], ious)
        total = total + losses[rows, best].mean() + iou_loss
        chosen_logits = logits[:, outputs][rows, best].detach()
        previous = low[:, outputs][rows, best].detach()[:, None]
        extra = _correction(chosen_logits, targets, valid, rng)
        points = (
            extra
            if points is None
            else (torch.cat([points[0], extra[0]], 1), torch.cat([points[1], extra[1]], 1))
        )
    return total / 2


def _centre_point(mask: np.ndarray) -> tuple[float, float]:
    """The mask pixel farthest from its boundary (SAM's one-point evaluation prompt), as (x, y)."""
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(distance.argmax()), distance.shape)
    return float(x) + 0.5, float(y) + 0.5


@torch.no_grad()
def evaluate(sam, data: Prepared) -> dict:
    """mIoU at the original size from one centre point (best of 3 by predicted IoU) and from the box."""
    sam.eval()
    ious = {"point": [], "box": []}
    for n, (image_masks, size) in enumerate(zip(data.pool.masks, data.sizes)):
        emb = sam.image_encoder(data.inputs[n : n + 1]).expand(len(image_masks), -1, -1, -1)
        h, w = image_masks.shape[-2:]
        scale = np.array([size[1] / w, size[0] / h])
        centres = np.array([[_centre_point(m)] for m in image_masks]) * scale
        points = torch.from_numpy(centres).float()
        boxes = []
        for m in image_masks:
            ys, xs = np.nonzero(m)
            boxes.append(
                [
                    xs.min() * scale[0],
                    ys.min() * scale[1],
                    (xs.max() + 1) * scale[0],
                    (ys.max() + 1) * scale[1],
                ]
            )
        for kind in ("point", "box"):
            if kind == "point":
                sparse, dense = sam.prompt_encoder(
                    points=(points, torch.ones(len(points), 1, dtype=torch.long)), boxes=None, masks=None
                )
            else:
                sparse, dense = sam.prompt_encoder(
                    points=None, boxes=torch.tensor(boxes, dtype=torch.float32), masks=None
                )
            low, iou_pred = decode_all(sam, emb, sparse, dense)
            if kind == "point":
                pick = iou_pred[:, 1:].argmax(1) + 1
            else:
                pick = torch.zeros(len(low), dtype=torch.long)
            chosen = low[torch.arange(len(low)), pick][:, None]
            pred = sam.postprocess_masks(chosen, size, (h, w))[:, 0] > 0
            target = torch.from_numpy(image_masks)
            inter, union = (pred & target).sum((-2, -1)), (pred | target).sum((-2, -1))
            ious[kind] += (inter / union.clamp_min(1)).tolist()
    sam.train()
    return {f"mIoU_{kind}": 100 * float(np.mean(v)) for kind, v in ious.items()}


def train(sam, data: Prepared, recipe: SamRecipe, progress: bool) -> None:
    """`recipe.steps` AdamW steps (warm-up + cosine) of the promptable objective on `data`."""
    rng = np.random.default_rng([recipe.seed, 22])
    run_steps(
        sam.parameters(), lambda: _step(sam, data, recipe, rng), recipe, "pretraining toy SAM", progress
    )


def pretrain_sam(
    out_file: str | Path, recipe: SamRecipe, progress: bool = True, log: Callable[[str], None] = print
) -> dict:
    """Build the tiny SAM, pretrain it `recipe.steps` steps, save its state dict to `out_file` (as
    safetensors for a `.safetensors` name, else with torch.save; `model.refiner.checkpoint` takes either);
    return the report, also written beside it as `<out_file>.json`.

    With 0 steps the random initial weights are saved and nothing is evaluated (`held_out` is None).
    """
    report = {"recipe": asdict(recipe), "held_out": None}
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        # The refiner's own preprocessing makes SAM's inputs; its SAM is the model trained here.
        refiner = SamRefiner(hidden_size=1, num_layers=1, model_type="tiny")
        sam = refiner.sam.requires_grad_(True)
        if recipe.steps:
            world = world_config(recipe)
            log(f"drawing {recipe.scenes} training and {recipe.eval_scenes} held-out synthetic scenes")
            train(
                sam, Prepared(refiner, sam_pool(world, recipe.scenes, recipe.seed, "sam")), recipe, progress
            )
            eval_data = Prepared(refiner, sam_pool(world, recipe.eval_scenes, recipe.seed, "sam_eval"))
            report["held_out"] = evaluate(sam, eval_data)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_sam_checkpoint(sam.state_dict(), out)
    report_path(out).write_text(json.dumps(report, indent=1))
    return report
