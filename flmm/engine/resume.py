"""What a resumed run may change: a resume continues the stored run, so its config must be the stored one.

A checkpoint holds the resolved config it was trained with. `--resume` compares it with the config of the
new launch and refuses any difference in what shapes the result (the schedule, the data, the model, the
devices: a different world size reshuffles the epoch), listing each, unless the launch allows it
(`--allow-config-change`). Keys that only say where things are or how the run reports itself may differ:
a moved dataset or output folder, more data workers, another progress cadence. The LMM's weights are
checked by fingerprint (`flmm.engine.module.check_same_weights`), so a moved LMM folder is fine and a
changed one is not.
"""

from __future__ import annotations

from typing import Any

from flmm.errors import ConfigError

# Where things are and how the run reports itself; a resume may change these freely.
FREE_KEYS = (
    "output_dir",
    "data.root",
    "data.num_workers",
    "data.timeout_s",
    "model.lmm.model",
    "model.lmm.local_files_only",
    "model.refiner.checkpoint",
    "train.progress_bar",
    "train.progress_every_n_steps",
    "train.log_every_n_steps",
    "train.overlay_samples",
)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a.b": value}` of a nested dict; a list is one value."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _free(key: str) -> bool:
    return any(key == free or key.startswith(free + ".") for free in FREE_KEYS)


def config_changes(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: stored -> current` for every key outside FREE_KEYS whose value differs (or exists in one)."""
    old, new = flatten(stored), flatten(current)
    missing = object()
    return [
        f"{key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}"
        for key in sorted(set(old) | set(new))
        if not _free(key) and old.get(key, missing) != new.get(key, missing)
    ]


def check_resume_config(stored: dict[str, Any], current: dict[str, Any], allow_changes: bool) -> list[str]:
    """The config changes of a resume; ConfigError listing them unless `allow_changes`."""
    changes = config_changes(stored, current)
    if changes and not allow_changes:
        raise ConfigError(
            "--resume: this config differs from the checkpoint's in:\n  "
            + "\n  ".join(changes)
            + "\nA resume continues the stored run; resume with the same config, or pass "
            "--allow-config-change to continue with the new values (README: 'Resuming')."
        )
    return changes
