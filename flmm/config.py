"""Configs: OmegaConf YAML validated against a typed schema, with `key=value` overrides.

The schema is a tree of dataclasses, so an unknown key or a value of the wrong type is caught when the
config is loaded — with one message naming the file, the key and what was expected — not deep inside a
run. Component sections (`type: ...` plus keyword arguments) are built by the mmengine registries.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flmm.data.transforms import CLIP_MEAN, CLIP_STD
from flmm.errors import ConfigError


@dataclass
class SyntheticWorldConfig:
    """How to generate the synthetic world when `data.root` holds none yet (see tools/make_synthetic.py)."""

    seed: int = 0
    images: int = 300
    png_images: int = 100
    size: int = 128
    max_objects: int = 5


@dataclass
class DataConfig:
    """Where the datasets live and how samples are made; read by training, evaluation and browsing."""

    root: str = "data/synthetic"
    train_splits: list[str] = field(default_factory=lambda: ["refcoco:train"])
    val_splits: list[str] = field(default_factory=lambda: ["refcoco:val"])
    # Empty: every RES split and PNG val found under `root`.
    test_splits: list[str] = field(default_factory=list)
    protocol: str = "all-sentences"
    image_size: int = 336
    image_mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(CLIP_STD))
    batch_size: int = 2
    num_workers: int = 2
    max_skip_fraction: float = 0.01
    seed: int = 0
    # Set in configs whose data is generated here; null for real datasets.
    synthetic: SyntheticWorldConfig | None = None


@dataclass
class FlmmConfig:
    """The whole config of a run."""

    output_dir: str = "runs/flmm"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)


def _schema_keys(node) -> list[str]:
    return list(node.keys()) if isinstance(node, DictConfig) else []


def _explain(exc: OmegaConfBaseException, source: str, schema: DictConfig) -> ConfigError:
    key = getattr(exc, "full_key", None) or ""
    message = (getattr(exc, "msg", None) or str(exc)).splitlines()[0]
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(schema, parent_key) if parent_key else schema
    hint = ""
    if "not in" in message or "Key '" in message:
        close = difflib.get_close_matches(leaf, _schema_keys(parent), n=1)
        hint = f" Did you mean '{parent_key + '.' if parent_key else ''}{close[0]}'?" if close else ""
        allowed = ", ".join(_schema_keys(parent))
        return ConfigError(f"{source}: unknown key '{key}'.{hint} Allowed here: {allowed}")
    return ConfigError(f"{source}: bad value for '{key}': {message}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Load `path` (YAML) over the schema's defaults and apply `key=value` overrides.

    Raises ConfigError for a missing file, invalid YAML, an unknown key or a value of the wrong type.
    """
    schema = OmegaConf.structured(FlmmConfig)
    cfg = schema
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        try:
            cfg = OmegaConf.merge(schema, loaded)
        except OmegaConfBaseException as exc:
            raise _explain(exc, str(path), schema) from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. data.root=/datasets")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        raise _explain(exc, "command-line override", schema) from None
    return cfg
