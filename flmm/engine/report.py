"""What an evaluation writes: results.json, results.md, best/worst overlays and per-query RLE masks.

    OUT/results.json      {"checkpoint", "mode", "config_hash", "splits": {split: {protocol: metrics}}}
    OUT/results.md        the same as a table a person reads, the protocol named in every row
    OUT/config.yaml       the resolved config whose canonical JSON `config_hash` is the sha256 of
    OUT/overlays/SPLIT_PROTOCOL/{best,worst}_NN.png   prediction filled, ground truth outlined
    OUT/masks_SPLIT_PROTOCOL.jsonl                    one line per query (with --save-masks)

Metrics are in percent. Each protocol's dict starts with `n_queries`, then the metrics of the refined
masks (`cIoU`, `gIoU`, `P@0.5` .. `P@0.9`, `REC@0.5`; or `AR`, `AR_things`, ... and group counts for PNG),
then any per-group (`cIoU_short`, ...) and keyword-selector (`selector_token_F1`, ...) metrics, then the
same of the coarse masks prefixed `coarse_`. A rate with nothing to average is null. `mode` is
`trained-head` (a checkpoint) or `attend-and-segment` (training-free, no checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from pycocotools import mask as mask_utils

from flmm.data.datasets import Skipped
from flmm.data.overlay import draw_overlay
from flmm.engine.metrics import format_results_table
from flmm.engine.skips import RunSkipBudget

log = logging.getLogger("flmm.engine")

PROTOCOL_NOTES = (
    "Protocols: `all-sentences` = every referring expression is its own query (LISA, GLaMM, Sa2VA); "
    "`first-sentence-concat` = the first sentence of each object, all objects of an image in one pass "
    "(F-LMM); `narrative` = Panoptic Narrative Grounding, a caption and its grounded phrases."
)


@dataclass
class QueryRecord:
    """One scored query: where it comes from in its dataset, its IoU, and its predicted mask as RLE."""

    query_id: str
    sample_index: int
    phrase_index: int
    expression: str
    image_id: Any
    iou: float
    rle: dict | None = None


def config_hash(config: dict) -> str:
    """sha256 hex digest of the canonical JSON (sorted keys, no spaces) of a resolved config."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def slug(split: str, protocol: str) -> str:
    """`refcoco+:val`, `all-sentences` -> `refcoco+_val_all-sentences` (a file name)."""
    return f"{split.replace(':', '_')}_{protocol}"


def _number(value: float | int) -> float | int | None:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def protocol_metrics(refined: dict[str, float | int], coarse: dict[str, float | int]) -> dict:
    """`n_queries`, the refined metrics, then the coarse rates as `coarse_*` (NaN -> None)."""
    out: dict[str, float | int | None] = {"n_queries": int(refined["n_queries"])}
    out.update({k: _number(v) for k, v in refined.items() if k != "n_queries"})
    out.update({f"coarse_{k}": _number(v) for k, v in coarse.items() if not k.startswith("n_")})
    return out


def results_dict(
    tasks, metrics: list[tuple[dict, dict]], checkpoint: str | None, config: dict, mode: str = "trained-head"
) -> dict:
    """results.json for tasks (with `split` and `protocol`) and their (refined, coarse) metrics."""
    splits: dict[str, dict[str, dict]] = {}
    for task, (refined, coarse) in zip(tasks, metrics):
        splits.setdefault(task.split, {})[task.protocol] = protocol_metrics(refined, coarse)
    return {"checkpoint": checkpoint, "mode": mode, "config_hash": config_hash(config), "splits": splits}


def extra_metrics_lines(results: dict) -> list[str]:
    """One Markdown bullet per split and protocol that has per-group or selector metrics."""
    lines = []
    for split, protocols in results["splits"].items():
        for protocol, metrics in protocols.items():
            extra = {
                k: v for k, v in metrics.items() if k.startswith(("cIoU_", "gIoU_", "selector_token_F1"))
            }
            if extra:
                cells = ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in extra.items())
                lines.append(f"- {split} ({protocol}): {cells}")
    return lines


def results_markdown(results: dict) -> str:
    """results.md: where the numbers come from, then the tables."""
    return "\n".join(
        [
            "# flmm evaluation",
            "",
            f"- checkpoint: `{results['checkpoint']}` (mode: {results['mode']})",
            f"- config sha256: `{results['config_hash']}` (config.yaml)",
            "- metrics in percent; `n`: queries scored; `coarse_*`: the mask head's masks before the refiner",
            f"- {PROTOCOL_NOTES}",
            "",
            format_results_table(results["splits"]),
            "",
            *extra_metrics_lines(results),
            "",
        ]
    )


