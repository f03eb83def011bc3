"""flmm: pixel-level grounding for frozen large multimodal models (F-LMM style).

The library is split by idea: `flmm.data` reads datasets and knows nothing of models, `flmm.lmm` wraps
frozen LMMs behind one adapter interface, `flmm.models` holds the trainable mask head and SAM refiner,
`flmm.engine` trains and evaluates them with Lightning. Entry points live in `tools/`; in Python,
`flmm.Grounder.from_pretrained(HEAD_FOLDER)` (`flmm.grounder`, the head folders of `flmm.hub`).
"""

import os

# albumentations asks PyPI for a newer release when it is imported, and runs must not touch the network.
# Every import of it goes through this package (`flmm.data.transforms`), so setting it here comes first.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
__all__ = ["Grounder", "__version__"]


def __getattr__(name: str):
    # `Grounder` needs torch, transformers and Lightning: imported on first use, so `import flmm` stays light.
    if name == "Grounder":
        from flmm.grounder import Grounder

        return Grounder
    raise AttributeError(f"module 'flmm' has no attribute {name!r}")
