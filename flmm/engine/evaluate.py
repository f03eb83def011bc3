"""Evaluate a grounding model on RES and PNG splits, exactly, in one process or under DDP.

`evaluate(module, cfg, splits, protocols, out_dir)` runs Lightning's test loop over one data loader per
(split, protocol), computes `ResMetrics` / `PngRecallMetrics` on the refined and on the coarse masks, and
writes results.json, results.md, best/worst overlays and optional per-query masks (`flmm.engine.report`).
Any `predictor` (batch -> per-phrase masks at the original size) goes through the same path, so ground-truth
masks fed as predictions must score 100 everywhere: that is how the evaluation itself is tested; the
training-free attend-and-segment predictor (`flmm.engine.attend`) is scored this way beside the trained head.
Ignore regions, per-group metrics (ReasonSeg's short / long queries) and a keyword selector's token F1
(on narrative splits only, whose texts carry word-selection labels) come from `flmm.engine.task_metrics`.

Exactness under DDP: every loader shards with `ShardSampler` (no padding, no repeated sample), metric states
are integer sums reduced once at the end, and the per-query records (IoU, prediction RLE) are gathered to
rank 0 and de-duplicated by query_id there. Rank 0 writes the outputs inside the test loop, so that
`ddp_spawn` workers write them too (spawn is for predictors without a transformers model, which cannot be
pickled into workers; the model runs under `ddp`); `evaluate` then returns what was written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn
from torch.utils.data import DataLoader, Dataset

from flmm.config import FlmmConfig, load_config
from flmm.data.collate import collate_grounding, has_samples
from flmm.data.datasets import GroundingDataset, Skipped
from flmm.data.splits import build_split_dataset, default_eval_splits, parse_split
from flmm.engine.build import check_components, config_to_dict
from flmm.engine.callbacks import progress_reporting
from flmm.engine.metrics import binarize, intersection_union
from flmm.engine.module import GroundingModule, check_checkpoint_fits, read_checkpoint
from flmm.engine.report import QueryRecord, ReportWriter
from flmm.engine.sampling import ShardSampler, world
from flmm.engine.task_metrics import TaskExtraMetrics, main_metric, update_main_metric, without_ignored
from flmm.errors import ConfigError, FlmmError
from flmm.hub import check_same_sam, folder_checkpoint, resolve_head
from flmm.masks import mask_rle
from flmm.models.mask_head import crop_padding

RES_EVAL_PROTOCOLS = ("all-sentences", "first-sentence-concat")
PNG_PROTOCOL = "narrative"


@dataclass
class PhrasePredictions:
    """Predictions for the P phrases of a batch, in its (sample, phrase) order, at the original image size.

    refined: P maps `(H_i, W_i)`, float logits (thresholded with `binarize`) or bool masks.
    coarse: the same for the coarse masks of the U-Net alone, or None to score `refined` twice.
    selector_counts: `(4,)` long token counts of a keyword selector on the batch's texts that carry
        word-selection labels (true positives, false positives, false negatives, tokens;
        `flmm.models.selector.token_counts`; all 0 for RES texts), or None.
    points: `(P, 2)` long `(x, y)` in original pixels of a point-prompted predictor (attend-and-segment),
        scored as pointing accuracy; None for none.
    """

    refined: list[torch.Tensor]
    coarse: list[torch.Tensor] | None = None
    selector_counts: torch.Tensor | None = None
    points: torch.Tensor | None = None


Predictor = Callable[[dict], PhrasePredictions]


class ModelPredictor(nn.Module):
    """The grounding model as a predictor: its predictions (refined, or coarse without a refiner), its
    coarse logits cropped and resized to the original size, and its keyword selector's token counts."""

    def __init__(self, module: GroundingModule):
        super().__init__()
        self.module = module

    def forward(self, batch: dict) -> PhrasePredictions:
        grounded = self.module.ground(batch)
        out, image_index = grounded.out, grounded.image_index
        coarse = crop_padding(out.coarse_square, image_index, batch["pad_meta"], resize_to_original=True)
        counts = None
        if self.module.selector is not None:
            counts = grounded.selector_counts(self.module.selector.select(grounded.selector_logits))
        return PhrasePredictions(out.predictions, coarse, counts)


