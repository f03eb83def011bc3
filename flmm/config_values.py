"""Range and choice checks of the config schema's fields (`flmm.config`): what the data loader, the
optimiser and the Lightning Trainer would reject later, as one ConfigError naming the key at load time.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from flmm.errors import ConfigError

# What the Lightning Trainer accepts (pytorch_lightning 2.x: lightning_fabric's _PRECISION_INPUT,
# AcceleratorRegistry, StrategyRegistry), so that a typo is a ConfigError at load time, not a Lightning
# traceback after the model has loaded. transformer-engine precision needs a package flmm does not install.
PRECISIONS = (
    "32",
    "32-true",
    "16",
    "16-mixed",
    "16-true",
    "bf16",
    "bf16-mixed",
    "bf16-true",
    "64",
    "64-true",
)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
STRATEGIES = (
    "auto",
    "ddp",
    "ddp_find_unused_parameters_true",
    "ddp_find_unused_parameters_false",
    "ddp_fork",
    "ddp_fork_find_unused_parameters_true",
    "ddp_fork_find_unused_parameters_false",
    "ddp_notebook",
    "ddp_spawn",
    "ddp_spawn_find_unused_parameters_true",
    "ddp_spawn_find_unused_parameters_false",
    "deepspeed",
    "fsdp",
    "single_device",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _devices_ok(value: Any) -> bool:
    """Lightning's `devices`: an int (> 0, or -1 for all), "auto", a list of device indices, or a string of
    them ("0,1", "-1")."""
    if _is_int(value):
        return value > 0 or value == -1
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",") if part.strip()]
        return value == "auto" or value.strip() == "-1" or (bool(parts) and all(p.isdigit() for p in parts))
    if OmegaConf.is_list(value) or isinstance(value, (list, tuple)):
        return len(value) > 0 and all(_is_int(v) and v >= 0 for v in value)
    return False


def _batch_limit_ok(value: Any, zero: bool) -> bool:
    """Lightning's `limit_*_batches`: a fraction in [0, 1] or a whole number of batches (0 only if `zero`)."""
    if not _is_number(value) or value < 0 or (value == 0 and not zero):
        return False
    return value <= 1 or float(value).is_integer()


def check_values(cfg: DictConfig, source: str = "config") -> None:
    """ConfigError naming the first key whose value has the right type but is out of range or not one of
    the choices (what the data loader, the optimiser and the Lightning Trainer would reject later)."""
    data, train = cfg.data, cfg.train
    checks: list[tuple[str, Any, bool, str]] = [
        ("data.batch_size", data.batch_size, data.batch_size >= 1, "a positive int"),
        ("data.num_workers", data.num_workers, data.num_workers >= 0, "a non-negative int (0: no workers)"),
        ("data.timeout_s", data.timeout_s, data.timeout_s >= 0, "a non-negative number of seconds"),
        (
            "data.max_skip_fraction",
            data.max_skip_fraction,
            0 <= data.max_skip_fraction <= 1,
            "a fraction in [0, 1]",
        ),
        (
            "train.epochs",
            train.epochs,
            train.epochs >= 1 or (train.epochs == -1 and train.max_steps >= 1),
            "a positive int (-1: no limit, only with a positive train.max_steps)",
        ),
        ("train.max_steps", train.max_steps, train.max_steps >= 1 or train.max_steps == -1, "-1 or > 0"),
        ("train.lr", train.lr, train.lr > 0, "a positive number"),
        ("train.weight_decay", train.weight_decay, train.weight_decay >= 0, "a non-negative number"),
        ("train.warmup_ratio", train.warmup_ratio, 0 <= train.warmup_ratio <= 1, "a fraction in [0, 1]"),
        ("train.grad_clip", train.grad_clip, train.grad_clip >= 0, "a non-negative number (0: none)"),
        (
            "train.max_nonfinite_in_a_row",
            train.max_nonfinite_in_a_row,
            train.max_nonfinite_in_a_row >= 1,
            "a positive int",
        ),
        (
            "train.precision",
            train.precision,
            train.precision in PRECISIONS,
            f"one of {', '.join(PRECISIONS)}",
        ),
        (
            "train.accelerator",
            train.accelerator,
            train.accelerator in ACCELERATORS,
            f"one of {', '.join(ACCELERATORS)}",
        ),
        (
            "train.devices",
            train.devices,
            _devices_ok(train.devices),
            'an int > 0, -1 (all), "auto", or a list of device indices such as [0,1]',
        ),
        ("train.num_nodes", train.num_nodes, train.num_nodes >= 1, "a positive int"),
        ("train.strategy", train.strategy, train.strategy in STRATEGIES, f"one of {', '.join(STRATEGIES)}"),
        (
            "train.limit_train_batches",
            train.limit_train_batches,
            _batch_limit_ok(train.limit_train_batches, zero=False),
            "a fraction in (0, 1] or a whole number of batches >= 1",
        ),
        (
            "train.limit_val_batches",
            train.limit_val_batches,
            _batch_limit_ok(train.limit_val_batches, zero=True),
            "a fraction in [0, 1] or a whole number of batches (0: no validation)",
        ),
        (
            "train.val_every_n_epochs",
            train.val_every_n_epochs,
            train.val_every_n_epochs >= 1,
            "a positive int",
        ),
        (
            "train.checkpoint_every_n_steps",
            train.checkpoint_every_n_steps,
            train.checkpoint_every_n_steps >= 0,
            "a non-negative int (0: only at epoch ends)",
        ),
        ("train.log_every_n_steps", train.log_every_n_steps, train.log_every_n_steps >= 1, "a positive int"),
        ("train.overlay_samples", train.overlay_samples, train.overlay_samples >= 0, "a non-negative int"),
        (
            "train.progress_every_n_steps",
            train.progress_every_n_steps,
            train.progress_every_n_steps >= 0,
            "a non-negative int (0: none)",
        ),
    ]
    for key, value, ok, expected in checks:
        if not ok:
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            raise ConfigError(f"{source}: bad value for '{key}': expected {expected}, got {shown!r}")
