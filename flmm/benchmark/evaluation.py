"""The `eval` suite: queries/s of an evaluation (the code path of tools/test.py, `flmm.engine.evaluate`).

Runs the embedded default's config (its shipped tiny LLaVA and SAM, the head at its initial weights: speed
does not depend on what the head learnt) over a freshly generated synthetic world's refcoco:val, under
both RES protocols, with and without the SAM embedding cache (a query's image is shared by the other
queries of its object, and `first-sentence-concat` sees every image again).
"""

from __future__ import annotations

import time
from pathlib import Path

from flmm.config import load_config
from flmm.data.synthetic import SyntheticConfig, generate_world
from flmm.engine.build import config_to_dict
from flmm.engine.evaluate import RES_EVAL_PROTOCOLS, evaluate
from flmm.engine.module import GroundingModule


def eval_rows(config: Path, workdir: Path, n_images: int = 40) -> list[dict]:
    """One row per cache setting: {"config", "queries", "seconds", "queries_per_s"}."""
    root = workdir / "data"
    if not root.is_dir():
        generate_world(root, SyntheticConfig(seed=0, n_res_images=n_images, n_png_images=0, size=128))
    rows = []
    for name, cache in (("flmm", "null"), ("flmm+cache", "memory")):
        overrides = [
            f"data.root={root}",
            "data.synthetic=null",
            "data.num_workers=0",
            "train.progress_bar=false",
            "train.progress_every_n_steps=0",
            f"model.refiner.embedding_cache={cache}",
        ]
        cfg = load_config(config, overrides)
        module = GroundingModule(config_to_dict(cfg)).eval()
        start = time.perf_counter()
        results = evaluate(module, cfg, ["refcoco:val"], RES_EVAL_PROTOCOLS, workdir / f"eval_{name}")
        seconds = time.perf_counter() - start
        queries = sum(int(m["n_queries"]) for m in results["splits"]["refcoco:val"].values())
        rows.append(
            {"config": name, "queries": queries, "seconds": seconds, "queries_per_s": queries / seconds}
        )
    return rows