def write_masks(path: Path, records: list[QueryRecord]) -> None:
    """One JSON line per query: query_id, expression, image_id, rle ({size, counts}), iou."""
    with path.open("w", encoding="utf-8") as out:
        for r in records:
            row = {"query_id": r.query_id, "expression": r.expression, "image_id": r.image_id, "rle": r.rle}
            out.write(json.dumps({**row, "iou": r.iou}, ensure_ascii=False) + "\n")


def ranked(records: list[QueryRecord], n: int) -> dict[str, list[QueryRecord]]:
    """The n best and n worst queries by IoU; ties go to the earlier query, so the choice is the same
    however the queries were sharded."""
    best = sorted(records, key=lambda r: (-r.iou, r.sample_index, r.phrase_index))
    worst = sorted(records, key=lambda r: (r.iou, r.sample_index, r.phrase_index))
    return {"best": best[:n], "worst": worst[:n]}


def write_overlays(folder: Path, dataset, records: list[QueryRecord], n: int) -> None:
    """`best_NN.png` / `worst_NN.png`: image, prediction filled, ground truth outlined, expression and IoU."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("best_*.png"), *folder.glob("worst_*.png")]:
        stale.unlink()
    for kind, chosen in ranked(records, n).items():
        for rank, record in enumerate(chosen, start=1):
            sample = dataset[record.sample_index]
            prediction = mask_utils.decode({**record.rle, "counts": record.rle["counts"].encode("ascii")})
            caption = f"{kind} {rank}: IoU {record.iou:.3f} - {record.expression} ({record.query_id})"
            image = draw_overlay(
                sample["image"],
                [prediction.astype(bool)],
                [caption],
                outlines=[sample["masks"][record.phrase_index].numpy()],
            )
            image.save(folder / f"{kind}_{rank:02d}.png")


def distinct_records(per_rank: list[list[QueryRecord]]) -> list[QueryRecord]:
    """The records of all ranks in dataset order, each query_id once (its earliest record), whatever the
    sharding."""
    ordered = sorted(
        (r for records in per_rank for r in records), key=lambda r: (r.sample_index, r.phrase_index)
    )
    unique: dict[str, QueryRecord] = {}
    for record in ordered:
        unique.setdefault(record.query_id, record)
    return list(unique.values())


@dataclass
class ReportWriter:
    """Writes the report of one evaluation on rank 0; a plain picklable object, so `ddp_spawn` workers
    can carry it.

    tasks: objects with `split`, `protocol` and `dataset` (the dataset reloads the images of overlays).
    """

    out_dir: Path
    tasks: list
    checkpoint: str | None
    config: dict
    overlays: int = 0
    save_masks: bool = False
    mode: str = "trained-head"

    def __call__(
        self,
        metrics: list[tuple[dict, dict]],
        gathered: list[list[list[QueryRecord]]],
        skipped: list[list[Skipped]],
    ) -> dict:
        """Write everything listed in the module docstring; return the results dict.

        metrics: per task, the (refined, coarse) metric dicts; gathered: per rank, per task, its records;
        skipped: per task, the broken records of all ranks. `results["skipped"]` counts them with those
        the datasets dropped when they were built (missing images); the results are written before a
        DataError says that more than `data.max_skip_fraction` of a split was broken.
        """
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        results = results_dict(self.tasks, metrics, self.checkpoint, self.config, self.mode)
        datasets = [task.dataset for task in self.tasks]
        sizes = {d.records_name: len(d) + len(d.load_skips) for d in datasets}
        budget = RunSkipBudget(sizes, float(self.config["data"]["max_skip_fraction"]))
        dropped = [record for d in datasets for record in d.load_skips]
        budget.add(dropped + [record for records in skipped for record in records], enforce=False)
        results["skipped"] = {
            name: {"count": b.count, "first": b.reasons[:5]} for name, b in budget.budgets.items()
        }
        OmegaConf.save(OmegaConf.create(self.config), out / "config.yaml")
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        (out / "results.md").write_text(results_markdown(results), encoding="utf-8")
        for index, (task, (refined, _)) in enumerate(zip(self.tasks, metrics)):
            records = distinct_records([rank_records[index] for rank_records in gathered])
            if refined["n_queries"] != len(records):
                log.warning(
                    "%s (%s): %d queries were scored but %d are distinct; a broken sample was replaced by "
                    "its neighbour (see the skip warnings above), which the metrics count twice",
                    task.split,
                    task.protocol,
                    refined["n_queries"],
                    len(records),
                )
            name = slug(task.split, task.protocol)
            if self.save_masks:
                write_masks(out / f"masks_{name}.jsonl", records)
            if self.overlays > 0:
                write_overlays(out / "overlays" / name, task.dataset, records, self.overlays)
        budget.check()
        return results
