"""Build a run's pieces from its config: the frozen LMM adapter, the grounding model, the image transform.

Shared by training, evaluation and the demo, so that a checkpoint's config rebuilds exactly the model it
was trained with. Also checks, before anything heavy is loaded, that the weights and data a config names
are present, and reports everything missing in one message.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from flmm.builder import build_component, check_keys, keyword_names, resolve_component
from flmm.data.splits import missing_data_message, split_exists
from flmm.errors import ConfigError, FlmmError, MissingWeightsError
from flmm.lmm.adapter import LMMAdapter
from flmm.lmm.families import FAMILIES, adapter_for
from flmm.lmm.loading import resolve_checkpoint
from flmm.models.grounding import GroundingModel
from flmm.models.mask_head import UNetMaskHead
from flmm.models.sam_build import SAM_CHECKPOINT_FILES
from flmm.models.sam_refiner import SamRefiner
from flmm.models.selector import KeywordSelector
from flmm.registry import LMM_ADAPTERS, MODELS
from flmm.shipped import shipped_path

# The built-in components; importing them is what registers them in the registries.
BUILTIN_COMPONENTS = (
    *FAMILIES,
    UNetMaskHead,
    SamRefiner,
    GroundingModel,
    KeywordSelector,
)

# Arguments the builders add from the LMM adapter (a config must not give them).
PROVIDED = {
    "mask_head": ("in_channels",),
    "refiner": ("hidden_size", "num_layers"),
    "selector": ("hidden_size", "num_layers"),
}


def check_components(cfg: DictConfig, source: str = "config") -> None:
    """Check every component section against what its component accepts, without building anything, so a
    typo (`model.mask_head.chanels`) is one ConfigError at load time, not after minutes of LMM loading.

    `model.lmm` without `type` is checked against `adapter_for` and every family's arguments (the family
    follows the checkpoint, unknown until it is read); `data.synthetic` against `SyntheticConfig`.
    """
    try:
        lmm = cfg.model.lmm
        if lmm.get("type") is not None:
            resolve_component(LMM_ADAPTERS, "model.lmm", lmm)
        else:
            allowed = [*keyword_names(adapter_for)[0]]
            for family in FAMILIES:
                allowed += [name for name in keyword_names(family)[0] if name not in allowed]
            check_keys("model.lmm", "an LMM adapter", [k for k in lmm if k != "type"], allowed)
        for key, provided in PROVIDED.items():
            section = cfg.model.get(key)
            if section is not None:
                resolve_component(MODELS, f"model.{key}", section, provided)
        if cfg.data.synthetic is not None:
            # The synthetic world's code is imported only for a config that generates one.
            from flmm.data.synthetic import SyntheticConfig

            fields = [f.name for f in dataclasses.fields(SyntheticConfig)]
            check_keys("data.synthetic", "SyntheticConfig", list(cfg.data.synthetic), fields)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def build_adapter(cfg: DictConfig) -> LMMAdapter:
    """The frozen LMM adapter of `cfg.model.lmm`: its `type` when given, else the family of `model`'s class
    (`flmm.lmm.adapter_for`)."""
    section = cfg.model.lmm
    if section.get("type") is not None:
        return build_component(LMM_ADAPTERS, "model.lmm", section)
    kwargs = {k: v for k, v in OmegaConf.to_container(section, resolve=True).items() if k != "type"}
    if "model" not in kwargs:
        raise ConfigError("model.lmm: missing 'model' (a hub id or a checkpoint folder)")
    return adapter_for(**kwargs)


def build_grounding_model(cfg: DictConfig, adapter: LMMAdapter) -> GroundingModel:
    """Mask head (+ SAM refiner) sized for `adapter`: channels, hidden width and layer count come from it."""
    head = build_component(MODELS, "model.mask_head", cfg.model.mask_head, in_channels=adapter.channels)
    return GroundingModel(head, build_text_component(cfg, adapter, "refiner"))


def build_text_component(cfg: DictConfig, adapter: LMMAdapter, key: str):
    """`model.<key>` (the refiner or the keyword selector) sized for the adapter's hidden states, or None
    when the config sets it to null."""
    section = cfg.model.get(key)
    if section is None:
        return None
    text = adapter.text_config()
    return build_component(
        MODELS,
        f"model.{key}",
        section,
        hidden_size=text.hidden_size,
        num_layers=text.num_hidden_layers,
    )


# The shipped toy LLaVA is two pretraining stages: captions, then this recipe from the first stage's folder.
CHAT_RECIPE = "configs/toy_lmm_chat.yaml"


def toy_model_hint(path: str, tool: str) -> str | None:
    """For a missing path inside a `toy_models/` folder: that it is one of the embedded default's toy
    models and the command that builds it (training, evaluation and the demo only load them)."""
    if "toy_models" not in Path(path).parts:
        return None
    stages = ""
    if tool == "tools/pretrain_toy_lmm.py":
        init = OmegaConf.load(shipped_path(CHAT_RECIPE)).init
        stages = (
            f"; the shipped toy LLaVA adds a chat stage to the caption one: `python {tool} --out {init}` "
            f"then `python {tool} --config {CHAT_RECIPE} --out {path}`"
        )
    return (
        f"{path} not found: it is a toy model of the embedded default; build it with "
        f"`python {tool} --out {path}` (`--steps 0` keeps the random initial weights, as a control's "
        f"model is{stages}; toy_models/README.md says how each shipped one was made)"
    )


def preflight(cfg: DictConfig, splits: list[str], hint: str = "") -> None:
    """Raise one FlmmError listing every missing weight file and dataset the config needs (and `hint`)."""
    problems = []
    try:
        lmm = cfg.model.lmm
        resolve_checkpoint(lmm.get("model", ""), lmm.get("local_files_only"), lmm.get("revision"))
    except MissingWeightsError as exc:
        toy = toy_model_hint(str(lmm.get("model", "")), "tools/pretrain_toy_lmm.py")
        problems.append(f"LMM weights (model.lmm.model): {toy or exc}")
    refiner = cfg.model.refiner
    checkpoint = None if refiner is None else refiner.get("checkpoint")
    if refiner is not None and refiner.get("model_type") in SAM_CHECKPOINT_FILES:
        if not checkpoint or not Path(checkpoint).is_file():
            problems.append(
                f"SAM weights (model.refiner.checkpoint): {checkpoint} not found. Download "
                f"{SAM_CHECKPOINT_FILES[refiner.model_type]} from the segment-anything release and put it "
                "there, or set model.refiner.checkpoint=PATH."
            )
    elif checkpoint and not Path(checkpoint).is_file():
        toy = toy_model_hint(str(checkpoint), "tools/pretrain_toy_sam.py")
        problems.append(f"SAM weights (model.refiner.checkpoint): {toy or f'{checkpoint} not found'}")
    root = Path(str(cfg.data.root))
    problems += [f"data: {missing_data_message(root, s)}" for s in splits if not split_exists(root, s)]
    if problems:
        raise FlmmError(
            "cannot start, missing:\n  - " + "\n  - ".join(problems) + (f"\n{hint}" if hint else "")
        )


def config_to_dict(cfg: DictConfig) -> dict:
    """A resolved plain-dict copy of a config, as stored in checkpoints."""
    return OmegaConf.to_container(cfg, resolve=True)
