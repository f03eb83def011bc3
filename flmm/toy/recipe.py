"""Recipes of the toy models' pretraining: typed YAML (configs/toy_lmm.yaml, configs/toy_sam.yaml).

A recipe says everything that makes the weights: sizes, the scenes (a `flmm.data.synthetic.SyntheticConfig`
of the world they imitate), the text formats and the optimisation. `load_recipe` validates a file plus
`key=value` overrides against the dataclass, so a typo is one error naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flmm.data.synthetic import SyntheticConfig
from flmm.errors import ConfigError
from flmm.shipped import find_config

R = TypeVar("R")


def _world() -> dict[str, Any]:
    return {"seed": 0, "size": 128, "max_objects": 5}


@dataclass
class LmmRecipe:
    """Tiny LLaVA: sizes (merged over `flmm.lmm.tiny.TINY_LLAVA_DEFAULTS`) and next-token pretraining.

    `formats` weighs the text formats of `flmm.toy.captions` (description / referring / qa / answer /
    narrative), `shuffle` is the description format's chance of random word order per object; `steps: 0`
    saves the random initial weights (the control). `init`: a toy LLaVA folder to go on training from (its
    sizes, weights and tokenizer, which gains the words of `captions.chat_corpus()` it lacks) instead of
    building one; `sizes` is then unused.
    """

    seed: int = 0
    init: str | None = None
    sizes: dict[str, Any] = field(default_factory=dict)
    world: dict[str, Any] = field(default_factory=_world)
    scenes: int = 3000
    eval_scenes: int = 200
    steps: int = 1200
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    formats: dict[str, float] = field(default_factory=lambda: {"description": 1.0})
    shuffle: float = 0.0


@dataclass
class SamRecipe:
    """Tiny SAM (`flmm.models.sam_build.build_tiny_sam`) pretrained with point and box prompts -> mask.

    Each step takes `batch_size` scenes and `prompts_per_image` objects of each; an object is prompted by
    its box with probability `box_fraction`, else by one random point inside it (plus, with probability
    `extra_point_fraction`, a second point: positive inside or negative outside).
    """

    seed: int = 0
    world: dict[str, Any] = field(default_factory=_world)
    scenes: int = 2000
    eval_scenes: int = 200
    steps: int = 600
    batch_size: int = 16
    prompts_per_image: int = 2
    box_fraction: float = 0.4
    extra_point_fraction: float = 0.3
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 30
    grad_clip: float = 1.0


def world_config(recipe: LmmRecipe | SamRecipe) -> SyntheticConfig:
    """The `SyntheticConfig` whose scenes (and held-out pairs) a recipe imitates."""
    allowed = {f.name for f in fields(SyntheticConfig)}
    unknown = sorted(set(recipe.world) - allowed)
    if unknown:
        raise ConfigError(f"recipe world: unknown keys {unknown}; allowed: {sorted(allowed)}")
    return SyntheticConfig(**recipe.world)


def load_recipe(schema: type[R], path: str | Path | None, overrides: list[str] = ()) -> R:
    """The recipe in YAML file `path` (None: the schema's defaults) with `key=value` overrides applied."""
    base = OmegaConf.structured(schema)
    source = "recipe defaults"
    try:
        if path is not None:
            path = find_config(path)
            source = str(path)
            if not Path(path).is_file():
                raise ConfigError(f"recipe file not found: {path}")
            base = OmegaConf.merge(base, OmegaConf.load(path))
        source = "recipe override"
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"recipe override '{item}' must look like key=value, e.g. steps=300")
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        allowed = ", ".join(f.name for f in fields(schema))
        raise ConfigError(
            f"{source}: bad key or value '{key}' ({str(exc).splitlines()[0]}); keys: {allowed}"
        ) from None
    recipe = OmegaConf.to_object(merged)
    for name in ("steps", "scenes", "eval_scenes", "batch_size"):
        if getattr(recipe, name) < 0 or (name != "steps" and getattr(recipe, name) < 1):
            raise ConfigError(f"{source}: {name} must be {'>= 0' if name == 'steps' else '>= 1'}")
    return recipe
