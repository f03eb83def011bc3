"""mmengine registries: configs name components by `type`, these build them (users register their own)."""

from mmengine.registry import Registry

MODELS = Registry("model")
LMM_ADAPTERS = Registry("lmm_adapter")
DATASETS = Registry("dataset")