def ground_truth_predictor(batch: dict) -> PhrasePredictions:
    """Ground-truth masks as predictions (must score 100 on every metric)."""
    return PhrasePredictions([mask.bool() for masks in batch["masks"] for mask in masks])


@dataclass
class EvalTask:
    """One (split, protocol) pair to evaluate and its dataset."""

    split: str
    protocol: str
    dataset: GroundingDataset


def eval_tasks(
    data_cfg, splits: Sequence[str], protocols: Sequence[str], transform: Callable | None
) -> list[EvalTask]:
    """One task per RES split and protocol, and one per PNG split (protocol `narrative`)."""
    bad = [p for p in protocols if p not in RES_EVAL_PROTOCOLS]
    if bad or not protocols:
        raise ConfigError(
            f"evaluation protocols must be among {list(RES_EVAL_PROTOCOLS)}, got {list(protocols)}"
        )
    tasks = []
    for split in splits:
        chosen = [PNG_PROTOCOL] if parse_split(split)[0] == "png" else protocols
        tasks += [EvalTask(split, p, build_split_dataset(data_cfg, split, p, transform)) for p in chosen]
    return tasks


class _Indexed(Dataset):
    """A dataset whose samples carry their index, so that per-query records can be put in dataset order."""

    def __init__(self, dataset: GroundingDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "sample_index": index}


def collate_indexed(samples: list[dict]) -> dict:
    """`collate_grounding` plus `sample_index`, a list of B ints (of the samples that were not broken)."""
    indices = [s.pop("sample_index") for s in samples if "image" in s]
    return {**collate_grounding(samples), "sample_index": indices}


class EvaluationData(pl.LightningDataModule):
    """One test loader per task. Samplers are made when Lightning asks for the loaders, after the process
    group exists, so each rank gets its own shard."""

    def __init__(self, tasks: list[EvalTask], batch_size: int, num_workers: int):
        super().__init__()
        self.tasks, self.batch_size, self.num_workers = tasks, batch_size, num_workers

    def test_dataloader(self) -> list[DataLoader]:
        return [
            DataLoader(
                _Indexed(task.dataset),
                batch_size=self.batch_size,
                sampler=ShardSampler(len(task.dataset)),
                num_workers=self.num_workers,
                collate_fn=collate_indexed,
            )
            for task in self.tasks
        ]


