"""Build registered components from config sections, turning constructor mistakes into ConfigErrors."""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import types
import typing
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
    check_types(section, component, kwargs)
    return component, kwargs


# Annotations `check_types` understands; any other (a tensor, a callable, a union of those) is left to the
# component itself (its constructor's errors become ConfigErrors in `build_component`).
_SIMPLE = {int: "an int", float: "a number", bool: "true or false", str: "a string"}


def _matches(value: Any, kind: Any) -> bool | None:
    """Whether `value` fits the annotation `kind` (None: an annotation not checked here)."""
    if kind is Any:
        return None
    if kind is type(None):
        return value is None
    if kind in _SIMPLE:
        if kind is bool:
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False
        return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        results = [_matches(value, arg) for arg in args]
        return None if None in results and not any(results) else any(bool(r) for r in results)
    sequence = origin in (list, collections.abc.Sequence) and len(args) == 1
    if sequence or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0]
        results = [_matches(v, item) for v in value]
        return None if None in results else all(results)
    return None


def _kind_text(kind: Any) -> str:
    if kind in _SIMPLE:
        return _SIMPLE[kind]
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _kind_text(a) for a in args)
    if args:
        return f"a list of {_kind_text(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return str(kind)


def check_types(section: str, component: Any, kwargs: dict[str, Any]) -> None:
    """ConfigError naming `section.key` for a keyword whose value does not fit the component's annotation
    (`model.mask_head.size=abc` where `size: int`), checked at load time for the plain annotations (int,
    float, bool, str, a sequence of them, optional ones); the others are left to the constructor."""
    function = component.__init__ if inspect.isclass(component) else component
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # an annotation that does not evaluate here: nothing to check against
        return
    for key, value in kwargs.items():
        kind = hints.get(key)
        if kind is not None and _matches(value, kind) is False:
            raise ConfigError(f"{section}.{key}: expected {_kind_text(kind)}, got {value!r}")


def build_component(registry: Registry, section: str, cfg: DictConfig | dict, **extra: Any) -> Any:
    """Build `cfg` (`{type: Name, **kwargs}`) from `registry`, adding `extra` keyword arguments (errors as
    in `resolve_component`)."""
    component, kwargs = resolve_component(registry, section, cfg, provided=extra)
    try:
        return component(**kwargs, **extra)
    except (TypeError, ValueError) as exc:
        # A value the constructor refuses (`size=abc`, `channels=[a,b]`, `threshold=2`): the config's fault.
        # Only this call is wrapped, so an error elsewhere still shows its traceback.
        name = getattr(component, "__name__", str(component))
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"{section}: {name} refused its arguments ({type(exc).__name__}: {message})"
        ) from exc
