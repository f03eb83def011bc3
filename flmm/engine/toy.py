"""First-use construction of the embedded default's tiny models (no download anywhere)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from flmm.data.safe_pickle import load_plain_pickle

log = logging.getLogger("flmm.engine")


def data_texts(root: str | Path) -> Iterator[str]:
    """Every referring expression and narrative caption under a data root (the tiny tokenizer's corpus)."""
    coco = Path(root) / "coco"
    for refs_path in sorted(coco.glob("refcoco*/refs(*).p")):
        for ref in load_plain_pickle(refs_path):
            yield from (s["sent"] for s in ref["sentences"])
    for narratives_path in sorted((coco / "annotations").glob("png_coco_*.json")):
        yield from (n["caption"] for n in json.loads(narratives_path.read_text(encoding="utf-8")))


def ensure_toy_models(cfg: DictConfig) -> None:
    """Build the tiny LLaVA and tiny SAM a toy config names when they are not on disk yet."""
    toy = cfg.model.toy
    if toy is None:
        return
    from flmm.lmm.tiny import build_tiny_llava

    lmm_dir = Path(str(cfg.model.lmm.model))
    if not (lmm_dir / "config.json").is_file():
        log.warning("building the toy LLaVA in %s (first use)", lmm_dir)
        sizes = OmegaConf.to_container(toy.lmm_sizes, resolve=True)
        build_tiny_llava(lmm_dir, seed=int(toy.seed), config=sizes, corpus=list(data_texts(cfg.data.root)))
    refiner = cfg.model.refiner
    if refiner is not None and refiner.get("model_type") == "tiny" and refiner.get("checkpoint"):
        checkpoint = Path(str(refiner.checkpoint))
        if not checkpoint.is_file():
            from flmm.models.sam_build import build_tiny_sam

            log.warning("building the toy SAM in %s (first use)", checkpoint)
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            with torch.random.fork_rng():
                torch.manual_seed(int(toy.seed))
                torch.save(build_tiny_sam().state_dict(), checkpoint)
