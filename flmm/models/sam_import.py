"""Import segment_anything's model code without requiring torchvision.

`segment_anything/__init__.py` imports `SamPredictor` and `SamAutomaticMaskGenerator`, whose modules import
torchvision at the top. flmm only needs `segment_anything.modeling` (Sam, ImageEncoderViT, PromptEncoder,
MaskDecoder, TwoWayTransformer) and the builders in `segment_anything.build_sam`, which need torch alone.
When the normal import fails because of torchvision, the package is registered in `sys.modules` as a bare
module created from its import spec (with the right `__path__`) but never executed, so the two submodules
can be imported from it. When torchvision is present and works, the normal import is used unchanged.

Import the names from here: `from flmm.models.sam_import import Sam, MaskDecoder, sam_model_registry`.
"""

import importlib
import importlib.util
import sys
import traceback
from types import ModuleType

_PACKAGE = "segment_anything"


def _caused_by_torchvision(err: BaseException) -> bool:
    """True when `err` comes from torchvision being absent or failing to import (e.g. a CUDA build
    installed next to CPU torch), rather than from segment_anything itself."""
    if isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] == "torchvision":
        return True
    return any("torchvision" in frame.filename for frame in traceback.extract_tb(err.__traceback__))


def _register_unexecuted_package() -> ModuleType:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(
            "segment_anything is not installed; install it with `pip install segment-anything==1.0`"
        )
    # module_from_spec sets __path__/__spec__ from the spec; not calling spec.loader.exec_module is the
    # point: the package __init__ (and with it torchvision) never runs.
    package = importlib.util.module_from_spec(spec)
    sys.modules[_PACKAGE] = package
    return package


def import_segment_anything() -> tuple[ModuleType, ModuleType]:
    """Return the modules `(segment_anything.modeling, segment_anything.build_sam)`."""
    try:
        importlib.import_module(_PACKAGE)
    except Exception as err:
        if not _caused_by_torchvision(err):
            raise
        package = _register_unexecuted_package()
        build_sam = importlib.import_module(f"{_PACKAGE}.build_sam")
        # Re-export what the real __init__ does, minus the torchvision-bound predictor and mask generator,
        # so later `from segment_anything import sam_model_registry` elsewhere keeps working.
        for name in (
            "build_sam",
            "build_sam_vit_h",
            "build_sam_vit_l",
            "build_sam_vit_b",
            "sam_model_registry",
        ):
            setattr(package, name, getattr(build_sam, name))
    return importlib.import_module(f"{_PACKAGE}.modeling"), sys.modules[f"{_PACKAGE}.build_sam"]


_modeling, _build_sam = import_segment_anything()

Sam = _modeling.Sam
ImageEncoderViT = _modeling.ImageEncoderViT
PromptEncoder = _modeling.PromptEncoder
MaskDecoder = _modeling.MaskDecoder
TwoWayTransformer = _modeling.TwoWayTransformer
build_sam_vit_b = _build_sam.build_sam_vit_b
build_sam_vit_l = _build_sam.build_sam_vit_l
build_sam_vit_h = _build_sam.build_sam_vit_h
sam_model_registry = _build_sam.sam_model_registry

__all__ = [
    "ImageEncoderViT",
    "MaskDecoder",
    "PromptEncoder",
    "Sam",
    "TwoWayTransformer",
    "build_sam_vit_b",
    "build_sam_vit_h",
    "build_sam_vit_l",
    "import_segment_anything",
    "sam_model_registry",
]
