"""Configs: OmegaConf YAML validated against a typed schema, with `key=value` overrides.

The schema is a tree of dataclasses, so an unknown key or a value of the wrong type is caught when the
config is loaded — with one message naming the file, the key and what was expected — not deep inside a
run. Component sections (`type: ...` plus keyword arguments) are built by the mmengine registries.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flmm.config_values import check_values
from flmm.errors import ConfigError
from flmm.shipped import find_config, shipped_configs


@dataclass
class DataConfig:
    """Where the datasets live and how samples are made; read by training, evaluation and browsing."""

    root: str = "data/synthetic"
    train_splits: list[str] = field(default_factory=lambda: ["refcoco:train"])
    val_splits: list[str] = field(default_factory=lambda: ["refcoco:val"])
    # Empty: every RES split and PNG val found under `root`.
    test_splits: list[str] = field(default_factory=list)
    protocol: str = "all-sentences"
    batch_size: int = 2
    num_workers: int = 2
    # Seconds a data worker may take for one batch before the run fails (a hung filesystem); with workers.
    timeout_s: float = 600.0
    max_skip_fraction: float = 0.01
    seed: int = 0
    # Configs whose data is generated here give the keyword arguments of
    # `flmm.data.synthetic.SyntheticConfig` (seed, n_res_images, n_png_images, size, ...); null for real data.
    synthetic: dict[str, Any] | None = None


@dataclass
class ModelConfig:
    """Components, each `{type: RegisteredName, ...kwargs}` built by the mmengine registries.

    The mask head's input channels and the refiner's hidden size / layer count come from the LMM adapter;
    a config need not (and should not) repeat them.
    """

    # Defaults are minimal on purpose: a component dict from YAML is merged key by key into its default,
    # so a default key the YAML does not mention would silently survive a change of `type`.
    # `{model: hub id or folder, capture: hooked, ...}`; `type` is optional (default: the family of the
    # checkpoint's model class, `flmm.lmm.adapter_for`).
    lmm: dict[str, Any] = field(default_factory=dict)
    mask_head: dict[str, Any] = field(default_factory=lambda: {"type": "UNetMaskHead"})
    # null: predict from the coarse masks alone.
    refiner: dict[str, Any] | None = None
    # `{type: KeywordSelector, ...}`: a keyword scorer on the text tokens trained with the head; null: none.
    selector: dict[str, Any] | None = None


@dataclass
class TrainConfig:
    """Optimisation and the Lightning Trainer's switches (DESIGN.md §1.9)."""

    epochs: int = 8
    max_steps: int = -1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.03
    grad_clip: float = 1.0
    # Steps with non-finite gradients are skipped; this many in a row stop the run.
    max_nonfinite_in_a_row: int = 5
    precision: str = "bf16-mixed"
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    val_every_n_epochs: int = 1
    # Checkpoints: every N optimizer steps (0: none between epoch ends) and at every epoch end; last.ckpt is
    # always the newest. The best by `monitor` (max; null: the first val split's refined cIoU, AR for
    # PNG) is kept too.
    checkpoint_every_n_steps: int = 500
    monitor: str | None = None
    log_every_n_steps: int = 10
    overlay_samples: int = 4
    # Progress bars when stdout is a terminal; otherwise (nohup, SLURM) a plain line every N steps (0: none).
    progress_bar: bool = True
    progress_every_n_steps: int = 50


@dataclass
class AttendConfig:
    """Training-free attend-and-segment (`flmm.engine.attend`): `variant` flmm (the paper's wording, as
    before) or authors (the authors' released code); `heads` all or authors (head H-2 of every layer; the
    authors variant only). tools/test.py's and tools/demo.py's --variant / --heads override them."""

    variant: str = "flmm"
    heads: str = "all"


@dataclass
class FlmmConfig:
    """The whole config of a run."""

    output_dir: str = "runs/flmm"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    attend: AttendConfig = field(default_factory=AttendConfig)


def _schema_keys(section: str) -> list[str]:
    """The keys the schema allows in `section` ("" for the top level, "data", ...), found through the
    dataclasses' types, so that a section whose default is null is known too."""
    cls: Any = FlmmConfig
    for name in [part for part in section.split(".") if part]:
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        kind = hints.get(name)
        cls = next((a for a in (kind, *typing.get_args(kind)) if dataclasses.is_dataclass(a)), None)
    return [f.name for f in dataclasses.fields(cls)] if cls is not None else []


