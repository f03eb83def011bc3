"""Generate the synthetic world on first use, for configs whose `data.synthetic` section is set."""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path

from omegaconf import OmegaConf

from flmm.builder import check_keys
from flmm.data.refcoco import refer_paths
from flmm.data.splits import split_exists

log = logging.getLogger("flmm.data")


def ensure_synthetic_world(data_cfg) -> bool:
    """Generate the synthetic world under `data_cfg.root` when the config asks for one and none is there.

    Returns True when it generated the world. Real-data configs (`data.synthetic: null`) are untouched.
    """
    if data_cfg.synthetic is None:
        return False
    from flmm.data.synthetic import SyntheticConfig, generate_world, write_world_reasonseg

    settings = OmegaConf.to_container(data_cfg.synthetic, resolve=True)
    # The load-time check of the config, again for a data section built without `load_config`.
    check_keys("data.synthetic", "SyntheticConfig", settings, [f.name for f in fields(SyntheticConfig)])
    config = SyntheticConfig(**settings)
    root = Path(str(data_cfg.root))
    if not all(p.is_file() for p in refer_paths(root, "refcoco")):
        log.warning("generating the synthetic world under %s (first use)", root)
        generate_world(root, config)
        return True
    if config.n_reason_images and not split_exists(root, "reasonseg:val"):
        # A world generated before it had a ReasonSeg split: only that split is added.
        log.warning("generating the synthetic ReasonSeg split under %s (first use)", root)
        write_world_reasonseg(root, config)
        return True
    return False