def _as_masks(maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [m if m.dtype == torch.bool else binarize(m) for m in maps]


def _gather_to_rank_zero(obj: Any) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (in rank order), None on the other ranks."""
    rank, world_size = world()
    if world_size == 1:
        return [obj]
    gathered = [None] * world_size if rank == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


class EvaluationModule(pl.LightningModule):
    """Lightning's test loop around a predictor: metric sums per task, per-query records, the report.

    `report(metrics, gathered, skipped)` (a `ReportWriter`) runs on global rank 0 at the end with, per task,
    the reduced `(refined, coarse)` metric dicts, every rank's records, and the broken records of all ranks.
    """

    def __init__(
        self,
        predictor: Predictor,
        tasks: list[EvalTask],
        report: ReportWriter,
        keep_masks: bool,
    ):
        super().__init__()
        # An nn.Module predictor is registered as a child, so Lightning moves it to the device.
        self.predictor = predictor
        self.tasks, self.report, self.keep_masks = tasks, report, keep_masks
        self.refined_metrics = nn.ModuleList(main_metric(t.split) for t in tasks)
        self.coarse_metrics = nn.ModuleList(main_metric(t.split) for t in tasks)
        self.extra_metrics = nn.ModuleList(TaskExtraMetrics(t.dataset) for t in tasks)
        self.records: list[list[QueryRecord]] = [[] for _ in tasks]
        self.skipped: list[list[Skipped]] = [[] for _ in tasks]

    def on_test_epoch_start(self) -> None:
        # Fresh state tensors in every process: `ddp_spawn` on CPU hands the module to its workers through
        # shared memory, and in-place sums into shared states would add up the ranks' queries twice.
        for metric in (*self.refined_metrics, *self.coarse_metrics, *self.extra_metrics):
            metric.reset()
        self.records = [[] for _ in self.tasks]
        self.skipped = [[] for _ in self.tasks]

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.skipped[dataloader_idx] += batch["skipped"]
        if not has_samples(batch):  # every sample was broken (logged, and counted in the results)
            return
        predictions = self.predictor(batch)
        queries = [q for qs in batch["queries"] for q in qs]
        refined = without_ignored(_as_masks(predictions.refined), queries)
        coarse = (
            refined if predictions.coarse is None else without_ignored(_as_masks(predictions.coarse), queries)
        )
        targets = without_ignored([mask.bool() for masks in batch["masks"] for mask in masks], queries)
        self.extra_metrics[dataloader_idx].update(
            refined, targets, queries, predictions.selector_counts, predictions.points
        )
        update_main_metric(self.refined_metrics[dataloader_idx], refined, targets, queries)
        update_main_metric(self.coarse_metrics[dataloader_idx], coarse, targets, queries)
        inter, union = intersection_union(refined, targets)
        order = [(i, k) for i, qs in zip(batch["sample_index"], batch["queries"]) for k in range(len(qs))]
        for q, (i, k), pred, n_inter, n_union in zip(queries, order, refined, inter.tolist(), union.tolist()):
            self.records[dataloader_idx].append(
                QueryRecord(
                    query_id=q["query_id"],
                    sample_index=i,
                    phrase_index=k,
                    expression=q["expression"],
                    image_id=q["image_id"],
                    iou=n_inter / n_union if n_union else 1.0,
                    rle=mask_rle(pred) if self.keep_masks else None,
                )
            )

    def on_test_epoch_end(self) -> None:
        # Collectives: every rank computes (reduces) every metric and takes part in the gather.
        metrics = [
            ({**refined.compute(), **extra.compute()}, coarse.compute())
            for refined, coarse, extra in zip(self.refined_metrics, self.coarse_metrics, self.extra_metrics)
        ]
        gathered = _gather_to_rank_zero((self.records, self.skipped))
        if gathered is not None:
            records, skipped = zip(*gathered)
            per_task = [[record for rank in skipped for record in rank[i]] for i in range(len(self.tasks))]
            self.report(metrics, list(records), per_task)


def resolve_splits(cfg: DictConfig, splits: Sequence[str] | None) -> list[str]:
    """The splits to evaluate: those given, else `data.test_splits`, else every one found under data.root."""
    chosen = list(splits or cfg.data.test_splits or default_eval_splits(str(cfg.data.root)))
    if not chosen:
        raise FlmmError(
            f"no evaluation split found under data.root={cfg.data.root}; name them with --splits or "
            "data.test_splits"
        )
    for split in chosen:
        parse_split(split)
    return chosen


def evaluate(
    module: GroundingModule | None,
    cfg: DictConfig,
    splits: Sequence[str] | None = None,
    protocols: Sequence[str] = RES_EVAL_PROTOCOLS,
    out_dir: str | Path = "eval",
    *,
    predictor: Predictor | None = None,
    transform: Callable | None = None,
    checkpoint: str | Path | None = None,
    overlays: int = 0,
    save_masks: bool = False,
    mode: str = "trained-head",
) -> dict | None:
    """Evaluate `module` (or `predictor`) on `splits` and write the report into `out_dir`.

    Args:
        module: the grounding model; may be None when a predictor that needs no model is given.
        cfg: the resolved config: `data` (root, batch size, workers) and `train` (accelerator, devices,
            num_nodes, strategy, precision, progress_bar, progress_every_n_steps) are used.
        splits: `DATASET:SPLIT` names; default `resolve_splits`.
        protocols: RES protocols; PNG splits always use `narrative`.
        predictor: batch -> `PhrasePredictions`; default `ModelPredictor(module)`.
        transform: the image transform of the datasets; default the module's LMM transform (None without
            a module: samples then hold images and masks only).
        checkpoint, mode: recorded in results.json.
        overlays: best and worst N queries drawn per split and protocol.
        save_masks: write every query's predicted mask as RLE.

    Returns the content of results.json on global rank 0, None on the other ranks.
    """
    if module is None and predictor is None:
        raise ValueError("evaluate needs a module or a predictor")
    if predictor is None and "spawn" in str(cfg.train.strategy):
        # A pickled transformers model misses state its __init__ registers, so spawned workers cannot run it.
        raise ConfigError(f"train.strategy={cfg.train.strategy} cannot run the model; use ddp")
    if transform is None and module is not None:
        transform = module.adapter.image_transform()
    tasks = eval_tasks(cfg.data, resolve_splits(cfg, splits), protocols, transform)
    out_dir = Path(out_dir)
    train = cfg.train
    show_bar, progress = progress_reporting(train.progress_bar, train.progress_every_n_steps)
    trainer = pl.Trainer(
        accelerator=train.accelerator,
        devices=train.devices,
        num_nodes=train.num_nodes,
        strategy=train.strategy,
        precision=train.precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=show_bar,
        callbacks=progress,
        use_distributed_sampler=False,
        default_root_dir=out_dir,
    )
    last_rank_samples = sum(
        len(range(trainer.world_size - 1, len(t.dataset), trainer.world_size)) for t in tasks
    )
    if last_rank_samples == 0:
        raise FlmmError(
            f"{sum(len(t.dataset) for t in tasks)} samples cannot keep {trainer.world_size} processes busy; "
            "evaluate with fewer devices"
        )
    checkpoint = str(checkpoint) if checkpoint else None
    report = ReportWriter(out_dir, tasks, checkpoint, config_to_dict(cfg), overlays, save_masks, mode)
    evaluator = EvaluationModule(
        predictor or ModelPredictor(module), tasks, report, keep_masks=save_masks or overlays > 0
    )
    trainer.test(
        evaluator,
        datamodule=EvaluationData(tasks, int(cfg.data.batch_size), int(cfg.data.num_workers)),
        verbose=False,
    )
    if not trainer.is_global_zero:
        return None
    return json.loads((out_dir / "results.json").read_text(encoding="utf-8"))


def default_out_dir(checkpoint: Path) -> Path:
    """Where tools/test.py writes a checkpoint's evaluation by default: RUN/eval for RUN/checkpoints/x.ckpt,
    DIR/eval for a head folder DIR, eval/OWNER/NAME for a hub repository, else eval/ beside the checkpoint."""
    path = checkpoint.resolve()
    if path.is_dir():
        return path / "eval"
    if not path.exists():  # a hub repository (`flmm.hub.resolve_head`): not into the hub's cache
        return Path("eval") / checkpoint
    return (path.parent.parent if path.parent.name == "checkpoints" else path.parent) / "eval"


def load_checkpoint(path: str | Path) -> dict:
    """`read_checkpoint` of a tools/train.py checkpoint, or the same fields of a head folder or hub
    repository (`flmm.hub.folder_checkpoint`), also requiring the resolved config stored with the weights."""
    folder = resolve_head(path)
    checkpoint = read_checkpoint(path) if folder is None else folder_checkpoint(folder)
    if not isinstance(checkpoint.get("hyper_parameters", {}).get("config"), dict):
        raise FlmmError(f"{path}: holds no hyper_parameters.config; was it written by tools/train.py?")
    return checkpoint


def checkpoint_config(
    checkpoint: dict, overrides: Sequence[str] = (), source: str = "checkpoint"
) -> DictConfig:
    """The checkpoint's config, validated against the schema, with `key=value` overrides applied.

    The overrides are checked by `load_config` first, so a typo is the same one-line error as in training.
    """
    load_config(None, list(overrides), components=False)  # component keys are checked on the result
    schema = OmegaConf.structured(FlmmConfig)
    try:
        cfg = OmegaConf.merge(schema, checkpoint["hyper_parameters"]["config"])
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        message = (getattr(exc, "msg", None) or str(exc)).splitlines()[0]
        raise ConfigError(f"{source}: its config does not fit this version of flmm: {message}") from None
    check_components(cfg, f"{source} (its config)")
    return cfg


def load_module(checkpoint: dict, cfg: DictConfig) -> GroundingModule:
    """The grounding model of `cfg` with the checkpoint's trainable weights (refused if it does not fit, or
    if a head folder's SAM file is another than it was trained with)."""
    check_same_sam(cfg, checkpoint.get("flmm_sam"))
    module = GroundingModule(config_to_dict(cfg), val_splits=[])
    check_checkpoint_fits(module, checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    return module.eval()