def _explain(exc: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or ""
    message = (getattr(exc, "msg", None) or str(exc)).splitlines()[0]
    parent_key, _, leaf = key.rpartition(".")
    hint = ""
    if "not in" in message or "Key '" in message:
        close = difflib.get_close_matches(leaf, _schema_keys(parent_key), n=1)
        hint = f" Did you mean '{parent_key + '.' if parent_key else ''}{close[0]}'?" if close else ""
        allowed = ", ".join(_schema_keys(parent_key))
        return ConfigError(f"{source}: unknown key '{key}'.{hint} Allowed here: {allowed}")
    return ConfigError(f"{source}: bad value for '{key}': {message}")


def _read_yaml(path: Path, referrer: Path | None = None) -> DictConfig:
    if not path.is_file():
        if referrer is not None:
            raise ConfigError(f"{referrer}: _base_ names {path}, which is not a file")
        shipped = ", ".join(shipped_configs())
        raise ConfigError(f"config file not found: {path} (the configs that ship with flmm: {shipped})")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    sections = ", ".join(_schema_keys(""))
    if not isinstance(loaded, DictConfig):
        raise ConfigError(
            f"{path}: expected a mapping of config sections at the top level ({sections}), "
            f"got a {type(loaded).__name__.replace('Config', '').lower()}"
        )
    if not loaded:
        raise ConfigError(f"{path}: the file is empty (expected a mapping of config sections: {sections})")
    return loaded


def _check_sections(loaded: DictConfig, source: str, section: str = "") -> None:
    """ConfigError for a schema section (`data`, `model`, ...) given a plain value instead of a mapping."""
    for key in loaded:
        name = f"{section}.{key}" if section else str(key)
        if (
            not _schema_keys(name)
            or OmegaConf.is_missing(loaded, key)
            or OmegaConf.is_interpolation(loaded, key)
        ):
            continue
        node = loaded._get_node(key)
        if isinstance(node, DictConfig):
            _check_sections(node, source, name)
            continue
        value = node._value()
        if value is None:
            continue
        raise ConfigError(
            f"{source}: '{name}' must be a section (a mapping with keys {', '.join(_schema_keys(name))}), "
            f"got {value!r}"
        )


def _with_bases(
    path: Path, seen: tuple[Path, ...] = (), seen_from: Path | None = None
) -> list[tuple[Path, DictConfig]]:
    """`path` and the files its `_base_` names (a path or a list, relative to it; mmengine's convention),
    bases first, each without its `_base_` key: the order to merge them in. `seen_from`: the file whose
    `_base_` names `path`, for the message when it is missing."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: _base_ includes itself ({' -> '.join(map(str, seen))})")
    loaded = _read_yaml(path, seen_from)
    bases = loaded.pop("_base_", None)
    chain: list[tuple[Path, DictConfig]] = []
    for base in [bases] if isinstance(bases, str) else list(bases or []):
        chain += _with_bases(path.parent / str(base), (*seen, path.resolve()), path)
    return [*chain, (path, loaded)]


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), components: bool = True
) -> DictConfig:
    """Load `path` (YAML) over the schema's defaults and apply `key=value` overrides.

    `path` may also name a config that ships with flmm, from any folder (`configs/flmm_toy.yaml`,
    `flmm_toy`; `flmm.shipped.find_config`). A file may start from others (`_base_: other.yaml` or a list,
    relative to it), merged first. Raises ConfigError for a missing file, invalid YAML, an unknown key
    (component sections included: each is checked against what its component accepts, unless `components`
    is False: overrides meant for another config, e.g. a checkpoint's) or a value of the wrong type.
    """
    schema = OmegaConf.structured(FlmmConfig)
    cfg = schema
    if path is not None:
        for source, loaded in _with_bases(find_config(path)):
            _check_sections(loaded, str(source))
            try:
                cfg = OmegaConf.merge(cfg, loaded)
            except OmegaConfBaseException as exc:
                raise _explain(exc, str(source)) from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. data.root=/datasets")
    try:
        dotlist = OmegaConf.from_dotlist(list(overrides))
        _check_sections(dotlist, "command-line override")
        cfg = OmegaConf.merge(cfg, dotlist)
    except OmegaConfBaseException as exc:
        raise _explain(exc, "command-line override") from None
    source = "config" if path is None else str(path)
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        # An interpolation (`${seed}`, `${shipped:...}`) that does not resolve: its message is the first line.
        raise _explain(exc, source + (" with its overrides" if overrides else "")) from None
    check_values(cfg, source + (" with its overrides" if overrides else ""))
    # Component sections are free dicts in the schema; their keys are checked against the components
    # (imported here, not at module level: the schema itself needs no model code).
    if components:
        from flmm.engine.build import check_components

        check_components(cfg, source + (" with its overrides" if overrides else ""))
    return cfg
