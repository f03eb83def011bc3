"""First-use construction of the embedded default's toy models (no download anywhere).

A toy config (`model.toy` set) names where its tiny LLaVA and tiny SAM live; whichever is absent is made
here by its recipe (`flmm.toy`): pretrained on text about / masks of freshly drawn synthetic scenes, or
left at its random initial weights when the config sets 0 steps (the control). The embedded default ships
both under `toy_models/`, so this only runs for other paths or after they were deleted.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from flmm.toy.recipe import LmmRecipe, SamRecipe, load_recipe

log = logging.getLogger("flmm.engine")


def toy_lmm_recipe(toy: DictConfig) -> LmmRecipe:
    """The LLaVA recipe of a `model.toy` section, with its seed, size and step overrides applied."""
    recipe = load_recipe(LmmRecipe, str(toy.lmm_recipe))
    recipe.seed = int(toy.seed)
    sizes = OmegaConf.merge(OmegaConf.create(recipe.sizes), toy.lmm_sizes or {})
    recipe.sizes = OmegaConf.to_container(sizes, resolve=True)
    if toy.pretrain_steps is not None:
        recipe.steps = int(toy.pretrain_steps)
    return recipe


def toy_sam_recipe(toy: DictConfig) -> SamRecipe:
    """The SAM recipe of a `model.toy` section, with its seed and step overrides applied."""
    recipe = load_recipe(SamRecipe, str(toy.sam_recipe))
    recipe.seed = int(toy.seed)
    if toy.sam_pretrain_steps is not None:
        recipe.steps = int(toy.sam_pretrain_steps)
    return recipe


def ensure_toy_models(cfg: DictConfig) -> None:
    """Make the tiny LLaVA and tiny SAM a toy config names when they are not on disk yet."""
    toy = cfg.model.toy
    if toy is None:
        return
    progress = bool(cfg.train.progress_bar)
    lmm_dir = Path(str(cfg.model.lmm.model))
    if not (lmm_dir / "config.json").is_file():
        from flmm.toy.pretrain_lmm import pretrain_lmm

        recipe = toy_lmm_recipe(toy)
        log.warning("building the toy LLaVA in %s (first use, %d pretraining steps)", lmm_dir, recipe.steps)
        pretrain_lmm(lmm_dir, recipe, progress=progress, log=log.warning)
    refiner = cfg.model.refiner
    if refiner is not None and refiner.get("model_type") == "tiny" and refiner.get("checkpoint"):
        checkpoint = Path(str(refiner.checkpoint))
        if not checkpoint.is_file():
            from flmm.toy.pretrain_sam import pretrain_sam

            recipe = toy_sam_recipe(toy)
            log.warning(
                "building the toy SAM in %s (first use, %d pretraining steps)", checkpoint, recipe.steps
            )
            pretrain_sam(checkpoint, recipe, progress=progress, log=log.warning)
