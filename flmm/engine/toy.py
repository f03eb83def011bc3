"""First-use construction of the embedded default's toy models (no download anywhere).

A toy config (`model.toy` set) names where its tiny LLaVA and tiny SAM live; whichever is absent is made
here by its recipe (`flmm.toy`): pretrained on text about / masks of freshly drawn synthetic scenes, or
left at its random initial weights when the config sets 0 steps (the control). The embedded default ships
both under `toy_models/`, so this only runs for other paths or after they were deleted. A model already on
disk whose report names another recipe (a recipe file changed since it was built, or a seed/size override)
is an error rather than silently used: its results would belong to the other recipe.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from flmm.errors import ConfigError
from flmm.toy.pretrain_lmm import REPORT_FILE, pretrain_lmm
from flmm.toy.pretrain_sam import pretrain_sam, report_path
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


def check_built_by(report_file: Path, model: Path, recipe: LmmRecipe | SamRecipe, recipe_file: str) -> None:
    """Raise if `report_file` (written beside a toy model when it was built) names another recipe."""
    if not report_file.is_file():
        return
    try:
        built_by = dict(json.loads(report_file.read_text())["recipe"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"{report_file}: unreadable toy-model report, expected JSON with a 'recipe' object ({err!r}); "
            f"delete {model} to rebuild it"
        ) from None
    wanted = asdict(recipe)
    differing = sorted(k for k in built_by.keys() | wanted.keys() if built_by.get(k) != wanted.get(k))
    if differing:
        raise ConfigError(
            f"{model} was built by another recipe than {recipe_file} with this config's model.toy overrides "
            f"(differing: {', '.join(differing)}; see {report_file}). Delete {model} to rebuild it, or point "
            "the config at another path."
        )


def ensure_toy_models(cfg: DictConfig, build: bool = True) -> None:
    """Make the tiny LLaVA and tiny SAM a toy config names when they are not on disk yet (`build`; else a
    missing one is left for `preflight` to report).

    Raises ConfigError when one on disk was built by another recipe than the config asks for.
    """
    toy = cfg.model.toy
    if toy is None:
        return
    progress = bool(cfg.train.progress_bar)
    lmm_dir = Path(str(cfg.model.lmm.model))
    recipe = toy_lmm_recipe(toy)
    if (lmm_dir / "config.json").is_file():
        check_built_by(lmm_dir / REPORT_FILE, lmm_dir, recipe, str(toy.lmm_recipe))
    elif build:
        log.warning("building the toy LLaVA in %s (first use, %d pretraining steps)", lmm_dir, recipe.steps)
        pretrain_lmm(lmm_dir, recipe, progress=progress, log=log.warning)
    refiner = cfg.model.refiner
    if refiner is not None and refiner.get("model_type") == "tiny" and refiner.get("checkpoint"):
        checkpoint = Path(str(refiner.checkpoint))
        recipe = toy_sam_recipe(toy)
        if checkpoint.is_file():
            check_built_by(report_path(checkpoint), checkpoint, recipe, str(toy.sam_recipe))
        elif build:
            log.warning(
                "building the toy SAM in %s (first use, %d pretraining steps)", checkpoint, recipe.steps
            )
            pretrain_sam(checkpoint, recipe, progress=progress, log=log.warning)
