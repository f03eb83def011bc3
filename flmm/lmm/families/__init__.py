"""The LMM families, one file each, and `adapter_for`, which picks a family from a model or checkpoint.

Importing this package registers every family adapter in `flmm.registry.LMM_ADAPTERS`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import PreTrainedModel, ProcessorMixin

from flmm.errors import ConfigError
from flmm.lmm.adapter import LMMAdapter
from flmm.lmm.families.llava import LlavaAdapter
from flmm.lmm.families.llava_next import LlavaNextAdapter
from flmm.lmm.families.qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter
from flmm.lmm.loading import resolve_checkpoint

FAMILIES: tuple[type[LMMAdapter], ...] = (LlavaAdapter, LlavaNextAdapter, Qwen2VLAdapter, Qwen2_5_VLAdapter)


def family_of(architecture: str) -> type[LMMAdapter]:
    """The adapter class whose model class is named `architecture` (config.json's `architectures[0]`)."""
    for family in FAMILIES:
        if family.model_class.__name__ == architecture:
            return family
    known = ", ".join(f.model_class.__name__ for f in FAMILIES)
    raise ConfigError(f"no flmm adapter for {architecture!r}; supported model classes: {known}")


def _architecture(model: str | os.PathLike, local_files_only: bool | None) -> str:
    folder = Path(resolve_checkpoint(model, local_files_only))
    if not folder.is_dir():  # online, a hub id not yet downloaded: transformers resolves it
        from transformers import AutoConfig

        architectures = AutoConfig.from_pretrained(str(model)).architectures
    else:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures")
    if not architectures:
        raise ConfigError(f"{model}: config.json names no architecture; set model.lmm.type")
    return architectures[0]


def adapter_for(
    model: str | os.PathLike | PreTrainedModel,
    processor: ProcessorMixin | None = None,
    capture: str = "hooked",
    local_files_only: bool | None = None,
    **kwargs,
) -> LMMAdapter:
    """The family adapter of `model` (a built model, a hub id or a folder), chosen by its class.

    Other keyword arguments go to the adapter (`torch_dtype`, `padding_side`, `describe`, ...).
    """
    if isinstance(model, PreTrainedModel):
        family = next((f for f in FAMILIES if type(model) is f.model_class), None)
        if family is None:
            family = family_of(type(model).__name__)
    else:
        family = family_of(_architecture(model, local_files_only))
    return family(model, capture=capture, processor=processor, local_files_only=local_files_only, **kwargs)


__all__ = [
    "FAMILIES",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "Qwen2VLAdapter",
    "Qwen2_5_VLAdapter",
    "adapter_for",
]
