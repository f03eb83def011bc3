"""flmm: pixel-level grounding for frozen large multimodal models (F-LMM style).

The library is split by idea: `flmm.data` reads datasets and knows nothing of models, `flmm.lmm` wraps
frozen LMMs behind one adapter interface, `flmm.models` holds the trainable mask head and SAM refiner,
`flmm.engine` trains and evaluates them with Lightning. Entry points live in `tools/`.
"""

__version__ = "0.1.0"
