"""Build registered components from config sections, turning constructor mistakes into ConfigErrors."""

from __future__ import annotations

import inspect
from typing import Any

from mmengine.registry import Registry
from omegaconf import DictConfig, OmegaConf

from flmm.errors import ConfigError


def build_component(registry: Registry, section: str, cfg: DictConfig | dict, **extra: Any) -> Any:
    """Build `cfg` (`{type: Name, **kwargs}`) from `registry`, adding `extra` keyword arguments.

    `section` (e.g. "model.lmm") names the config key in errors: an unknown type lists the registered
    ones, an unknown or missing keyword names the key and what the component accepts.
    """
    kwargs = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    type_name = kwargs.pop("type", None)
    if type_name is None:
        raise ConfigError(f"{section}: missing 'type' (one of {sorted(registry.module_dict)})")
    component = registry.get(type_name)
    if component is None:
        raise ConfigError(
            f"{section}.type: unknown '{type_name}'; registered: {sorted(registry.module_dict)}"
        )
    kwargs.update(extra)
    signature = inspect.signature(component)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    allowed = [name for name in signature.parameters if name != "self"]
    unknown = [key for key in kwargs if key not in allowed]
    if unknown and not accepts_any:
        raise ConfigError(f"{section}: {type_name} has no argument {unknown}; it accepts {allowed}")
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{section}: {type_name}: {exc}") from None
    return component(**kwargs)
