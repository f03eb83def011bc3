"""Files that ship with flmm (its configs and the embedded default's toy models), found from any folder.

In a source checkout, and in an editable install of one, they are the checkout's `configs/` and
`toy_models/`; a built wheel carries the same folders inside the package (`flmm/configs/`,
`flmm/toy_models/`; pyproject.toml's package-dir). A config names a shipped file as
`${shipped:toy_models/tiny_llava}`, so it means the same files whatever the working directory, while its
outputs (`output_dir`, a generated `data.root`) stay relative to where the user runs it.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from flmm.errors import ConfigError

PACKAGE = Path(__file__).resolve().parent
SHIPPED_FOLDERS = ("configs", "toy_models")


def shipped_root() -> Path:
    """The folder holding `configs/` and `toy_models/`: the package itself when installed as a wheel, else
    the source checkout above it."""
    return PACKAGE if (PACKAGE / "configs").is_dir() else PACKAGE.parent


def shipped_path(relative: str) -> Path:
    """`relative` (e.g. `toy_models/tiny_llava`) inside the shipped folders; ConfigError for another path."""
    parts = Path(relative).parts
    if Path(relative).is_absolute() or not parts or parts[0] not in SHIPPED_FOLDERS or ".." in parts:
        raise ConfigError(
            f"${{shipped:{relative}}}: expected a path inside one of flmm's shipped folders "
            f"({', '.join(SHIPPED_FOLDERS)}), e.g. ${{shipped:toy_models/tiny_llava}}"
        )
    return shipped_root() / relative


def find_config(path: str | Path) -> Path:
    """The config file `path` names: the path itself when it exists, else a shipped config of that name
    (`configs/flmm_toy.yaml`, `flmm_toy.yaml` or `flmm_toy`), so the tools run their configs from any folder.
    A path found nowhere is returned as given, for the loader to report."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    if len(path.parts) > 1 and path.parts[-2] != "configs":
        return path
    candidate = shipped_root() / "configs" / name
    return candidate if candidate.is_file() else path


def shipped_configs() -> list[str]:
    """Names of the configs that ship with flmm (`flmm_toy.yaml`, ...)."""
    return sorted(p.name for p in (shipped_root() / "configs").glob("*.yaml"))


def _resolve_shipped(relative: str) -> str:
    return str(shipped_path(relative))


OmegaConf.register_resolver("shipped", _resolve_shipped, replace=True)
