"""Build registered components from config sections, turning constructor mistakes into ConfigErrors."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Sequence
from typing import Any

from mmengine.registry import Registry
from omegaconf import DictConfig, OmegaConf

from flmm.errors import ConfigError


def keyword_names(component: Any) -> tuple[list[str], bool]:
    """The keyword arguments `component` takes (its own and, through `*args, **kwargs`, its bases'), and
    whether it takes any keyword at all."""
    names: list[str] = []
    classes = component.__mro__ if inspect.isclass(component) else (component,)
    for cls in classes:
        function = cls.__init__ if inspect.isclass(cls) else cls
        if function is object.__init__:
            continue
        parameters = inspect.signature(function).parameters.values()
        names += [
            p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return list(dict.fromkeys(names)), False
    return list(dict.fromkeys(names)), True


def check_keys(section: str, name: str, keys: Iterable[str], allowed: Sequence[str]) -> None:
    """ConfigError naming the first of `keys` not in `allowed`, with the closest allowed name."""
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" Did you mean '{section}.{close[0]}'?" if close else ""
            raise ConfigError(
                f"{section}: {name} has no argument '{key}'.{hint} It accepts: {', '.join(allowed)}"
            )


def resolve_component(
    registry: Registry, section: str, cfg: DictConfig | dict, provided: Iterable[str] = ()
) -> tuple[Any, dict[str, Any]]:
    """The registered component of `cfg` (`{type: Name, **kwargs}`) and its keyword arguments, checked
    against its signature without building it; `provided` names arguments the builder adds.

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
    given = sorted(set(kwargs) & set(provided))
    if given:
        raise ConfigError(f"{section}.{given[0]}: set by flmm from the LMM; remove it from the config")
    allowed, accepts_any = keyword_names(component)
    if not accepts_any:
        check_keys(section, type_name, [*kwargs, *provided], allowed)
    try:
        inspect.signature(component).bind(**kwargs, **dict.fromkeys(provided))
    except TypeError as exc:
        raise ConfigError(f"{section}: {type_name}: {exc}") from None
    return component, kwargs


def build_component(registry: Registry, section: str, cfg: DictConfig | dict, **extra: Any) -> Any:
    """Build `cfg` (`{type: Name, **kwargs}`) from `registry`, adding `extra` keyword arguments (errors as
    in `resolve_component`)."""
    component, kwargs = resolve_component(registry, section, cfg, provided=extra)
    return component(**kwargs, **extra)
