"""Generate the synthetic world on first use, for configs whose `data.synthetic` section is set."""

from __future__ import annotations

import logging
from pathlib import Path

from flmm.data.refcoco import refer_paths

log = logging.getLogger("flmm.data")


def ensure_synthetic_world(data_cfg) -> bool:
    """Generate the synthetic world under `data_cfg.root` when the config asks for one and none is there.

    Returns True when it generated the world. Real-data configs (`data.synthetic: null`) are untouched.
    """
    if data_cfg.synthetic is None:
        return False
    root = Path(str(data_cfg.root))
    if all(p.is_file() for p in refer_paths(root, "refcoco")):
        return False
    from flmm.data.synthetic import SyntheticConfig, generate_world

    s = data_cfg.synthetic
    log.warning("generating the synthetic world under %s (first use)", root)
    generate_world(
        root,
        SyntheticConfig(
            seed=int(s.seed),
            n_res_images=int(s.images),
            n_png_images=int(s.png_images),
            size=int(s.size),
            max_objects=int(s.max_objects),
        ),
    )
    return True
