"""The LMM families, one file each, and `adapter_for`, which picks a family from a model or checkpoint.

Every module of this package is imported here, which registers its adapters in
`flmm.registry.LMM_ADAPTERS`; `FAMILIES` is every concrete adapter class they define, so a new family is
one new file.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
from pathlib import Path

from transformers import PreTrainedModel, ProcessorMixin

from flmm.errors import ConfigError
from flmm.lmm.adapter import LMMAdapter
from flmm.lmm.loading import resolve_checkpoint

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


FAMILIES: tuple[type[LMMAdapter], ...] = tuple(
    sorted(
        (
            c
            for c in _subclasses(LMMAdapter)
            if c.__module__.startswith(__name__) and "model_class" in vars(c)
        ),
        key=lambda c: c.__name__,
    )
)


def family_of(architecture: str) -> type[LMMAdapter]:
    """The adapter class whose model class is named `architecture` (config.json's `architectures[0]`)."""
    for family in FAMILIES:
        if family.model_class.__name__ == architecture:
            return family
    known = ", ".join(f.model_class.__name__ for f in FAMILIES)
    raise ConfigError(f"no flmm adapter for {architecture!r}; supported model classes: {known}")


def _architecture(model: str | os.PathLike, local_files_only: bool | None, revision: str | None) -> str:
    folder = Path(resolve_checkpoint(model, local_files_only, revision))
    if not folder.is_dir():  # online, a hub id not yet downloaded: transformers resolves it
        from transformers import AutoConfig

        architectures = AutoConfig.from_pretrained(str(model), revision=revision).architectures
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
    revision: str | None = None,
    **kwargs,
) -> LMMAdapter:
    """The family adapter of `model` (a built model, a hub id or a folder), chosen by its class.

    Other keyword arguments go to the adapter (`torch_dtype`, `padding_side`, `describe`, ...).
    """
    if isinstance(model, PreTrainedModel):
        family = family_of(type(model).__name__)
    else:
        family = family_of(_architecture(model, local_files_only, revision))
    return family(
        model,
        capture=capture,
        processor=processor,
        local_files_only=local_files_only,
        revision=revision,
        **kwargs,
    )


__all__ = ["FAMILIES", "adapter_for", "family_of"]
